"""The fleet policy of each mode: how the same agents and cloud become each system under comparison.

Every mode runs the real edge agents and the real cloud; only the signed fleet policy differs:

- `cloud_only`: the gate passes every frame, no detection is trusted locally (band [0, 1]), and the
  edges run with `pipeline.send_every_frame` (set by the harness in their edge.yaml), so every frame
  goes up; the cloud decides everything.
- `edge_only`: every strategy is off; the edge acts on detections above the local threshold and
  never sends a sample (its heartbeats still go up, and are counted).
- `sedna_ibt`: KubeEdge Sedna's joint-inference rule, image-box-threshold, at Sedna's defaults; a
  frame is sent when enough of its boxes are unsure; static, no closed loop.
- `random`: a fixed share of detected frames is sent, chosen at random.
- `edgeglm`: the scenario's policy (uncertainty bands, watch list, motion without detection, audit,
  resend interval) with the cloud's closed loop moving the bands, and one question per tracked
  object (`tracking.ask: per_track`); the other modes ask per frame, as the systems they stand for do.

Every mode's edges track objects, so every mode's events are per object and measured alike.
"""

from __future__ import annotations

from typing import Any

from sim.scenarios.spec import ModeName, Scenario

_OFF = {
    "uncertainty_band_enabled": False,
    "ibt_enabled": False,
    "cross_entropy_enabled": False,
    "watch_list_enabled": False,
    "motion_without_detection_enabled": False,
    "random_audit_enabled": False,
}


def mode_policy(mode: ModeName, scenario: Scenario) -> dict[str, Any]:
    """The fleet policy settings (cloud.yaml `policy.fleet`) of one mode."""
    policy = scenario.policy
    base = scenario.baselines
    # Boxes below the edgeglm band's low are noise to every mode (Sedna's detector threshold); above the
    # baselines' local threshold the edge is sure.
    sure = {"low": min(policy.band_low, base.local_threshold), "high": base.local_threshold}
    uplink: dict[str, Any] = {
        "image_mode": policy.image_mode,
        "jpeg_quality": policy.jpeg_quality,
        "budget_bytes_per_s": policy.budget_bytes_per_s,
    }
    mining: dict[str, Any]
    gate: dict[str, Any] = {}
    if mode == "cloud_only":
        gate = {"changed_area_fraction": 0.0}
        mining = {
            **_OFF,
            "uncertainty_band_enabled": True,
            "default_band": {"low": 0.0, "high": 1.0},
            "motion_without_detection_enabled": True,
            "random_audit_enabled": True,
            "random_audit_rate": 1.0,
            "resend_interval_s": 0.0,
        }
        # Every frame must fit: the budget is not what is compared here, the link is.
        uplink = {**uplink, "image_mode": "full_frame", "budget_bytes_per_s": 1 << 30, "burst_bytes": 1 << 30}
    elif mode == "edge_only":
        mining = {**_OFF, "default_band": sure}
    elif mode == "sedna_ibt":
        mining = {
            **_OFF,
            "default_band": sure,
            "ibt_enabled": True,
            "ibt_box_score_threshold": base.ibt_box_score_threshold,
            "ibt_image_fraction_threshold": base.ibt_image_fraction_threshold,
            "resend_interval_s": 0.0,
        }
    elif mode == "random":
        mining = {
            **_OFF,
            "default_band": sure,
            "random_audit_enabled": True,
            "random_audit_rate": base.random_fraction,
            "resend_interval_s": 0.0,
        }
    else:
        mining = {
            "default_band": {"low": policy.band_low, "high": policy.band_high},
            "watch_list": list(policy.watch_list),
            "random_audit_rate": policy.random_audit_rate,
            "resend_interval_s": policy.resend_interval_s,
            "watch_reask_interval_s": policy.watch_reask_interval_s,
        }
    settings: dict[str, Any] = {"mining": mining, "uplink": uplink}
    if gate:
        settings["gate"] = gate
    return settings


def mode_edge_settings(mode: ModeName) -> dict[str, Any]:
    """What of an edge's edge.yaml differs between modes (sections merged into the harness's own)."""
    return {
        "pipeline": {"send_every_frame": mode == "cloud_only"},
        "tracking": {"ask": "per_track" if mode == "edgeglm" else "per_frame"},
    }


def closed_loop(mode: ModeName, scenario: Scenario) -> dict[str, Any] | None:
    """The cloud's closed-loop settings in this mode (only edgeglm adapts)."""
    return dict(scenario.cloud.closed_loop) if mode == "edgeglm" else None
