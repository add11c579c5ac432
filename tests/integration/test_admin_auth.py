"""The admin API asks who you are and which name you reached it by (real service, real uvicorn port, httpx).

An attacker on the network tries what the findings of issue 13 list: anonymous policy changes and
deletes, reading verdicts and thumbnails, a viewer's change, a page on another host name (DNS
rebinding). Probes and scrapes keep working without a token.
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cloud.api.auth import SESSION_S, AdminIdentity, session_user, session_value
from cloud.cli import app as cloud_app
from cloud.config import CloudConfig
from cloud.policy import PolicyEngine
from cloud.service import CloudService
from tests.helpers.cloud import WAIT_S, make_config, running

OPERATOR, VIEWER = "op-" + "a" * 40, "view-" + "b" * 40
BANDS_OFF = "mining: {uncertainty_band_enabled: false, watch_list_enabled: false, random_audit_enabled: false}"


def guarded(tmp_path: Path, clip: Path) -> CloudConfig:
    (tmp_path / "admin").mkdir()
    (tmp_path / "admin" / "alice").write_text(OPERATOR + "\n")
    (tmp_path / "admin" / "bob").write_text(VIEWER)
    users = [
        {"name": "alice", "role": "operator", "token_file": str(tmp_path / "admin" / "alice")},
        {"name": "bob", "role": "viewer", "token_file": str(tmp_path / "admin" / "bob")},
    ]
    admin = {"enabled": True, "host": "127.0.0.1", "port": 0, "users": users}
    return make_config(tmp_path, clip, admin=admin)


def engine(service: CloudService) -> PolicyEngine:
    assert service.policy is not None
    return service.policy


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_only_named_users_read_and_only_operators_change_and_the_history_says_who(
    tmp_path: Path, clip: Path
) -> None:
    async with running(guarded(tmp_path, clip)) as service:
        base = f"http://127.0.0.1:{service.admin_port}"
        async with httpx.AsyncClient(base_url=base, timeout=WAIT_S) as client:
            anonymous = {
                "put": await client.put("/api/policies/fleet", content=BANDS_OFF),
                "legacy put": await client.put("/policies/fleet", content=BANDS_OFF),
                "delete": await client.delete("/api/policies/edges/gw-1"),
                "verdicts": await client.get("/api/verdicts"),
                "dashboard": await client.get("/"),
                "wrong token": await client.get("/api/verdicts", headers=bearer("x" * 40)),
            }
            open_paths = [(await client.get(path)).status_code for path in ("/healthz", "/metrics")]
            page = await client.get("/", headers=bearer(VIEWER))
            viewer_reads = await client.get("/api/policies", headers=bearer(VIEWER))
            viewer_changes = await client.put("/api/policies/fleet", content=BANDS_OFF, headers=bearer(VIEWER))
            basic = "Basic " + base64.b64encode(f"alice:{OPERATOR}".encode()).decode()
            operator = await client.put(
                "/api/policies/fleet",
                params={"reason": "night shift"},
                content="uplink: {jpeg_quality: 60}",
                headers={"authorization": basic},
            )
            history = (await client.get("/api/policies", headers=bearer(OPERATOR))).json()["history"]
    assert {name: r.status_code for name, r in anonymous.items()} == dict.fromkeys(anonymous, 401)
    assert anonymous["verdicts"].headers["www-authenticate"].startswith("Basic")  # a browser asks
    assert open_paths == [200, 200]
    assert page.status_code == 200 and "script-src 'self';" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert viewer_reads.status_code == 200
    assert viewer_changes.status_code == 403 and "bob is a viewer" in viewer_changes.json()["detail"]
    assert operator.status_code == 200
    assert history[0]["reason"] == "PUT /api/policies/fleet: night shift (by alice)"
    assert engine(service).fleet.mining.uncertainty_band_enabled, "no anonymous or viewer change took effect"


async def test_a_page_on_another_host_name_gets_nothing(tmp_path: Path, clip: Path) -> None:
    """DNS rebinding: a page on evil.example whose name now resolves to the admin's address."""
    config = make_config(tmp_path, clip, admin={"enabled": True, "host": "127.0.0.1", "port": 0})
    async with running(config) as service:
        base = f"http://127.0.0.1:{service.admin_port}"
        async with httpx.AsyncClient(base_url=base, timeout=WAIT_S) as client:
            rebound = {"host": "evil.example"}
            refused = [
                (await client.put("/api/policies/fleet", content=BANDS_OFF, headers=rebound)).status_code,
                (await client.get("/api/verdicts", headers=rebound)).status_code,
            ]
            probe = await client.get("/healthz", headers={"host": "10.42.0.17:8080"})  # the kubelet, by pod IP
            local = await client.get("/api/verdicts", headers={"host": f"localhost:{service.admin_port}"})
    assert refused == [400, 400]
    assert probe.status_code == 200 and local.status_code == 200
    assert engine(service).fleet.mining.uncertainty_band_enabled


def test_an_admin_api_open_to_the_network_without_users_is_refused_at_load(tmp_path: Path, clip: Path) -> None:
    with pytest.raises(ValidationError, match="no users are configured: anyone who reaches it"):
        make_config(tmp_path, clip, admin={"enabled": True, "host": "0.0.0.0", "port": 0})
    open_on_purpose = make_config(
        tmp_path, clip, admin={"enabled": True, "host": "0.0.0.0", "port": 0, "allow_anonymous": True}
    )
    assert open_on_purpose.admin.allow_anonymous


async def test_a_short_or_missing_token_file_stops_the_start_naming_the_user(tmp_path: Path, clip: Path) -> None:
    (tmp_path / "short").write_text("abc")
    users = [{"name": "carol", "role": "operator", "token_file": str(tmp_path / "short")}]
    config = make_config(tmp_path, clip, admin={"enabled": True, "host": "127.0.0.1", "port": 0, "users": users})
    with pytest.raises(ValueError, match=r"admin.users carol: the token in .*short has 3 characters"):
        async with running(config):
            pass


def test_policy_set_sends_the_operators_token(tmp_path: Path, clip: Path) -> None:
    """The CLI a person uses, against the guarded service (token from a file; without one: told what to give)."""
    import asyncio
    import threading

    config = guarded(tmp_path, clip)
    (tmp_path / "policy.yaml").write_text("uplink: {jpeg_quality: 55}\n")
    results: dict[str, object] = {}
    started = threading.Event()
    done = threading.Event()

    async def serve() -> None:
        async with running(config) as service:
            results["port"] = service.admin_port
            started.set()
            await asyncio.to_thread(done.wait, WAIT_S)
            results["quality"] = engine(service).fleet.uplink.jpeg_quality

    thread = threading.Thread(target=lambda: asyncio.run(serve()))
    thread.start()
    assert started.wait(WAIT_S)
    admin = f"http://127.0.0.1:{results['port']}"
    runner = CliRunner()
    without = runner.invoke(cloud_app, ["policy", "set", str(tmp_path / "policy.yaml"), "--admin", admin])
    token = ["--token-file", str(tmp_path / "admin" / "alice")]
    with_token = runner.invoke(cloud_app, ["policy", "set", str(tmp_path / "policy.yaml"), "--admin", admin, *token])
    done.set()
    thread.join(WAIT_S)
    assert without.exit_code == 2 and "give --token-file" in without.output
    assert with_token.exit_code == 0, with_token.output
    assert results["quality"] == 55


async def test_changes_beyond_the_write_rate_get_429_and_the_operator_is_told_when_to_retry(
    tmp_path: Path, clip: Path
) -> None:
    config = guarded(tmp_path, clip).model_copy(deep=True)
    config.admin.write_burst, config.admin.write_rate_per_s = 3, 0.01
    async with running(config) as service:
        base = f"http://127.0.0.1:{service.admin_port}"
        async with httpx.AsyncClient(base_url=base, timeout=WAIT_S) as client:
            codes = []
            for quality in range(50, 55):
                body = f"uplink: {{jpeg_quality: {quality}}}"
                codes.append(
                    (await client.put("/api/policies/fleet", content=body, headers=bearer(OPERATOR))).status_code
                )
            limited = await client.put(
                "/api/policies/fleet", content="uplink: {jpeg_quality: 70}", headers=bearer(OPERATOR)
            )
            reads = (await client.get("/api/policies", headers=bearer(OPERATOR))).status_code
    assert codes == [200, 200, 200, 429, 429]
    assert int(limited.headers["retry-after"]) >= 1 and "at most 0.01 a second" in limited.json()["detail"]
    assert reads == 200, "reads are not rate-limited"
    assert engine(service).fleet.uplink.jpeg_quality == 52


def counted_refusals(service: CloudService, reason: str) -> float:
    value = service.metrics.registry.get_sample_value("edgeglm_cloud_admin_refused_total", {"reason": reason})
    return 0.0 if value is None else value


async def test_a_sign_in_gives_a_cookie_that_reads_but_never_changes_and_is_not_the_token(
    tmp_path: Path, clip: Path
) -> None:
    async with running(guarded(tmp_path, clip)) as service:
        base = f"http://127.0.0.1:{service.admin_port}"
        async with httpx.AsyncClient(base_url=base, timeout=WAIT_S) as client:
            browser = {"accept": "text/html,application/xhtml+xml"}
            sent_away = await client.get("/", headers=browser)
            form = await client.get("/login", headers=browser)
            wrong = await client.post("/auth/login", data={"token": "x" * 40})
            signed_in = await client.post("/auth/login", data={"token": OPERATOR})
            cookie = signed_in.cookies["edgeglm_session"]
            with_session = {"cookie": f"edgeglm_session={cookie}"}
            reads = await client.get("/api/verdicts", headers=with_session)
            page = await client.get("/", headers={**browser, **with_session})
            change = await client.put("/api/policies/fleet", content=BANDS_OFF, headers=with_session)
            name, expires, tag = cookie.split(".")
            forged = f"{base64.urlsafe_b64encode(b'bob').decode().rstrip('=')}.{expires}.{tag}"
            forged_read = await client.get("/api/verdicts", headers={"cookie": f"edgeglm_session={forged}"})
            later = f"{name}.{int(expires) + 3600}.{tag}"  # a longer life than it was given
            stretched = await client.get("/api/verdicts", headers={"cookie": f"edgeglm_session={later}"})
            signed_out = await client.post("/auth/logout", headers=with_session)
    assert (sent_away.status_code, sent_away.headers["location"]) == (303, "/login")
    assert form.status_code == 200 and 'action="/auth/login"' in form.text and "not one of" not in form.text
    assert (wrong.status_code, wrong.headers["location"]) == (303, "/login?failed=1")
    assert counted_refusals(service, "wrong_sign_in") == 1
    assert (signed_in.status_code, signed_in.headers["location"]) == (303, "/")
    set_cookie = signed_in.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "max-age=28800" in set_cookie
    assert "secure" not in set_cookie, "plain HTTP on loopback: a Secure cookie would never come back"
    assert OPERATOR not in cookie and OPERATOR not in set_cookie, "the cookie is not the token"
    assert reads.status_code == 200 and page.status_code == 200
    assert change.status_code == 403 and "only reads" in change.json()["detail"]
    assert counted_refusals(service, "session_change") == 1
    assert engine(service).fleet.mining.uncertainty_band_enabled, "a cookie changed nothing"
    assert forged_read.status_code == 401 and stretched.status_code == 401
    assert counted_refusals(service, "wrong_token") == 2
    assert signed_out.status_code == 303 and 'edgeglm_session=""' in signed_out.headers["set-cookie"]


def test_a_session_ends_when_it_expires_or_its_users_token_is_replaced() -> None:
    alice = AdminIdentity("alice", "operator", b"\x01" * 32)
    value = session_value(alice, now=1000.0)
    assert session_user([alice], value, now=1000.0 + SESSION_S - 1) == alice
    assert session_user([alice], value, now=1000.0 + SESSION_S) is None
    rotated = AdminIdentity("alice", "operator", b"\x02" * 32)
    assert session_user([rotated], value, now=1001.0) is None
    for junk in ("", "...", "YWxpY2U.notanumber.x", "YWxpY2U.99999999999999999.x", "%%%.2000.ab"):
        assert session_user([alice], junk, now=1001.0) is None
