"""The dashboard in a real browser: a running service judges a sample sent over gRPC, and headless
chromium shows that verdict (sample id, edge, description and thumbnail), the edges, the policy
history and the closed loop's classes; a screenshot is saved under tmp_path."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from cloud.models.registry import ModelRegistry
from cloud.policy import load_private_key
from common.manifest import describe_model
from protos import session_pb2, status_pb2
from tests.helpers.agents import MODEL
from tests.helpers.browser import headless_chromium, require_chromium
from tests.helpers.cloud import (
    WAIT_S,
    busy_frames,
    channel,
    make_config,
    open_session,
    running,
    send,
)

PAGE_WAIT_S = 30.0
HEARTBEAT = status_pb2.EdgeStatus(
    edge_id="gw-1",
    state=status_pb2.EDGE_STATE_ONLINE,
    model_name="yolo-world-n",
    model_version="v1",
    policy_version=1,
    counters=status_pb2.EdgeCounters(frames_read=1200, samples_mined=40, samples_sent=38, bytes_sent=1_900_000),
)


def read_dashboard(url: str, sample_id: str, profile: Path, screenshot: Path) -> dict[str, Any]:
    """Open the dashboard, wait until the verdict is in the feed, and return what the page shows."""
    with headless_chromium(profile) as browser:
        browser.set_page_load_timeout(PAGE_WAIT_S)
        browser.get(url)
        wait = WebDriverWait(browser, PAGE_WAIT_S)
        item = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, f'li.verdict[data-sample-id="{sample_id}"]'))
        thumb = item.find_element(By.CSS_SELECTOR, "img.thumb")
        wait.until(lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", thumb))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#history tr"))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#chart-uplink polyline"))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#loop-rows tr td.mono"))
        wait.until(lambda b: "1 connected" in b.find_element(By.ID, "fleet-summary").text)
        wait.until(lambda b: "yolo-world-n v1" in b.find_element(By.CSS_SELECTOR, '.edge[data-edge="gw-1"]').text)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, '#rollout-canaries tr[data-canary="gw-1"]'))
        shown = {
            "rollout": browser.find_element(By.ID, "rollout").text,
            "gw1_card": browser.find_element(By.CSS_SELECTOR, '.edge[data-edge="gw-1"]').text,
            "item": item.text,
            "thumbnail_width": browser.execute_script("return arguments[0].naturalWidth", thumb),
            "edges": [e.get_attribute("data-edge") for e in browser.find_elements(By.CSS_SELECTOR, "#edges .edge")],
            "history": [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#history tr")],
            "uplink_lines": len(browser.find_elements(By.CSS_SELECTOR, "#chart-uplink polyline")),
            "loop_edges": {r.text.split()[0] for r in browser.find_elements(By.CSS_SELECTOR, "#loop-rows tr")},
            "errors": [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"],
        }
        item.click()  # the detail dialog: the verdict as sent
        wait.until(lambda b: b.find_element(By.ID, "detail").get_attribute("open") is not None)
        shown["detail"] = browser.find_element(By.ID, "detail-body").text
        browser.find_element(By.CSS_SELECTOR, "#detail button.close").click()
        wait.until(lambda b: b.find_element(By.ID, "detail").get_attribute("open") is None)
        Select(browser.find_element(By.ID, "f-decision")).select_by_value("rejected")
        wait.until(lambda b: "No verdict matches." in b.find_element(By.ID, "feed").text)
        Select(browser.find_element(By.ID, "f-decision")).select_by_value("")
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f'li.verdict[data-sample-id="{sample_id}"]'))
        shown["errors"] += [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        browser.get(url + "docs")  # Swagger UI from local files, over /openapi.json
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"))
        shown["docs_paths"] = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        shown["errors"] += [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        browser.get(url)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f'li.verdict[data-sample-id="{sample_id}"]'))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#loop-rows tr td.mono"))
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1440, int(height) + 160)  # the whole page in one picture
        browser.save_screenshot(str(screenshot))
    return shown


async def test_the_dashboard_shows_a_verdict_made_from_a_real_sample(tmp_path: Path, clip: Path) -> None:
    require_chromium()
    frames = busy_frames(clip)
    screenshot = tmp_path / "dashboard.png"
    admin = {"enabled": True, "host": "127.0.0.1", "port": 0}
    config = make_config(
        tmp_path, clip, admin=admin, policy={"closed_loop": {"enabled": True}}, models={"registry": str(tmp_path / "m")}
    )
    async with running(config) as service:
        base = f"http://127.0.0.1:{service.admin_port}"
        key = load_private_key(tmp_path / "keys" / "policy-signing.key")
        ModelRegistry(tmp_path / "m").publish(MODEL, describe_model(MODEL, name="yolo-edge", version="2"), key)
        async with httpx.AsyncClient(base_url=base, timeout=WAIT_S) as client:
            reason = {"reason": "watch the loading bay"}
            changed = await client.put("/api/policies/edges/gw-2", params=reason, content="uplink: {jpeg_quality: 60}")
            rollout = await client.post(
                "/api/rollout", json={"name": "yolo-edge", "version": "2", "canaries": ["gw-1"]}
            )
        await send(service, clip, "gw-2", frames[3:6], "bay")
        (sample,) = await send(service, clip, "gw-1", frames[:1], "door")
        async with channel(service) as stub:  # gw-1 stays connected, reporting its counters, while the page is read
            call, _ = await open_session(stub, "gw-1")
            await call.write(session_pb2.EdgeMessage(heartbeat=HEARTBEAT))
            # The browser is blocking: it runs in a thread while this loop serves its requests.
            shown = await asyncio.to_thread(
                read_dashboard, base + "/", sample.sample_id, tmp_path / "profile", screenshot
            )
            call.cancel()

    assert changed.status_code == 200
    assert rollout.status_code == 201, rollout.text
    assert "Model rollout" in shown["rollout"] and "canary" in shown["rollout"] and "yolo-edge 2" in shown["rollout"]
    assert "gw-1 not yet" in shown["rollout"], "the canary reports another model"
    assert sample.sample_id in shown["item"]
    assert "gw-1" in shown["item"] and "simulation oracle" in shown["item"] and "confirmed" in shown["item"]
    assert shown["thumbnail_width"] == 160
    assert shown["edges"] == ["gw-1", "gw-2"]
    assert any("watch the loading bay" in row for row in shown["history"])
    assert shown["uplink_lines"] == 2
    assert shown["loop_edges"] == {"gw-1", "gw-2"}
    assert f'"sample_id": "{sample.sample_id}"' in shown["detail"] and "Verdict as sent" in shown["detail"]
    assert "edge / camera" in shown["detail"] and "gw-1 / cam0" in shown["detail"]
    assert "[object" not in shown["detail"], "every field of the dialog shows its value"
    assert {"/api/verdicts", "/api/policies/fleet"} <= {path.replace("\u200b", "") for path in shown["docs_paths"]}
    assert "1,200" in shown["gw1_card"] and "40 / 38" in shown["gw1_card"] and "1.9 MB" in shown["gw1_card"]
    assert shown["errors"] == []
    assert screenshot.read_bytes().startswith(b"\x89PNG")


def sign_in_and_out(url: str, token: str, profile: Path) -> dict[str, Any]:
    """Open the dashboard without a session, sign in with `token`, read the page, sign out."""
    with headless_chromium(profile) as browser:
        browser.set_page_load_timeout(PAGE_WAIT_S)
        wait = WebDriverWait(browser, PAGE_WAIT_S)
        browser.get(url)
        wait.until(lambda b: b.current_url.endswith("/login"))
        shown: dict[str, Any] = {"first_url": browser.current_url}
        browser.find_element(By.ID, "token").send_keys("not-a-token-" + "z" * 20)
        browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".problem"))
        shown["problem"] = browser.find_element(By.CSS_SELECTOR, ".problem").text
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, '#edges .edge[data-edge="gw-1"]'))
        shown["signed_in_url"] = browser.current_url
        shown["script_cookies"] = browser.execute_script("return document.cookie")
        shown["cookie"] = browser.get_cookie("edgeglm_session")
        shown["errors"] = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        browser.find_element(By.ID, "sign-out").click()
        wait.until(lambda b: b.current_url.endswith("/login"))
        browser.get(url)
        wait.until(lambda b: b.current_url.endswith("/login"))
        shown["after_sign_out"] = browser.current_url
    return shown


async def test_a_user_signs_in_to_the_dashboard_with_a_token_and_the_page_never_holds_it(
    tmp_path: Path, clip: Path
) -> None:
    require_chromium()
    token = "viewer-" + "t" * 40
    (tmp_path / "viewer.token").write_text(token)
    users = [{"name": "carol", "role": "viewer", "token_file": str(tmp_path / "viewer.token")}]
    admin = {"enabled": True, "host": "127.0.0.1", "port": 0, "users": users}
    async with running(make_config(tmp_path, clip, admin=admin)) as service:
        await send(service, clip, "gw-1", busy_frames(clip)[:1], "door")
        base = f"http://127.0.0.1:{service.admin_port}/"
        shown = await asyncio.to_thread(sign_in_and_out, base, token, tmp_path / "profile")
    assert shown["first_url"] == base + "login"
    assert "not one of this service's users" in shown["problem"]
    assert shown["signed_in_url"] == base
    assert shown["cookie"]["httpOnly"] is True and shown["cookie"]["sameSite"] == "Strict"
    assert "edgeglm_session" not in shown["script_cookies"], "no script on the page can read the session"
    assert token not in shown["cookie"]["value"]
    assert shown["errors"] == []
    assert shown["after_sign_out"] == base + "login"
