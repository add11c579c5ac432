"""Debian's chromium, headless, driven by selenium through Debian's chromedriver, fully offline.

`require_chromium()` skips the calling test when chromium or chromedriver is missing (`make test`
installs them), and fails it on CI, where they must be there. Selenium is given both executables, so
it never runs Selenium Manager (which would try to download a browser or a driver).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,1500",
)


def require_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver; skips (fails on CI) when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if (browser is None or driver is None) and os.environ.get("CI") == "true":
        pytest.fail("chromium/chromedriver are not installed on CI: `make test` installs them (make chromium)")
    if browser is None or driver is None:
        pytest.skip("chromium is not installed: run `make chromium` or `apt-get install chromium chromium-driver`")
    return browser, driver


@contextlib.contextmanager
def headless_chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """A headless chromium with its own profile folder, quit on exit."""
    browser, driver_path = require_chromium()
    options = Options()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = Service(executable_path=driver_path, log_output=str(profile.parent / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()
