"""The operators' admin in a real browser: dashboard, filters, bulk requeue.

A headless Chromium drives the admin served by `live_server`, as an operator
would: log in through the form, read the dashboard, filter the task list by
clicking the sidebar, requeue the failed tasks, and watch the dashboard catch
up on its own. Runs outside a wrapping transaction, as the live server's
threads have their own database connections.
"""

from pathlib import Path

import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select

from tasks_app.models import Task
from tasks_app.services import capture_tasks, release_tasks
from tests.browser.pages import console_errors, log_in
from tests.browser.waits import wait_for
from tests.factories import make_namespace, make_tasks

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

NAMESPACE = "orders"
CATEGORIES = ("idle", "in_progress", "expired", "done", "failed_retry", "failed_for_good")


def seed(*, failed: int) -> None:
    make_namespace(NAMESPACE)
    # Done the way workers finish tasks, so the throughput chart has a point.
    done = make_tasks(NAMESPACE, 5, prefix="done-")
    captured = capture_tasks(namespace_id=NAMESPACE, limit=5)
    assert [row.id for row in captured] == [row.id for row in done]
    assert not release_tasks(task_ids=[row.id for row in done], status="done").errors
    make_tasks(NAMESPACE, 30, prefix="idle-")
    make_tasks(NAMESPACE, 4, prefix="leased-", status="in_progress")
    make_tasks(NAMESPACE, failed, prefix="failed-", status="failed", retries_left=0)


def click(element: WebElement, by: str, value: str) -> bool:
    element.find_element(by, value).click()
    return True


def dashboard_row(browser: Chrome) -> WebElement:
    return browser.find_element(
        By.CSS_SELECTOR, f'#taskq-dashboard tr[data-namespace="{NAMESPACE}"]'
    )


def shown_counts(browser: Chrome) -> dict[str, str]:
    row = dashboard_row(browser)
    return {
        category: row.find_element(By.CSS_SELECTOR, f'td[data-category="{category}"]').text.strip()
        for category in CATEGORIES
    }


def wait_for_counts(browser: Chrome, expected: dict[str, str], timeout: float = 10) -> None:
    seen: list[dict[str, str]] = []

    def matches(b: Chrome) -> bool:
        seen.append(shown_counts(b))
        return seen[-1] == expected

    try:
        wait_for(browser, matches, "dashboard counts", timeout)
    except TimeoutException as error:
        raise AssertionError(
            f"dashboard shows {seen[-1] if seen else 'no row'}, expected {expected}"
        ) from error


def result_ids(browser: Chrome) -> list[str]:
    return [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#result_list tbody th")]


def filter_by_state(browser: Chrome, label: str, value: str) -> None:
    """Click a state in the filter sidebar, as an operator would."""
    sidebar = browser.find_element(
        By.CSS_SELECTOR, '#changelist-filter details[data-filter-title="state"]'
    )
    sidebar.find_element(By.LINK_TEXT, label).click()
    wait_for(browser, lambda b: f"state={value}" in b.current_url, f"filter {value} not applied")


def select_everything(browser: Chrome, expected: int) -> None:
    """Tick the header checkbox; take "Select all N tasks" when the page offers it."""
    browser.find_element(By.ID, "action-toggle").click()
    on_page = len(browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr"))
    counter = browser.find_element(By.CSS_SELECTOR, ".actions .action-counter")
    wait_for(
        browser,
        lambda b: counter.text.startswith(f"{on_page} of {on_page} selected"),
        "selection counter",
    )
    questions = browser.find_elements(By.CSS_SELECTOR, ".actions .question")
    if questions and questions[0].is_displayed():
        link = questions[0].find_element(By.TAG_NAME, "a")
        assert link.text == f"Select all {expected} tasks"
        link.click()
        everything = browser.find_element(By.CSS_SELECTOR, ".actions .all")
        wait_for(browser, lambda b: everything.is_displayed(), "select-across not taken")
        assert everything.text == f"All {expected} selected"
    else:
        assert on_page == expected


def choose_action(browser: Chrome, value: str) -> None:
    Select(browser.find_element(By.NAME, "action")).select_by_value(value)


def run_action(browser: Chrome) -> None:
    browser.find_element(By.CSS_SELECTOR, '.actions button[name="index"]').click()


def confirm_requeue(browser: Chrome, *, count: int, reset_retries_to: int | None) -> str:
    summary = wait_for(
        browser,
        lambda b: b.find_element(By.ID, "taskq-confirm-count"),
        "no confirmation page for the requeue",
    ).text
    assert f"Requeue {count} task" in summary
    if reset_retries_to is not None:
        field = browser.find_element(By.ID, "id_reset_retries_to")
        field.clear()
        field.send_keys(str(reset_retries_to))
    browser.find_element(By.ID, "taskq-confirm").click()
    return summary


def success_messages(browser: Chrome) -> list[str]:
    found = wait_for(
        browser,
        lambda b: b.find_elements(By.CSS_SELECTOR, "ul.messagelist li"),
        "no message after the action",
    )
    return [f"{item.get_attribute('class')}: {item.text}" for item in found]


def test_operator_requeues_failed_tasks_and_the_dashboard_follows(
    clean_browser: Chrome, live_server, screenshot_dir: Path
) -> None:
    browser = clean_browser
    seed(failed=12)
    log_in(browser, live_server.url)

    # The dashboard: one row for the namespace, every state counted.
    wait_for_counts(
        browser,
        {
            "idle": "30",
            "in_progress": "4",
            "expired": "0",
            "done": "5",
            "failed_retry": "0",
            "failed_for_good": "12",
        },
    )
    badge = wait_for(
        browser,
        lambda b: dashboard_row(b).find_element(By.CSS_SELECTOR, ".taskq-badge").text,
        "no health badge",
    )
    assert badge == "lagging"
    assert browser.find_elements(By.CSS_SELECTOR, "#taskq-dashboard svg.taskq-chart")
    assert console_errors(browser) == []
    assert browser.save_screenshot(str(screenshot_dir / "dashboard.png"))

    # To the namespace's page, its tasks, then the failed ones through the sidebar.
    wait_for(browser, lambda b: click(dashboard_row(b), By.LINK_TEXT, NAMESPACE), "namespace link")
    wait_for(browser, lambda b: b.find_element(By.ID, "taskq-namespace"), "namespace page")
    browser.find_element(By.LINK_TEXT, "View its tasks").click()
    wait_for(
        browser,
        lambda b: b.find_elements(By.CSS_SELECTOR, "#result_list tbody tr"),
        "task list",
    )
    assert f"namespace__id__exact={NAMESPACE}" in browser.current_url
    filter_by_state(browser, "Failed for good", "failed_for_good")
    assert f"namespace__id__exact={NAMESPACE}" in browser.current_url
    ids = result_ids(browser)
    assert len(ids) == 12
    assert all(task_id.startswith("failed-") for task_id in ids)

    select_everything(browser, 12)
    choose_action(browser, "requeue")
    assert browser.save_screenshot(str(screenshot_dir / "task-list.png"))
    run_action(browser)
    confirm_requeue(browser, count=12, reset_retries_to=2)

    assert success_messages(browser) == ["success: Requeue: 12 changed."]
    # Back on the same filtered list, which is now empty.
    assert "state=failed_for_good" in browser.current_url
    assert result_ids(browser) == []
    requeued = Task.objects.filter(id__startswith="failed-")
    assert set(requeued.values_list("status", "retries_left")) == {("idle", 2)}

    # The dashboard has caught up.
    browser.find_element(By.CSS_SELECTOR, ".breadcrumbs a").click()
    wait_for_counts(
        browser,
        {
            "idle": "42",
            "in_progress": "4",
            "expired": "0",
            "done": "5",
            "failed_retry": "0",
            "failed_for_good": "0",
        },
    )
    assert console_errors(browser) == []


def test_requeue_of_every_matching_task_across_pages(clean_browser: Chrome, live_server) -> None:
    """More failed tasks than a page holds: "Select all N tasks", then requeue."""
    browser = clean_browser
    seed(failed=130)
    log_in(browser, live_server.url)

    browser.get(f"{live_server.url}/admin/tasks_app/task/")
    filter_by_state(browser, "Failed for good", "failed_for_good")
    assert len(result_ids(browser)) == 100  # one page of them

    select_everything(browser, 130)
    choose_action(browser, "requeue")
    run_action(browser)
    summary = confirm_requeue(browser, count=130, reset_retries_to=None)
    assert "every task matching the current filter" in summary

    assert success_messages(browser) == ["success: Requeue: 130 changed."]
    assert result_ids(browser) == []
    requeued = Task.objects.filter(id__startswith="failed-")
    assert set(requeued.values_list("status", "retries_left")) == {("idle", 0)}

    browser.find_element(By.CSS_SELECTOR, ".breadcrumbs a").click()
    wait_for_counts(
        browser,
        {
            "idle": "160",
            "in_progress": "4",
            "expired": "0",
            "done": "5",
            "failed_retry": "0",
            "failed_for_good": "0",
        },
    )


def test_dashboard_refreshes_without_reloading(clean_browser: Chrome, live_server) -> None:
    browser = clean_browser
    seed(failed=3)
    log_in(browser, live_server.url)
    wait_for_counts(
        browser,
        {
            "idle": "30",
            "in_progress": "4",
            "expired": "0",
            "done": "5",
            "failed_retry": "0",
            "failed_for_good": "3",
        },
    )
    # A mark on this very page: a reload would lose it.
    browser.execute_script("window.taskqSamePage = true;")

    make_tasks(NAMESPACE, 7, prefix="late-")
    make_tasks(NAMESPACE, 2, prefix="late-failed-", status="failed", retries_left=0)

    wait_for_counts(
        browser,
        {
            "idle": "37",
            "in_progress": "4",
            "expired": "0",
            "done": "5",
            "failed_retry": "0",
            "failed_for_good": "5",
        },
        timeout=15,
    )
    assert browser.execute_script("return window.taskqSamePage === true;")
    assert "taskq-stale" not in (
        browser.find_element(By.ID, "taskq-dashboard").get_attribute("class") or ""
    )
    assert console_errors(browser) == []
