"""The /api routes of a running service over a real SQLite store: verdicts of real samples sent over gRPC
(filters, cursor paging, thumbnails), series, policy history, edges across a restart, offline docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np

from cloud.config import CloudConfig
from cloud.service import CloudService
from tests.helpers.cloud import (
    WAIT_S,
    busy_frames,
    make_config,
    running,
    send,
    truth,
)
from tests.helpers.store import write_v1_file


def admin_config(tmp_path: Path, clip: Path) -> CloudConfig:
    return make_config(tmp_path, clip, admin={"enabled": True, "host": "127.0.0.1", "port": 0})


@asynccontextmanager
async def admin(service: CloudService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.admin_port}", timeout=WAIT_S) as client:
        yield client


async def test_verdicts_of_real_samples_are_filtered_and_paged_by_cursor(tmp_path: Path, clip: Path) -> None:
    frames = busy_frames(clip)
    async with running(admin_config(tmp_path, clip)) as service:
        await send(service, clip, "gw-1", frames[:5], "a")
        await send(service, clip, "gw-2", frames[5:7], "b")
        async with admin(service) as client:
            everything = (await client.get("/api/verdicts")).json()
            of_gw2 = (await client.get("/api/verdicts", params={"edge_id": "gw-2"})).json()
            rejected = (await client.get("/api/verdicts", params={"decision": "rejected"})).json()
            label = truth(clip)[frames[0]][0]["label"]
            by_label = (await client.get("/api/verdicts", params={"label": label})).json()
            paged: list[str] = []
            cursor = None
            for _ in range(10):
                params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
                page = (await client.get("/api/verdicts", params=params)).json()
                paged += [item["sample_id"] for item in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            bad_cursor = await client.get("/api/verdicts", params={"cursor": "nonsense"})
            bad_limit = await client.get("/api/verdicts", params={"limit": 0})

    ids = [item["sample_id"] for item in everything["items"]]
    assert sorted(ids) == sorted([f"a-{f:03d}" for f in frames[:5]] + [f"b-{f:03d}" for f in frames[5:7]])
    assert everything["next_cursor"] is None
    assert paged == ids
    assert [item["sample_id"] for item in of_gw2["items"]] == [i for i in ids if i.startswith("b-")]
    assert rejected["items"] == []
    expected = {
        f"{p}-{f:03d}"
        for p, f in [("a", f) for f in frames[:5]] + [("b", f) for f in frames[5:7]]
        if label in {o["label"] for o in truth(clip)[f]}
    }
    assert {item["sample_id"] for item in by_label["items"]} == expected
    first = everything["items"][0]
    assert (first["decision"], first["backend"], first["text"], first["origin"]) == (
        "confirmed",
        "oracle",
        "simulation oracle",
        "backend",
    )
    assert (bad_cursor.status_code, bad_limit.status_code) == (400, 422)


async def test_a_verdict_detail_carries_the_sample_metadata_and_a_jpeg_thumbnail(tmp_path: Path, clip: Path) -> None:
    frame = busy_frames(clip)[0]
    async with running(admin_config(tmp_path, clip)) as service:
        (sample,) = await send(service, clip, "gw-1", [frame], "s")
        async with admin(service) as client:
            detail = (await client.get(f"/api/verdicts/gw-1/{sample.sample_id}")).json()
            thumbnail = await client.get(f"/api/verdicts/gw-1/{sample.sample_id}/thumbnail.jpg")
            missing = await client.get("/api/verdicts/gw-1/nope")
            missing_thumbnail = await client.get("/api/verdicts/gw-1/nope/thumbnail.jpg")
            another_edges = await client.get(f"/api/verdicts/gw-2/{sample.sample_id}")

    objects = truth(clip)[frame]
    assert (detail["edge_id"], detail["camera_id"], detail["frame_seq"]) == ("gw-1", "cam0", frame)
    assert (detail["mined_reason"], detail["uplink_bytes"]) == ("uncertainty_band", sample.ByteSize())
    assert sorted(d["label"] for d in detail["edge_detections"]) == sorted(o["label"] for o in objects)
    assert detail["labels"] == sorted({o["label"] for o in objects})
    assert detail["verdict"]["sample_id"] == sample.sample_id and detail["verdict"]["decision"] == "DECISION_CONFIRMED"
    assert detail["has_thumbnail"] is True
    assert thumbnail.headers["content-type"] == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(thumbnail.content, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (120, 160, 3)  # 640x480 frame, longer side 160
    assert (missing.status_code, missing_thumbnail.status_code) == (404, 404)
    assert another_edges.status_code == 404, "a sample_id names a sample only with its edge"


async def test_series_count_each_edges_samples_bytes_and_decisions(tmp_path: Path, clip: Path) -> None:
    frames = busy_frames(clip)
    async with running(admin_config(tmp_path, clip)) as service:
        sent = await send(service, clip, "gw-1", frames[:4], "a")
        async with admin(service) as client:
            uplink = (await client.get("/api/series/uplink", params={"bucket_s": 86400})).json()
            mix = (await client.get("/api/series/verdicts", params={"bucket_s": 86400})).json()
            too_many = await client.get("/api/series/uplink", params={"bucket_s": 1, "since": 0, "until": 1e6})

    points = uplink["series"]["gw-1"]
    assert sum(p["samples"] for p in points) == 4
    assert sum(p["bytes"] for p in points) == sum(s.ByteSize() for s in sent)
    assert sum(p["confirmed"] for p in mix["series"]["gw-1"]) == 4
    assert sum(p["rejected"] + p["unsure"] for p in mix["series"]["gw-1"]) == 0
    assert too_many.status_code == 422


async def test_policy_changes_are_kept_in_the_history_with_their_reason(tmp_path: Path, clip: Path) -> None:
    async with running(admin_config(tmp_path, clip)) as service, admin(service) as client:
        edge = await client.put(
            "/api/policies/edges/gw-1", params={"reason": "fewer uploads"}, content="uplink: {jpeg_quality: 50}\n"
        )
        fleet = await client.put("/policies/fleet", json={"uplink": {"jpeg_quality": 70}})
        removed = await client.delete("/api/policies/edges/gw-1")
        refused = await client.put("/api/policies/fleet", content="uplink: {jpeg_quality: 900}\n")
        listing = (await client.get("/api/policies")).json()
        second = await client.get("/api/policies/2")
        unknown = await client.get("/api/policies/99")

    assert [r.json()["version"] for r in (edge, fleet, removed)] == [2, 3, 4]
    assert refused.status_code == 422
    history = [(h["version"], h["scope"], h["scope_id"], h["reason"]) for h in listing["history"]]
    assert history == [
        (4, "edge", "gw-1", "DELETE /api/policies/edges/gw-1"),
        (3, "fleet", "", "PUT /policies/fleet"),
        (2, "edge", "gw-1", "PUT /api/policies/edges/gw-1: fewer uploads"),
        (1, "fleet", "", "in force at start (cloud.yaml or a change before the restart)"),
    ]
    assert listing["history"][0]["settings"] is None
    assert second.json()["settings"] == {"uplink": {"jpeg_quality": 50}}
    assert listing["current"]["version"] == 4 and listing["current"]["edges"] == {}
    assert unknown.status_code == 404


async def test_edges_and_verdicts_outlive_a_restart_of_the_service(tmp_path: Path, clip: Path) -> None:
    config = admin_config(tmp_path, clip)
    async with running(config) as service:
        await send(service, clip, "gw-1", busy_frames(clip)[:1], "s")
        async with admin(service) as client:
            live = (await client.get("/api/edges")).json()
    async with running(config) as service, admin(service) as client:
        after = (await client.get("/api/edges")).json()
        verdicts = (await client.get("/api/verdicts")).json()

    assert [(e["edge_id"], e["live"], e["state"], e["samples"]) for e in live] == [("gw-1", True, "online", 1)]
    assert [(e["edge_id"], e["live"], e["connected"], e["samples"]) for e in after] == [("gw-1", False, False, 1)]
    assert [v["sample_id"] for v in verdicts["items"]] == [f"s-{busy_frames(clip)[0]:03d}"]


async def test_a_schema_1_store_is_served_after_the_upgrade(tmp_path: Path, clip: Path) -> None:
    config = admin_config(tmp_path, clip)
    config.store.path.parent.mkdir(parents=True)
    write_v1_file(config.store.path)
    async with running(config) as service, admin(service) as client:
        listed = (await client.get("/api/verdicts", params={"edge_id": "gw-1"})).json()
        old = (await client.get("/api/verdicts/gw-1/old-1")).json()

    assert [v["sample_id"] for v in listed["items"]] == ["old-2", "old-1"]
    assert (old["text"], old["decision"], old["labels"], old["has_thumbnail"]) == (
        "seen before the upgrade",
        "confirmed",
        ["person"],
        False,
    )


async def test_openapi_docs_and_dashboard_are_served_from_local_files(tmp_path: Path, clip: Path) -> None:
    async with running(admin_config(tmp_path, clip)) as service, admin(service) as client:
        schema = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
        bundle = await client.get("/docs-assets/swagger-ui-bundle.js")
        page = await client.get("/")
        script = await client.get("/static/app.js")
        style = await client.get("/static/style.css")

    assert {
        "/api/verdicts",
        "/api/verdicts/{edge_id}/{sample_id}",
        "/api/verdicts/{edge_id}/{sample_id}/thumbnail.jpg",
        "/api/policies/fleet",
        "/api/edges",
        "/api/series/uplink",
        "/api/series/verdicts",
        "/policies/fleet",
        "/metrics",
    } <= set(schema["paths"])
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
    assert page.status_code == 200 and '<script src="/static/app.js">' in page.text
    assert "https://" not in page.text and "https://" not in script.text and "https://" not in style.text
    assert script.status_code == 200 and "/api/verdicts" in script.text


async def test_the_closed_loop_state_is_served_when_the_loop_is_on(tmp_path: Path, clip: Path) -> None:
    frames = busy_frames(clip)[:2]
    looped = make_config(
        tmp_path / "on",
        clip,
        admin={"enabled": True, "host": "127.0.0.1", "port": 0},
        # A loop that moves on the first evaluation: every pair is confirmed at score 0.5, inside the band.
        policy={"closed_loop": {"enabled": True, "min_pairs": 1, "min_audit_pairs": 0, "min_interval_s": 0}},
    )
    async with running(admin_config(tmp_path / "off", clip)) as service, admin(service) as client:
        off = await client.get("/api/closed-loop")
    async with running(looped) as service:
        await send(service, clip, "gw-1", frames, "s")
        assert service.bands is not None
        moved = await service.bands.evaluate("gw-1")
        async with admin(service) as client:
            on = (await client.get("/api/closed-loop")).json()
            history = (await client.get("/api/policies")).json()["history"]
            one = (await client.get(f"/api/policies/{moved}")).json()

    pairs: dict[str, int] = {}
    for frame in frames:
        for thing in truth(clip)[frame]:
            pairs[thing["label"]] = pairs.get(thing["label"], 0) + 1
    assert off.json() == {"enabled": False}
    assert on["enabled"] is True
    assert {label: entry["pairs"] for label, entry in on["edges"]["gw-1"].items()} == pairs
    assert 0 < on["target_recall"] <= 1
    assert moved == 2 and history[0]["version"] == 2
    labels = sorted(pairs)
    assert history[0]["reason"].startswith(f"closed loop: {labels[0]} [") and one["reason"] == history[0]["reason"]
    assert history[0]["settings"]["mining"]["bands"].keys() == set(labels)
