"""A namespace's page and the admin's layout, in a real browser.

A headless Chromium follows a namespace from the dashboard to its page,
pauses and resumes its captures and purges its finished tasks, each through
its confirmation page, and checks that the admin log says what was done.
Then it reads the task list at 1,280 and 1,400 px (ids on one line, no
column cut off, times on one line), and the dashboard and the namespace page
on a phone and in the dark theme. Runs outside a wrapping transaction, as
the live server's threads have their own database connections.
"""

from pathlib import Path

import pytest
from django.contrib.admin.models import LogEntry
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from namespaces_app.models import Namespace
from namespaces_app.services import Settings, register_namespace
from tasks_app.models import Task
from tasks_app.services import (
    Lease,
    NewTask,
    Outcome,
    capture_tasks,
    register_tasks,
    release_tasks,
)
from tests.browser.pages import (
    console_errors,
    dark_theme,
    log_in,
    messages,
    overflow,
    phone,
    phone_screenshot,
    screenshot,
    window_width,
)
from tests.browser.waits import wait_for
from tests.factories import age_task, make_tasks

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

NAMESPACE = "orders"


def seed() -> None:
    """A namespace at work: done and failed tasks (through real leases, so the
    chart has points), some idle, some leased, one lease expired."""
    register_namespace(namespace_id=NAMESPACE, settings=Settings({"history": "all"}))
    register_namespace(namespace_id="reports-nightly")
    register_tasks(
        tasks=[
            NewTask(id=f"build-/{i:04d}", namespace_id=NAMESPACE, payload={"n": i})
            for i in range(30)
        ]
    )
    leases = capture_tasks(namespace_id=NAMESPACE, limit=16, holder="worker-a")
    done, failed = leases[:12], leases[12:14]
    assert not release_tasks(
        status="done",
        leases=[Lease(row.id, row.lease_token) for row in done],
        outcomes={row.id: Outcome(result={"ok": True}) for row in done},
    ).errors
    assert not release_tasks(
        status="failed",
        leases=[Lease(row.id, row.lease_token) for row in failed],
        outcomes={row.id: Outcome(error={"message": "card declined"}) for row in failed},
    ).errors
    age_task(leases[15].id, 3600)  # its lease has run out
    make_tasks(NAMESPACE, 3, prefix="final-", status="failed", retries_left=0)
    make_tasks("reports-nightly", 4, prefix="report-", status="done")


def open_namespace_page(browser: Chrome) -> None:
    """From the dashboard, as an operator would: the namespace's name."""
    row = f'#taskq-dashboard tr[data-namespace="{NAMESPACE}"] th a'
    wait_for(browser, lambda b: b.find_element(By.CSS_SELECTOR, row), "no namespace row").click()
    wait_for(browser, lambda b: b.find_element(By.ID, "taskq-namespace"), "no namespace page")


def count(browser: Chrome, category: str) -> str:
    tile = browser.find_element(By.CSS_SELECTOR, f'.taskq-counts li[data-category="{category}"]')
    return tile.find_element(By.CLASS_NAME, "taskq-count").text.strip()


def captures_state(browser: Chrome) -> str:
    return browser.find_element(By.CSS_SELECTOR, "#taskq-captures .taskq-badge").text.strip()


def click_and_confirm(browser: Chrome, button_id: str) -> str:
    """Click a control on the namespace page; answer its confirmation page
    with yes; return what the confirmation said."""
    browser.find_element(By.ID, button_id).click()
    confirm = wait_for(browser, lambda b: b.find_element(By.ID, "taskq-confirm"), "no question")
    question = browser.find_element(By.ID, "content").text
    confirm.click()
    wait_for(browser, lambda b: b.find_element(By.ID, "taskq-namespace"), "not back on the page")
    return question


def log_messages() -> list[str]:
    return list(
        LogEntry.objects.filter(object_id=NAMESPACE)
        .order_by("action_time")
        .values_list("change_message", flat=True)
    )


def test_operator_pauses_and_resumes_from_the_namespace_page(
    clean_browser: Chrome, live_server, screenshot_dir: Path
) -> None:
    browser = clean_browser
    seed()
    log_in(browser, live_server.url)
    open_namespace_page(browser)
    assert captures_state(browser) == "running"
    assert count(browser, "idle") == "14"
    assert count(browser, "done") == "12"
    assert count(browser, "failed_for_good") == "3"
    assert browser.find_element(By.ID, "taskq-ended").text == "12 done, 2 failed, 0 expired"
    assert browser.find_elements(By.CSS_SELECTOR, "#taskq-namespace svg.taskq-chart")
    assert browser.find_elements(By.NAME, "default_timeout")  # the settings, below
    assert console_errors(browser) == []
    screenshot(browser, screenshot_dir / "namespace-page.png")

    question = click_and_confirm(browser, "taskq-pause")
    assert "Pause orders?" in question
    assert messages(browser) == [
        "success: Paused orders: captures lease nothing until it is resumed."
    ]
    assert captures_state(browser) == "paused"
    assert Namespace.objects.get(pk=NAMESPACE).paused_at is not None
    assert capture_tasks(namespace_id=NAMESPACE, limit=1) == []
    assert not browser.find_elements(By.ID, "taskq-pause")

    question = click_and_confirm(browser, "taskq-resume")
    assert "Resume orders?" in question
    assert messages(browser) == ["success: Resumed orders: captures lease again."]
    assert captures_state(browser) == "running"
    assert Namespace.objects.get(pk=NAMESPACE).paused_at is None
    assert len(capture_tasks(namespace_id=NAMESPACE, limit=1)) == 1

    (paused, resumed) = log_messages()
    assert paused == "Paused: captures lease nothing until resumed."
    assert resumed.startswith("Resumed: captures lease again (paused since ")
    # The home page's "Recent actions" lists both, linked to the page.
    browser.find_element(By.CSS_SELECTOR, ".breadcrumbs a").click()
    recent = wait_for(
        browser, lambda b: b.find_element(By.ID, "recent-actions-module"), "no recent actions"
    )
    links = recent.find_elements(By.CSS_SELECTOR, f'a[href$="/namespace/{NAMESPACE}/change/"]')
    assert len(links) == 2
    assert console_errors(browser) == []


def purge_choice(browser: Chrome, state: str) -> WebElement:
    return browser.find_element(By.CSS_SELECTOR, f'#id_states input[value="{state}"]')


def test_operator_purges_finished_tasks_from_the_namespace_page(
    clean_browser: Chrome, live_server, screenshot_dir: Path
) -> None:
    browser = clean_browser
    seed()
    log_in(browser, live_server.url)
    open_namespace_page(browser)

    browser.find_element(By.ID, "taskq-purge").click()
    wait_for(browser, lambda b: b.find_element(By.ID, "taskq-review"), "no purge form")
    purge_choice(browser, "done").click()
    purge_choice(browser, "failed_final").click()
    browser.find_element(By.ID, "taskq-review").click()
    summary = wait_for(
        browser, lambda b: b.find_element(By.ID, "taskq-purge-form"), "no confirmation"
    ).text
    assert "12 done" in summary
    assert "3 failed for good" in summary
    assert Task.objects.filter(namespace_id=NAMESPACE).count() == 33  # nothing yet
    assert console_errors(browser) == []
    screenshot(browser, screenshot_dir / "namespace-purge.png")

    browser.find_element(By.ID, "taskq-confirm").click()
    wait_for(browser, lambda b: b.find_element(By.ID, "taskq-namespace"), "not back on the page")
    assert messages(browser) == ["success: Purged 15 tasks: 12 done, 3 failed for good."]
    assert count(browser, "done") == "0"
    assert count(browser, "failed_for_good") == "0"
    assert count(browser, "idle") == "14"
    assert Task.objects.filter(namespace_id=NAMESPACE).count() == 18
    # The other namespace's done tasks stay.
    assert Task.objects.filter(namespace_id="reports-nightly").count() == 4
    assert log_messages() == [
        "Purged 15 tasks: 12 done, 3 failed for good (states done, failed_final)."
    ]


@pytest.mark.parametrize("width", [1280, 1400])
def test_the_task_list_fits_its_window(clean_browser: Chrome, live_server, width: int) -> None:
    """Ids on one line, no column cut off at the right, times on one line."""
    browser = clean_browser
    seed()
    log_in(browser, live_server.url)
    with window_width(browser, width):
        browser.get(f"{live_server.url}/admin/tasks_app/task/?namespace__id__exact={NAMESPACE}")
        table = wait_for(browser, lambda b: b.find_element(By.ID, "result_list"), "no list")
        assert overflow(browser) == 0
        # Wider than its box, the table would scroll, its last column cut off.
        widths = browser.execute_script(
            "const t = document.getElementById('result_list');"
            " return [t.scrollWidth, t.parentElement.clientWidth];"
        )
        assert widths[0] <= widths[1]
        wrapped = browser.execute_script(
            "return [...document.querySelectorAll('#result_list tbody th a, #result_list time,"
            " #result_list .taskq-state')].filter(e => e.getClientRects().length > 1)"
            ".map(e => e.textContent);"
        )
        assert wrapped == []
        headers = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
        assert headers[-1] == "AVAILABLE AT / LEASE END"
        assert not browser.find_elements(By.ID, "nav-sidebar")


def test_the_admin_reads_on_a_phone_and_in_the_dark(
    clean_browser: Chrome, live_server, screenshot_dir: Path
) -> None:
    browser = clean_browser
    seed()
    log_in(browser, live_server.url)
    with phone(browser):
        for path, name in [
            ("/admin/", "dashboard-phone.png"),
            (f"/admin/namespaces_app/namespace/{NAMESPACE}/change/", "namespace-page-phone.png"),
        ]:
            browser.get(live_server.url + path)
            wait_for(browser, lambda b: b.find_element(By.ID, "content"), "no page")
            # Wide tables scroll in their own boxes; the page itself does not.
            assert overflow(browser) == 0, path
            phone_screenshot(browser, screenshot_dir / name)
        # The dashboard's namespace column stays in view as its table scrolls.
        browser.get(f"{live_server.url}/admin/")
        first_column = wait_for(
            browser,
            lambda b: b.find_element(By.CSS_SELECTOR, ".taskq-table tbody th"),
            "no dashboard row",
        )
        assert first_column.value_of_css_property("position") == "sticky"

    with dark_theme(browser):
        browser.get(f"{live_server.url}/admin/")
        wait_for(browser, lambda b: b.find_element(By.ID, "taskq-dashboard"), "no dashboard")
        colours = browser.execute_script(
            """
            const style = (selector, property) =>
                getComputedStyle(document.querySelector(selector))[property];
            return {
                page: style('body', 'backgroundColor'),
                axis: style('.taskq-chart .axis', 'fill'),
                badge: style('.taskq-badge', 'color'),
                badgeBackground: style('.taskq-badge', 'backgroundColor'),
            };
            """
        )
        # Django's dark background, and light text on dark badges and chart.
        assert colours["page"] == "rgb(18, 18, 18)"
        assert colours["axis"] == "rgb(208, 208, 208)"
        assert colours["badge"] != colours["badgeBackground"]
        assert luminance(colours["badge"]) > luminance(colours["badgeBackground"])
        screenshot(browser, screenshot_dir / "dashboard-dark.png")
        browser.get(f"{live_server.url}/admin/namespaces_app/namespace/{NAMESPACE}/change/")
        wait_for(browser, lambda b: b.find_element(By.ID, "taskq-namespace"), "no page")
        screenshot(browser, screenshot_dir / "namespace-page-dark.png")
    assert console_errors(browser) == []


def luminance(rgb: str) -> float:
    red, green, blue = (int(part) for part in rgb[rgb.index("(") + 1 : -1].split(",")[:3])
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue
