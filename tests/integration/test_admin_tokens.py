"""The admin role: only an admin lists users and issues or revokes API tokens; an issued token works at once,
is kept across a restart and on every replica of one database, and a revoked one stops (real services,
real uvicorn ports, httpx; SQLite and a real PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from cloud.config import CloudConfig
from cloud.service import CloudService
from tests.helpers.cloud import WAIT_S, make_config, running
from tests.helpers.postgres import PostgresServer
from tests.helpers.wait import wait_until

ROOT, OPERATOR, VIEWER = "root-" + "r" * 40, "op-" + "a" * 40, "view-" + "b" * 40


def with_admin(tmp_path: Path, clip: Path, **sections: Any) -> CloudConfig:
    folder = tmp_path / "admin"
    folder.mkdir(parents=True)
    users = []
    for name, role, token in (("root", "admin", ROOT), ("alice", "operator", OPERATOR), ("bob", "viewer", VIEWER)):
        (folder / name).write_text(token)
        users.append({"name": name, "role": role, "token_file": str(folder / name)})
    admin = {"enabled": True, "host": "127.0.0.1", "port": 0, "users": users}
    return make_config(tmp_path, clip, admin=admin, **sections)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def client(service: CloudService) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.admin_port}", timeout=WAIT_S)


def refusals(service: CloudService, reason: str) -> float:
    value = service.metrics.registry.get_sample_value("edgeglm_cloud_admin_refused_total", {"reason": reason})
    return 0.0 if value is None else value


async def test_only_an_admin_issues_tokens_which_work_at_once_until_revoked(tmp_path: Path, clip: Path) -> None:
    async with running(with_admin(tmp_path, clip)) as service, client(service) as http:
        lists = {
            who: (await http.get("/api/admin/users", headers=bearer(token) if token else {})).status_code
            for who, token in (("anonymous", ""), ("viewer", VIEWER), ("operator", OPERATOR))
        }
        operator_issues = await http.post("/api/admin/tokens", json={"name": "eve", "role": "admin"}, **_as(OPERATOR))
        issued = await http.post("/api/admin/tokens", json={"name": "carol", "role": "operator"}, **_as(ROOT))
        token = issued.json()["token"]
        carol_changes = await http.put(
            "/api/policies/fleet", content="uplink: {jpeg_quality: 61}", params={"reason": "test"}, **_as(token)
        )
        carol_lists = await http.get("/api/admin/users", **_as(token))
        history = (await http.get("/api/policies", **_as(VIEWER))).json()["history"]
        again = await http.post("/api/admin/tokens", json={"name": "carol", "role": "viewer"}, **_as(ROOT))
        configured = await http.post("/api/admin/tokens", json={"name": "alice", "role": "viewer"}, **_as(ROOT))
        bad_role = await http.post("/api/admin/tokens", json={"name": "dan", "role": "root"}, **_as(ROOT))
        bad_name = await http.post("/api/admin/tokens", json={"name": "<b>x</b>", "role": "viewer"}, **_as(ROOT))
        listed = (await http.get("/api/admin/users", **_as(ROOT))).json()["users"]
        signed_in = await http.post("/auth/login", data={"token": token})
        session = {"cookie": f"edgeglm_session={signed_in.cookies['edgeglm_session']}"}
        session_reads = (await http.get("/api/verdicts", headers=session)).status_code
        revoked = await http.delete("/api/admin/tokens/carol", **_as(ROOT))
        after = {
            "token": (await http.get("/api/verdicts", **_as(token))).status_code,
            "session": (await http.get("/api/verdicts", headers=session)).status_code,
        }
        revoked_again = await http.delete("/api/admin/tokens/carol", **_as(ROOT))
        revoke_configured = await http.delete("/api/admin/tokens/alice", **_as(ROOT))
        alice_still = (await http.get("/api/verdicts", **_as(OPERATOR))).status_code
    assert lists == {"anonymous": 401, "viewer": 403, "operator": 403}
    assert operator_issues.status_code == 403 and "needs an admin's token" in operator_issues.json()["detail"]
    assert refusals(service, "not_admin") == 4  # viewer, operator twice, carol
    assert issued.status_code == 201 and len(token) >= 40 and issued.json()["role"] == "operator"
    assert carol_changes.status_code == 200 and carol_lists.status_code == 403
    assert history[0]["reason"] == "PUT /api/policies/fleet: test (by carol)"
    assert (again.status_code, configured.status_code) == (409, 409)
    assert "issued already" in again.json()["detail"] and "configured user" in configured.json()["detail"]
    assert (bad_role.status_code, bad_name.status_code) == (422, 422)
    assert [(u["name"], u["role"], u["source"], u["created_by"]) for u in listed] == [
        ("root", "admin", "config", None),
        ("alice", "operator", "config", None),
        ("bob", "viewer", "config", None),
        ("carol", "operator", "issued", "root"),
    ]
    assert all(token not in str(u) for u in listed), "no token or digest is listed"
    assert session_reads == 200
    assert revoked.status_code == 204 and after == {"token": 401, "session": 401}
    assert (revoked_again.status_code, revoke_configured.status_code, alice_still) == (404, 409, 200)


def _as(token: str) -> dict[str, Any]:
    return {"headers": bearer(token)}


async def test_an_issued_token_outlives_a_restart(tmp_path: Path, clip: Path) -> None:
    config = with_admin(tmp_path, clip)
    async with running(config) as service, client(service) as http:
        token = (await http.post("/api/admin/tokens", json={"name": "dave", "role": "viewer"}, **_as(ROOT))).json()
    async with running(config) as service, client(service) as http:
        reads = await http.get("/api/verdicts", **_as(token["token"]))
        changes = await http.put("/api/policies/fleet", content="uplink: {jpeg_quality: 61}", **_as(token["token"]))
    assert reads.status_code == 200 and changes.status_code == 403


async def test_a_token_issued_on_one_replica_works_on_the_other_and_revoked_stops_there(
    postgres: PostgresServer, tmp_path: Path, clip: Path
) -> None:
    dsn_file = tmp_path / "pg-dsn"
    dsn_file.write_text(postgres.new_dsn())
    store = {"kind": "postgres", "dsn_file": str(dsn_file)}
    a_config = with_admin(tmp_path / "a", clip, store=store)
    b_config = with_admin(tmp_path / "b", clip, store=store)
    async with running(a_config) as a, running(b_config) as b, client(a) as on_a, client(b) as on_b:
        token = (await on_a.post("/api/admin/tokens", json={"name": "erin", "role": "viewer"}, **_as(ROOT))).json()
        erin = _as(token["token"])

        async def b_answers(status: int) -> bool:
            return (await on_b.get("/api/verdicts", **erin)).status_code == status

        await wait_until(lambda: b_answers(200), "erin's token accepted on replica B", WAIT_S)
        assert (await on_a.delete("/api/admin/tokens/erin", **_as(ROOT))).status_code == 204
        assert (await on_a.get("/api/verdicts", **erin)).status_code == 401, "at once where it was revoked"
        await wait_until(lambda: b_answers(401), "erin's token refused on replica B", WAIT_S)
