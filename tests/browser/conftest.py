"""A real headless Chromium for the admin's browser tests.

Chromium and its driver come from the distribution (Debian: `apt-get install
chromium chromium-driver`); nothing is downloaded at test time. Selenium is
given both paths explicitly, so Selenium Manager never goes looking.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connections
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MISSING_REASON = "Chromium not installed: apt-get install chromium chromium-driver"

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--window-size=1400,1000",
]


@pytest.fixture(autouse=True)
def _dashboard_refreshes_every_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests watch the dashboard follow changes: let them wait 1 s, not 5."""
    from taskq_project import admin_site

    monkeypatch.setattr(admin_site, "DASHBOARD_REFRESH_SECONDS", 1)


@pytest.fixture(scope="package", autouse=True)
def _live_server_closes_its_connections() -> Iterator[None]:
    """Database connections of the live server end with each request.

    Chromium keeps its HTTP connections alive, so the live server's request
    threads outlive a request; with CONN_MAX_AGE they would also hold their
    database sessions, and dropping the test database at the end would fail
    ("being accessed by other users").
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(connections["default"].settings_dict, "CONN_MAX_AGE", 0)
        yield


@pytest.fixture(scope="session")
def browser() -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        # The one reason to skip; any other failure to start is an error.
        pytest.skip(MISSING_REASON)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in CHROMIUM_ARGS:
        options.add_argument(argument)
    # Keep the page's console, so tests can check for JavaScript errors.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as patch:
        # Belt and braces: Selenium Manager must never try the network.
        patch.setenv("SE_OFFLINE", "true")
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def clean_browser(browser: webdriver.Chrome) -> Iterator[webdriver.Chrome]:
    """The session's browser, left logged out on a blank page after the test.

    The database is flushed after each test; a dashboard left open would keep
    polling the live server while that happens.
    """
    yield browser
    browser.delete_all_cookies()
    browser.get("about:blank")


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $TASKQ_SCREENSHOT_DIR when set, else the test's tmp_path."""
    configured = os.environ.get("TASKQ_SCREENSHOT_DIR")
    if not configured:
        return tmp_path
    directory = Path(configured)
    directory.mkdir(parents=True, exist_ok=True)
    return directory
