"""Driving the admin's pages in the browser tests: logging in, reading the
messages, taking screenshots at a width, on a phone, in the dark theme."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By

from tests.browser.waits import wait_for

USERNAME = "operator"
PASSWORD = "a-long-and-unguessable-pass"
# The longest screenshot: a whole page up to this height.
MAX_SCREENSHOT_HEIGHT = 2400


def log_in(browser: Chrome, base_url: str) -> None:
    get_user_model().objects.create_superuser(
        username=USERNAME, email="operator@example.com", password=PASSWORD
    )
    browser.get(f"{base_url}/admin/")
    # Not logged in: the admin sends us to its login form.
    wait_for(browser, lambda b: b.find_element(By.ID, "id_username"), "no login form")
    assert "/admin/login/" in browser.current_url
    browser.find_element(By.ID, "id_username").send_keys(USERNAME)
    browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    wait_for(browser, lambda b: b.find_element(By.ID, "taskq-dashboard"), "no dashboard")


def console_errors(browser: Chrome) -> list[str]:
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and "favicon.ico" not in entry["message"]
    ]


def messages(browser: Chrome) -> list[str]:
    found = wait_for(
        browser,
        lambda b: b.find_elements(By.CSS_SELECTOR, "ul.messagelist li"),
        "no message after the action",
    )
    return [f"{item.get_attribute('class')}: {item.text}" for item in found]


def page_height(browser: Chrome) -> int:
    return int(browser.execute_script("return document.documentElement.scrollHeight;"))


def overflow(browser: Chrome) -> int:
    """How many pixels the page is wider than the window (0: it fits)."""
    return int(
        browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;"
        )
    )


def screenshot(browser: Chrome, path: Path) -> None:
    """The whole page (up to MAX_SCREENSHOT_HEIGHT), at the window's width."""
    size = browser.get_window_size()
    height = min(max(page_height(browser) + 150, size["height"]), MAX_SCREENSHOT_HEIGHT)
    browser.set_window_size(size["width"], height)
    try:
        assert browser.save_screenshot(str(path))
    finally:
        browser.set_window_size(size["width"], size["height"])


@contextmanager
def window_width(browser: Chrome, width: int) -> Iterator[None]:
    size = browser.get_window_size()
    browser.set_window_size(width, size["height"])
    try:
        yield
    finally:
        browser.set_window_size(size["width"], size["height"])


def _metrics(width: int, height: int) -> dict[str, Any]:
    return {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True}


@contextmanager
def phone(browser: Chrome, width: int = 400) -> Iterator[None]:
    """A phone's screen. Emulated: headless Chromium keeps its window at least
    500 px wide, whatever it is asked."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", _metrics(width, 860))
    try:
        yield
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def phone_screenshot(browser: Chrome, path: Path, width: int = 400) -> None:
    height = min(page_height(browser), MAX_SCREENSHOT_HEIGHT)
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", _metrics(width, height))
    try:
        assert browser.save_screenshot(str(path))
    finally:
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", _metrics(width, 860))


@contextmanager
def dark_theme(browser: Chrome) -> Iterator[None]:
    """The system asking for dark colours; the admin's theme is left on
    "auto", its default, which follows it."""
    features = [{"name": "prefers-color-scheme", "value": "dark"}]
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": features})
    try:
        yield
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
