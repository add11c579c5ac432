"""The /api read routes over the store and the fleet: edges, verdicts and thumbnails, time series."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from google.protobuf import json_format

from cloud.api.state import AdminState, require_store
from cloud.store import MAX_PAGE, MAX_PAGE_BYTES, CursorError, VerdictFilter
from protos import verdict_pb2

MAX_BUCKETS = 2000
PAGE_RULE = (
    "Judged samples, newest decided first, a page at a time; `next_cursor` is null on the last page. A page "
    f"holds at most `limit` items and ends early where its items would pass {MAX_PAGE_BYTES >> 20} MiB of JSON "
    "(it always holds one): follow `next_cursor`, not the count, to the end."
)
DEFAULT_SERIES_SPAN_S = 3600.0


def _edges(state: AdminState, stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Live records, and the last stored record of edges not heard from since this process started."""
    live = {record["edge_id"]: {**record, "live": True} for record in state.fleet.snapshot()}
    for record in stored:
        live.setdefault(record["edge_id"], {**record, "live": False, "connected": False, "sessions": 0})
    for record in live.values():
        status = record.get("status") or {}
        record["state"] = str(status.get("state", "EDGE_STATE_UNSPECIFIED")).removeprefix("EDGE_STATE_").lower()
        record["policy_version_current"] = state.policy.version_for(record["edge_id"], record.get("site_id", ""))
    return [live[edge] for edge in sorted(live)]


def _span(bucket_s: float, since: float | None, until: float | None) -> tuple[float, float]:
    end = time.time() if until is None else until
    start = end - DEFAULT_SERIES_SPAN_S if since is None else since
    if end <= start:
        raise HTTPException(422, f"until ({end}) must be after since ({start})")
    if (end - start) / bucket_s > MAX_BUCKETS:
        raise HTTPException(
            422, f"{(end - start) / bucket_s:.0f} buckets asked; at most {MAX_BUCKETS}: raise bucket_s or narrow"
        )
    return start, end


def api_router(state: AdminState) -> APIRouter:
    """Routes under /api reading the fleet and the store."""
    router = APIRouter(prefix="/api")

    @router.get("/edges", tags=["fleet"])
    async def edges() -> list[dict[str, Any]]:
        """Every edge known: live ones (sessions, Hello, last heartbeat) and, after a restart, the last stored."""
        stored = await require_store(state).latest_edge_snapshots()
        return _edges(state, [snapshot.record for snapshot in stored])

    @router.get("/closed-loop", tags=["fleet"])
    async def closed_loop() -> dict[str, Any]:
        """The closed loop: targets and, per edge and class, the band, its estimates on the window, its moves.

        `enabled` is false (and nothing else is given) when policy.closed_loop.enabled is false.
        """
        if state.closed_loop is None:
            return {"enabled": False}
        return {"enabled": True, **state.closed_loop.snapshot()}

    @router.get("/verdicts", tags=["verdicts"], description=PAGE_RULE)
    async def verdicts(
        edge_id: str | None = Query(None, description="Only this edge's samples."),
        camera_id: str | None = Query(None, description="Only this camera's samples."),
        label: str | None = Query(None, description="A label the cloud saw or the edge reported."),
        decision: Literal["confirmed", "rejected", "unsure"] | None = Query(None, description="Only this decision."),
        since: float | None = Query(None, description="Decided at or after (unix seconds)."),
        until: float | None = Query(None, description="Decided before (unix seconds)."),
        limit: int = Query(50, ge=1, le=MAX_PAGE, description="Verdicts per page."),
        cursor: str | None = Query(None, description="next_cursor of the previous page."),
    ) -> Response:
        """Judged samples, newest decided first, a page at a time (see PAGE_RULE)."""
        where = VerdictFilter(edge_id, camera_id, label, decision, since, until)
        try:
            page = await require_store(state).list_verdicts(where, limit=limit, cursor=cursor)
        except CursorError as err:
            raise HTTPException(400, str(err)) from err
        return await _json_off_loop(
            lambda: {"items": [record.to_json() for record in page.items], "next_cursor": page.next_cursor}
        )

    @router.get("/verdicts/{edge_id}/{sample_id}", tags=["verdicts"])
    async def verdict(edge_id: str, sample_id: str) -> Response:
        """One judged sample of an edge (a sample_id is its edge's own): its record and the full verdict as sent
        (boxes, times) under `verdict`."""
        store = require_store(state)
        record = await store.get_record(sample_id, edge_id)
        blob = await store.get(sample_id, edge_id)
        if record is None or blob is None:
            raise HTTPException(404, f"no verdict for sample {sample_id} of edge {edge_id}")

        def render() -> dict[str, Any]:
            message = verdict_pb2.Verdict.FromString(blob)
            return {**record.to_json(), "verdict": json_format.MessageToDict(message, preserving_proto_field_name=True)}

        return await _json_off_loop(render)

    @router.get("/verdicts/{edge_id}/{sample_id}/thumbnail.jpg", tags=["verdicts"], response_class=Response)
    async def thumbnail(edge_id: str, sample_id: str) -> Response:
        """The sample's thumbnail (JPEG, at most 160 px on its longer side)."""
        jpeg = await require_store(state).get_thumbnail(sample_id, edge_id)
        if jpeg is None:
            raise HTTPException(404, f"no thumbnail for sample {sample_id} of edge {edge_id}")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400, immutable"})

    @router.get("/series/uplink", tags=["series"])
    async def uplink(
        bucket_s: float = Query(60.0, ge=1.0, le=86400.0, description="Bucket width in seconds."),
        since: float | None = Query(None, description="From (unix seconds); default an hour before `until`."),
        until: float | None = Query(None, description="To (unix seconds); default now."),
    ) -> dict[str, Any]:
        """Per edge and bucket of arrival: samples received (each sample once, resends not counted), bytes."""
        start, end = _span(bucket_s, since, until)
        points = await require_store(state).uplink_series(bucket_s, start, end)
        series: dict[str, list[dict[str, float]]] = {}
        for p in points:
            series.setdefault(p.edge_id, []).append({"t": p.bucket_start, "samples": p.samples, "bytes": p.bytes})
        return {"bucket_s": bucket_s, "since": start, "until": end, "series": series}

    @router.get("/series/verdicts", tags=["series"])
    async def verdict_mix(
        bucket_s: float = Query(60.0, ge=1.0, le=86400.0, description="Bucket width in seconds."),
        since: float | None = Query(None, description="From (unix seconds); default an hour before `until`."),
        until: float | None = Query(None, description="To (unix seconds); default now."),
    ) -> dict[str, Any]:
        """Per edge and bucket of decision: forwarded samples the cloud confirmed, rejected, was unsure of.

        The mix of what edges sent, not their recall: events an edge did not forward never reach the cloud.
        """
        start, end = _span(bucket_s, since, until)
        points = await require_store(state).decision_series(bucket_s, start, end)
        series: dict[str, list[dict[str, float]]] = {}
        for p in points:
            row = {"t": p.bucket_start, "confirmed": p.confirmed, "rejected": p.rejected, "unsure": p.unsure}
            series.setdefault(p.edge_id, []).append(row)
        return {
            "bucket_s": bucket_s,
            "since": start,
            "until": end,
            "measures": "verdict mix of forwarded samples",
            "series": series,
        }

    return router


async def _json_off_loop(build: Callable[[], dict[str, Any]]) -> Response:
    """Build and serialize a response body in a worker thread: a large page of verdicts costs the event
    loop that serves the edges' gRPC streams nothing but the hand-over."""
    body = await asyncio.to_thread(lambda: json.dumps(build(), separators=(",", ":")).encode())
    return Response(body, media_type="application/json")
