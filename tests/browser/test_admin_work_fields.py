"""Delays, payloads and attempts in the admin, in a real browser.

A headless Chromium reads the dashboard's Scheduled column (and watches it
follow new delayed tasks), follows its count to the scheduled tasks, and
opens a task's page: the payload pretty-printed and inert, the attempts
newest first. Runs outside a wrapping transaction, as the live server's
threads have their own database connections.
"""

import json
from pathlib import Path

import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from namespaces_app.services import Settings, register_namespace
from tasks_app.models import Task
from tasks_app.services import Lease, NewTask, Outcome, capture_tasks, register_tasks, release_tasks
from tests.browser.pages import console_errors, log_in
from tests.browser.waits import wait_for
from tests.factories import make_namespace, make_tasks

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

NAMESPACE = "orders"
# Were it run, the page would say so.
PAYLOAD = {
    "order": 1042,
    "lines": [{"sku": "A-1", "qty": 2}],
    "note": "</pre><script>window.taskqInjected = true;</script>",
}


def dashboard_row(browser: Chrome) -> WebElement:
    return browser.find_element(
        By.CSS_SELECTOR, f'#taskq-dashboard tr[data-namespace="{NAMESPACE}"]'
    )


def shown(browser: Chrome, category: str) -> str:
    cell = dashboard_row(browser).find_element(By.CSS_SELECTOR, f'td[data-category="{category}"]')
    return cell.text.strip()


def wait_for_cells(browser: Chrome, expected: dict[str, str], timeout: float = 10) -> None:
    seen: list[dict[str, str]] = []

    def matches(b: Chrome) -> bool:
        seen.append({category: shown(b, category) for category in expected})
        return seen[-1] == expected

    try:
        wait_for(browser, matches, "dashboard counts", timeout)
    except TimeoutException as error:
        raise AssertionError(
            f"dashboard shows {seen[-1] if seen else None}, not {expected}"
        ) from error


def click_the_scheduled_count(browser: Chrome) -> bool:
    dashboard_row(browser).find_element(By.CSS_SELECTOR, 'td[data-category="scheduled"] a').click()
    return True


def field(browser: Chrome, name: str) -> str:
    """What a task's page shows for one of its fields."""
    row = browser.find_element(By.CSS_SELECTOR, f".field-{name} .readonly")
    return " ".join(row.text.split())


def delayed(count: int, *, prefix: str) -> None:
    register_tasks(
        tasks=[
            NewTask(id=f"{prefix}{i:06d}", namespace_id=NAMESPACE, delay=3600) for i in range(count)
        ]
    )


def test_the_dashboard_counts_scheduled_tasks_and_links_to_them(
    clean_browser: Chrome, live_server, screenshot_dir: Path
) -> None:
    browser = clean_browser
    make_namespace(NAMESPACE)
    make_tasks(NAMESPACE, 6, prefix="now-")
    make_tasks(NAMESPACE, 2, prefix="leased-", status="in_progress")
    delayed(4, prefix="later-")
    log_in(browser, live_server.url)

    # As written (the admin's style shows headings in capitals).
    headers = [
        (th.get_attribute("textContent") or "").strip()
        for th in browser.find_elements(By.CSS_SELECTOR, ".taskq-table thead th")
    ]
    assert headers[2:5] == ["Idle", "Scheduled", "In progress"], headers
    wait_for_cells(browser, {"idle": "6", "scheduled": "4", "in_progress": "2"})
    assert console_errors(browser) == []
    assert browser.save_screenshot(str(screenshot_dir / "dashboard-scheduled.png"))

    # The page keeps up on its own.
    delayed(3, prefix="later-too-")
    wait_for_cells(browser, {"idle": "6", "scheduled": "7", "in_progress": "2"}, timeout=15)

    wait_for(browser, click_the_scheduled_count, "no link on the scheduled count")
    wait_for(browser, lambda b: "state=scheduled" in b.current_url, "not on the scheduled tasks")
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    ids = [row.find_element(By.CSS_SELECTOR, "th").text for row in rows]
    assert sorted(ids) == sorted(
        [f"later-{i:06d}" for i in range(4)] + [f"later-too-{i:06d}" for i in range(3)]
    )
    assert all(row.find_elements(By.CSS_SELECTOR, ".taskq-scheduled") for row in rows)
    assert console_errors(browser) == []


def test_the_task_page_shows_the_payload_and_the_attempts(
    clean_browser: Chrome, live_server, screenshot_dir: Path
) -> None:
    browser = clean_browser
    register_namespace(namespace_id=NAMESPACE, settings=Settings({"history": "all"}))
    register_tasks(tasks=[NewTask(id="order-1042", namespace_id=NAMESPACE, payload=PAYLOAD)])
    (first,) = capture_tasks(namespace_id=NAMESPACE, limit=1, holder="worker-a")
    failed = release_tasks(
        status="failed",
        leases=[Lease(first.id, first.lease_token)],
        outcomes={first.id: Outcome(error={"message": "card declined", "retryable": True})},
    )
    assert not failed.errors
    capture_tasks(namespace_id=NAMESPACE, limit=1, holder="worker-b")
    log_in(browser, live_server.url)

    browser.get(f"{live_server.url}/admin/tasks_app/task/?namespace__id__exact={NAMESPACE}")
    browser.find_element(By.LINK_TEXT, "order-1042").click()
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, ".taskq-attempts"), "no attempts")

    payload = browser.find_element(By.CSS_SELECTOR, ".field-payload_json pre.taskq-json")
    assert payload.text == json.dumps(PAYLOAD, indent=2, sort_keys=True)
    assert browser.execute_script("return window.taskqInjected === undefined;")
    error = browser.find_element(By.CSS_SELECTOR, ".field-last_error_json pre.taskq-json")
    assert json.loads(error.text) == {"message": "card declined", "retryable": True}

    rows = browser.find_elements(By.CSS_SELECTOR, ".taskq-attempts tbody tr")
    cells = [[td.text.strip() for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    assert [(c[0], c[2], c[3], c[5]) for c in cells] == [
        ("2", "—", "in progress", "worker-b"),
        ("1", cells[1][2], "failed", "worker-a"),
    ]
    assert cells[1][2] != "—"
    assert json.loads(cells[1][4]) == {"message": "card declined", "retryable": True}
    # The lease in progress: who holds it and until when, to the second.
    assert field(browser, "state") == "In progress"
    assert field(browser, "lease_holder") == "worker-b"
    second = Task.objects.get(pk="order-1042")
    assert second.lease_expires_at is not None
    expiry = second.lease_expires_at.strftime("%Y-%m-%d %H:%M:%S")
    assert field(browser, "lease_expiry") == f"{expiry} UTC"
    assert console_errors(browser) == []

    size = browser.get_window_size()
    height = browser.execute_script("return document.documentElement.scrollHeight;")
    browser.set_window_size(size["width"], min(max(height + 100, size["height"]), 2400))
    try:
        assert browser.save_screenshot(str(screenshot_dir / "task-page.png"))
    finally:
        browser.set_window_size(size["width"], size["height"])
