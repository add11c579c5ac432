"""Watch rules edited through the admin API and the dashboard of a running cloud service.

The API's rule routes change one rule of the fleet policy and nothing else, under a new signed
version; a bad rule gets 422 naming the field, counted. In headless chromium an operator signed in
to the dashboard adds a rule by typing its words and their token (used for that one request, then
gone from the page), sees it listed, is refused with a viewer's token, and removes it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.helpers.browser import headless_chromium, require_chromium
from tests.helpers.cloud import WAIT_S, counter, make_clip, make_config, running

PAGE_WAIT_S = 30.0
OPERATOR = "operator-" + "o" * 40
VIEWER = "viewer-" + "v" * 40


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip"))


async def test_the_rule_routes_change_one_rule_and_refuse_a_bad_one_by_field(tmp_path: Path, clip: Path) -> None:
    admin = {"enabled": True, "host": "127.0.0.1", "port": 0}
    fleet = {
        "mining": {"watch_list": ["person"], "watch_rules": [{"rule_id": "a", "text": "a cat", "labels": ["cat"]}]}
    }
    async with running(make_config(tmp_path, clip, admin=admin, policy={"fleet": fleet})) as service:
        engine = service.policy
        assert engine is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.admin_port}", timeout=WAIT_S) as client:
            before = engine.version
            added = await client.put(
                "/api/policies/fleet/watch-rules/fence",
                json={"text": "a person climbing the fence", "labels": ["person"], "severity": "critical"},
            )
            replaced = await client.put(
                "/api/policies/fleet/watch-rules/a", content="text: a cat on the table\nlabels: [cat]"
            )
            bad = await client.put(
                "/api/policies/fleet/watch-rules/b", json={"text": "x", "labels": [], "zone": [{"x": 2}]}
            )
            renamed = await client.put(
                "/api/policies/fleet/watch-rules/c", json={"rule_id": "d", "text": "x", "labels": ["cat"]}
            )
            rules_after_put = [(r.rule_id, r.text) for r in engine.fleet.mining.watch_rules]
            removed = await client.delete("/api/policies/fleet/watch-rules/a")
            missing = await client.delete("/api/policies/fleet/watch-rules/a")
            history = (await client.get("/api/policies", params={"limit": 5})).json()["history"]
        rejected = counter(service, "edgeglm_cloud_policies_rejected_total")
        final = engine.fleet
    assert [r.status_code for r in (added, replaced, removed)] == [200, 200, 200]
    assert added.json()["version"] > before
    assert rules_after_put == [("a", "a cat on the table"), ("fence", "a person climbing the fence")]  # in place
    assert [r.rule_id for r in final.mining.watch_rules] == ["fence"]
    assert final.mining.watch_list == ("person",), "the rest of the policy stays"
    assert bad.status_code == 422
    assert {d["loc"] for d in bad.json()["detail"]} >= {"labels", "zone[0].y"}
    assert renamed.status_code == 422 and "differs from the path" in renamed.text
    assert missing.status_code == 404
    assert rejected == 2
    assert "DELETE /api/policies/fleet/watch-rules/a" in history[0]["reason"]


def edit_rules(url: str, profile: Path) -> dict[str, Any]:
    """Sign in as the operator, add a rule (a viewer's token is refused), remove it; what the page showed."""
    shown: dict[str, Any] = {}
    with headless_chromium(profile) as browser:
        browser.set_page_load_timeout(PAGE_WAIT_S)
        wait = WebDriverWait(browser, PAGE_WAIT_S)
        browser.get(url)
        wait.until(lambda b: b.current_url.endswith("/login"))
        browser.find_element(By.ID, "token").send_keys(OPERATOR)
        browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#rule-rows td.empty"))

        def fill(rule_id: str, token: str) -> None:
            browser.find_element(By.ID, "rule-id").send_keys(rule_id)
            browser.find_element(By.ID, "rule-text").send_keys("a person climbing the fence")
            browser.find_element(By.ID, "rule-labels").send_keys("person, cat")
            Select(browser.find_element(By.ID, "rule-severity")).select_by_visible_text("critical")
            browser.find_element(By.ID, "rule-token").send_keys(token)
            browser.find_element(By.CSS_SELECTOR, "#rule-form button[type=submit]").click()

        fill("by-viewer", VIEWER)
        wait.until(lambda b: "not saved" in b.find_element(By.ID, "rule-status").text)
        shown["refused"] = browser.find_element(By.ID, "rule-status").text
        shown["token_left"] = browser.find_element(By.ID, "rule-token").get_attribute("value")
        for field in ("rule-id", "rule-text", "rule-labels"):
            browser.find_element(By.ID, field).clear()
        fill("fence", OPERATOR)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, '#rule-rows tr[data-rule-id="fence"]'))
        shown["row"] = browser.find_element(By.CSS_SELECTOR, '#rule-rows tr[data-rule-id="fence"]').text
        shown["saved"] = browser.find_element(By.ID, "rule-status").text
        shown["token_after_save"] = browser.find_element(By.ID, "rule-token").get_attribute("value")
        browser.find_element(By.ID, "rule-token").send_keys(OPERATOR)
        browser.find_element(By.CSS_SELECTOR, '#rule-rows tr[data-rule-id="fence"] .rule-delete').click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#rule-rows td.empty"))
        shown["removed"] = browser.find_element(By.ID, "rule-status").text
        shown["errors"] = [  # the viewer's refusal is logged by the browser as a failed request: expected
            e
            for e in browser.get_log("browser")
            if e.get("level") == "SEVERE" and "status of 403" not in e.get("message", "")
        ]
    return shown


async def test_an_operator_adds_and_removes_a_rule_on_the_dashboard(tmp_path: Path, clip: Path) -> None:
    require_chromium()
    (tmp_path / "operator.token").write_text(OPERATOR)
    (tmp_path / "viewer.token").write_text(VIEWER)
    users = [
        {"name": "olga", "role": "operator", "token_file": str(tmp_path / "operator.token")},
        {"name": "vic", "role": "viewer", "token_file": str(tmp_path / "viewer.token")},
    ]
    admin = {"enabled": True, "host": "127.0.0.1", "port": 0, "users": users}
    async with running(make_config(tmp_path, clip, admin=admin)) as service:
        engine = service.policy
        assert engine is not None
        seen: list[tuple[str, ...]] = []

        async def listen(*_: Any) -> None:
            seen.append(tuple(r.rule_id for r in engine.fleet.mining.watch_rules))

        engine.subscribe(listen)
        base = f"http://127.0.0.1:{service.admin_port}/"
        shown = await asyncio.to_thread(edit_rules, base, tmp_path / "profile")
        final = engine.fleet.mining.watch_rules
    assert "not saved: HTTP 403" in shown["refused"]
    assert shown["token_left"] == "" and shown["token_after_save"] == "", "the page does not keep the token"
    assert "fence" in shown["row"] and "a person climbing the fence" in shown["row"] and "critical" in shown["row"]
    assert "person, cat" in shown["row"]
    assert "saved fence" in shown["saved"] and "removed fence" in shown["removed"]
    assert seen == [("fence",), ()]  # one version to add it, one to remove it; the viewer changed nothing
    assert final == ()
    assert shown["errors"] == []
