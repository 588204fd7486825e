"""No page of the service makes a browser contact another host (README: no CDN).

Two checks. The pages' HTML, and the stylesheets, scripts and images it
loads from our static files, name no other host (URLs in comments aside:
Django's admin scripts cite their sources). The vendored bundles (Swagger UI, ReDoc) are full
of URLs that are never fetched (XML namespaces, JSON Schema ids, links in
error messages), so for them a headless Chromium opens every page and
records each request it makes: all of them go to the service.
"""

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.contrib.staticfiles import finders
from django.db import connections
from django.test import Client, RequestFactory
from django.urls import reverse

from apikeys_app.services import create_token
from tests.factories import make_namespace, make_task

OWN_HOST = "testserver"  # the test client's

# An absolute URL, or a protocol-relative one where HTML or CSS would load it.
ABSOLUTE = re.compile(r"\bhttps?://([^/\s\"'<>\\)]+)", re.IGNORECASE)
PROTOCOL_RELATIVE = re.compile(
    r"""(?:=\s*["']?|url\(\s*["']?|@import\s+["'])//([^/\s"'<>\\)]+)""", re.IGNORECASE
)
# Inline SVG names its XML namespace with a URL that nothing ever fetches
# (also inside a data: URL in CSS, its quotes escaped).
XML_NAMESPACE = re.compile(r"""\sxmlns(?::\w+)?\s*=\s*\\?["'][^"'\\]*\\?["']""")
# Comments of scripts and stylesheets, where Django's admin scripts cite the
# pages they learnt from; a `//` right after a colon or quote is a URL.
COMMENT = re.compile(r"/\*.*?\*/|(?<![:\"'\\])//[^\n]*", re.DOTALL)
STATIC_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["'](/static/[^"'?#]+)""")
CSS_REFERENCE = re.compile(r"""(?:url\(\s*["']?|@import\s+["'])([^"')\s]+)""")
# Vendored by drf-spectacular-sidecar: covered by the browser test below.
VENDORED = "/static/drf_spectacular_sidecar/"


def other_hosts(text: str, own: str = OWN_HOST) -> set[str]:
    text = XML_NAMESPACE.sub("", text)
    hosts = {match.lower() for match in ABSOLUTE.findall(text) + PROTOCOL_RELATIVE.findall(text)}
    return {host for host in hosts if host.rsplit(":", 1)[0].strip("[]") != own}


def static_text(url: str) -> str:
    """The static file at `url`, without its comments."""
    found = finders.find(url.removeprefix("/static/"))
    assert found, f"{url} is referenced but not among the static files"
    return COMMENT.sub("", Path(str(found)).read_text(encoding="utf-8", errors="replace"))


def stylesheet_problems(url: str, seen: set[str]) -> dict[str, set[str]]:
    """Other hosts named by the stylesheet at `url` and those it imports."""
    if url in seen:
        return {}
    seen.add(url)
    text = static_text(url)
    problems = {url: hosts} if (hosts := other_hosts(text)) else {}
    for target in CSS_REFERENCE.findall(text):
        if target.startswith("data:"):
            continue
        resolved = urljoin(url, target)
        if resolved.startswith("/static/") and resolved.split("?")[0].endswith(".css"):
            problems |= stylesheet_problems(resolved.split("?")[0], seen)
    return problems


def admin_pages(user: User) -> list[str]:
    """Every model's list and add page in the admin, and one change page of each."""
    request = RequestFactory().get("/")
    request.user = user
    pages = [reverse("admin:index"), reverse("admin:taskq_dashboard_fragment")]
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        pages.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        if model_admin.has_add_permission(request):
            pages.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_add"))
        first = model._default_manager.order_by("pk").first()  # type: ignore[attr-defined]
        if first is not None:
            pages.append(
                reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[first.pk])
            )
    return pages


@pytest.mark.django_db
def test_no_page_names_another_host() -> None:
    make_namespace("ns")
    make_task("t1", "ns")
    create_token(name="pool")
    user = User.objects.create_superuser("root", "root@example.com", "pw")
    anonymous = Client()
    operator = Client()
    operator.force_login(user)
    pages: list[tuple[Client, str]] = [
        (anonymous, reverse("index")),
        (anonymous, reverse("admin:login")),
        (anonymous, "/v1/docs"),
        (anonymous, "/v1/redoc"),
        *((operator, page) for page in admin_pages(user)),
    ]
    problems: dict[str, set[str]] = {}
    assets: set[str] = set()
    for client, page in pages:
        r = client.get(page)
        assert r.status_code == 200, page
        html = r.content.decode()
        if hosts := other_hosts(html):
            problems[page] = hosts
        assets |= set(STATIC_REFERENCE.findall(html))
    seen: set[str] = set()
    for asset in sorted(assets):
        if asset.endswith(".css"):
            problems |= stylesheet_problems(asset, seen)
        elif asset.endswith((".js", ".svg")) and not asset.startswith(VENDORED):
            if hosts := other_hosts(static_text(asset)):
                problems[asset] = hosts
    # The references were found, so the files were looked at.
    assert {
        "/static/admin/js/core.js",
        "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css",
    } <= assets
    assert problems == {}


@pytest.mark.parametrize("page", ["/v1/docs", "/v1/redoc"])
def test_the_docs_pages_may_load_nothing_from_another_host(client: Client, page: str) -> None:
    html = client.get(page).content.decode()
    policies = re.findall(
        r"""<meta http-equiv="Content-Security-Policy" content="([^"]*)">""", html
    )
    assert len(policies) == 1
    sources = policies[0].split(";")[0].split()
    assert sources[0] == "default-src"
    # Only the page's own origin and in-page URLs: no host, scheme or wildcard.
    assert set(sources[1:]) <= {"'self'", "data:", "blob:", "'unsafe-inline'", "'unsafe-eval'"}
    assert html.index("Content-Security-Policy") < html.index("<script")


# --- In a browser -------------------------------------------------------------

# Not "localhost", as in production: Swagger UI's validator badge (an image
# from validator.swagger.io, in its standalone layout) leaves out a schema
# served from localhost.
PUBLIC_NAME = "taskq.test"


@pytest.fixture
def recording_browser(live_server: Any, settings: Any) -> Iterator[Any]:
    """Chromium that records every request, reaching the live server by a public name."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from tests.browser.conftest import CHROMEDRIVER, CHROMIUM, CHROMIUM_ARGS, MISSING_REASON

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(MISSING_REASON)
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, PUBLIC_NAME]
    port = urlsplit(live_server.url).port
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in CHROMIUM_ARGS:
        options.add_argument(argument)
    options.add_argument(f"--host-resolver-rules=MAP {PUBLIC_NAME} 127.0.0.1")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")
        # The live server's request threads must not keep database sessions
        # open past the test (see tests/browser/conftest.py).
        patch.setitem(connections["default"].settings_dict, "CONN_MAX_AGE", 0)
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        driver.set_page_load_timeout(30)
        driver.base_url = f"http://{PUBLIC_NAME}:{port}"  # type: ignore[attr-defined]
        try:
            yield driver
        finally:
            driver.quit()


def requests_made(driver: Any, quiet_seconds: float = 0.5, limit_seconds: float = 15) -> list[str]:
    """URLs of the requests the browser sent since the last call.

    Read until the page has sent nothing new for `quiet_seconds`: the docs
    pages' scripts draw their menus, and request their images, after load.
    A request the page's Content-Security-Policy blocked never left the
    browser, so it is not counted.
    """
    sent: dict[str, str] = {}
    blocked: set[str] = set()
    deadline = time.monotonic() + limit_seconds
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_seconds and time.monotonic() < deadline:
        entries = driver.get_log("performance")
        if entries:
            quiet_since = time.monotonic()
        for entry in entries:
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message["method"] == "Network.requestWillBeSent":
                sent[params["requestId"]] = params["request"]["url"]
            elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
                blocked.add(params["requestId"])
        time.sleep(0.1)
    return [url for request_id, url in sent.items() if request_id not in blocked]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_in_a_browser_no_page_requests_another_host(recording_browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = recording_browser
    base = driver.base_url
    make_namespace("ns")
    make_task("t1", "ns")
    user = User.objects.create_superuser("root", "root@example.com", "pw-for-tests-only")
    operator = Client()
    operator.force_login(user)

    # Each page, and the element that shows it has finished drawing.
    pages = [
        (reverse("index"), "h1"),
        (reverse("admin:login"), "#login-form"),
        ("/v1/docs", ".swagger-ui .info .title"),
        ("/v1/redoc", "[role=search], .menu-content"),
    ]
    logged_in = [
        (reverse("admin:index"), "#content"),
        (reverse("admin:tasks_app_task_changelist"), "#result_list"),
        (reverse("admin:tasks_app_task_change", args=["t1"]), "#content-main"),
    ]
    requested: list[str] = []

    def visit(path: str, ready: str) -> None:
        driver.get(base + path)
        WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, ready))
        requested.extend(requests_made(driver))

    for path, ready in pages:
        visit(path, ready)
    driver.add_cookie({"name": "sessionid", "value": operator.cookies["sessionid"].value})
    for path, ready in logged_in:
        visit(path, ready)

    fetched = [url for url in requested if urlsplit(url).scheme in ("http", "https")]
    elsewhere = [url for url in fetched if urlsplit(url).hostname != PUBLIC_NAME]
    assert elsewhere == []
    # The docs pages did fetch their schema, so their scripts ran.
    assert sum(urlsplit(url).path == "/v1/schema" for url in requested) == 2
