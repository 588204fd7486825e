"""Production settings: deploy checks, throttling, database limits, admin login."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connection
from django.test import Client

from apikeys_app.services import create_token

BASE_DIR = Path(settings.BASE_DIR)


def env_example() -> dict[str, str]:
    values = {}
    for line in (BASE_DIR / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value
    return values


def run_manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in __import__("os").environ.items()}
    for key in env_example():
        clean.pop(key, None)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_passes_with_the_documented_production_environment():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=env_example())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_warns_without_the_tls_settings():
    env = {**env_example(), "TASKQ_BEHIND_TLS_PROXY": "0"}
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode != 0
    assert "SECURE_SSL_REDIRECT" in result.stdout + result.stderr


def test_debug_is_off_by_default():
    assert settings.DEBUG is False


def test_a_bad_boolean_stops_start_up():
    result = run_manage("check", env={"DJANGO_DEBUG": "maybe"})
    assert result.returncode != 0
    assert "DJANGO_DEBUG must be a boolean" in result.stderr


def test_admin_url_is_configurable():
    result = run_manage(
        "shell",
        "-c",
        "from django.urls import reverse; print(reverse('admin:index'))",
        env={"TASKQ_ADMIN_URL": "ops-console"},
    )
    assert result.stdout.strip().endswith("/ops-console/"), result.stderr


@pytest.mark.django_db
def test_database_sessions_have_statement_and_idle_timeouts():
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "30s"
        cursor.execute("SHOW idle_in_transaction_session_timeout")
        assert cursor.fetchone()[0] == "1min"


@pytest.mark.django_db
def test_a_token_over_its_rate_gets_429_with_retry_after(settings):
    cache.clear()
    settings.TASKQ_THROTTLE_RATES = {**settings.TASKQ_THROTTLE_RATES, "worker": "3/min"}
    _, secret = create_token(name="busy", role="worker")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    codes = [client.get("/v1/namespace").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = client.get("/v1/namespace")
    assert r.status_code == 429
    assert 1 <= int(r["Retry-After"]) <= 60
    assert "throttled" in r.json()["detail"].lower()
    # Another token has its own budget.
    _, other = create_token(name="calm", role="worker")
    assert Client(HTTP_AUTHORIZATION=f"Bearer {other}").get("/v1/namespace").status_code == 200


@pytest.mark.django_db
def test_rates_are_per_role(settings):
    cache.clear()
    settings.TASKQ_THROTTLE_RATES = {"read-only": "1/min", "worker": "none", "operator": "none"}
    _, reader = create_token(name="r", role="read-only")
    _, worker = create_token(name="w", role="worker")
    reading = Client(HTTP_AUTHORIZATION=f"Bearer {reader}")
    working = Client(HTTP_AUTHORIZATION=f"Bearer {worker}")
    assert [reading.get("/v1/namespace").status_code for _ in range(2)] == [200, 429]
    assert {working.get("/v1/namespace").status_code for _ in range(20)} == {200}


@pytest.mark.django_db
def test_repeated_failed_admin_logins_lock_the_account_out():
    User.objects.create_superuser("boss", "b@example.com", "right-password-1")
    client = Client()
    codes = [
        client.post("/admin/login/", {"username": "boss", "password": "wrong"}).status_code
        for _ in range(settings.AXES_FAILURE_LIMIT)
    ]
    # The form again, with an error, until the limit; then locked out.
    assert codes == [200] * (settings.AXES_FAILURE_LIMIT - 1) + [429]
    r = client.post("/admin/login/", {"username": "boss", "password": "right-password-1"})
    assert r.status_code == 429
    assert "_auth_user_id" not in client.session


def client_address_settings(**env: str) -> dict[str, Any]:
    """What settings.py sets for finding a login's address, in the given environment."""
    # The test database's server, so that settings.py starts no embedded one.
    database = {"DATABASE_URL": os.environ["DATABASE_URL"]} if "DATABASE_URL" in os.environ else {}
    code = (
        "import json, taskq_project.settings as s; print(json.dumps({k: v for k, v in "
        "vars(s).items() if k.startswith(('AXES_IPWARE_', 'AXES_CLIENT_IP', 'IPWARE_'))}))"
    )
    result = run_manage("shell", "-c", code, env={**database, **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def use_settings(settings: Any, values: dict[str, Any]) -> None:
    for name, value in values.items():
        setattr(settings, name, value)


def failed_logins(client: Client, times: int) -> list[int]:
    return [
        client.post("/admin/login/", {"username": "boss", "password": "wrong"}).status_code
        for _ in range(times)
    ]


def logs_in(client: Client) -> bool:
    r = client.post("/admin/login/", {"username": "boss", "password": "right-password-1"})
    return r.status_code == 302 and "_auth_user_id" in client.session


# gunicorn listens on 127.0.0.1: the nearest proxy runs on the same machine.
PROXY = "127.0.0.1"
ADMIN = "203.0.113.9"
ATTACKER = "198.51.100.7"
OTHER_ATTACKER = "198.51.100.8"


def via_proxies(client: str, proxy_count: int, sent_by_client: str = "") -> Client:
    """A client behind `proxy_count` proxies, each appending the address it saw."""
    seen_by_proxies = [client] + ["10.0.0.2"] * (proxy_count - 1)
    chain = ([sent_by_client] if sent_by_client else []) + seen_by_proxies
    return Client(REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=", ".join(chain))


@pytest.mark.django_db
def test_behind_the_proxy_failures_from_another_address_do_not_lock_a_user_out(settings):
    use_settings(settings, client_address_settings(TASKQ_BEHIND_TLS_PROXY="1"))
    User.objects.create_superuser("boss", "b@example.com", "right-password-1")
    attacker = via_proxies(ATTACKER, 1)
    limit = settings.AXES_FAILURE_LIMIT
    assert failed_logins(attacker, limit) == [200] * (limit - 1) + [429]
    assert logs_in(via_proxies(ADMIN, 1))
    # The lockout still holds for the address that earned it.
    assert not logs_in(attacker)


@pytest.mark.django_db
@pytest.mark.parametrize("proxy_count", [1, 2])
def test_behind_the_proxy_a_forged_forwarded_for_neither_frames_nor_frees_anyone(
    settings, proxy_count
):
    use_settings(
        settings,
        client_address_settings(TASKQ_BEHIND_TLS_PROXY="1", TASKQ_PROXY_COUNT=str(proxy_count)),
    )
    User.objects.create_superuser("boss", "b@example.com", "right-password-1")
    limit = settings.AXES_FAILURE_LIMIT
    # Claiming to be the administrator locks only the attacker's own address ...
    framer = via_proxies(ATTACKER, proxy_count, sent_by_client=ADMIN)
    assert failed_logins(framer, limit) == [200] * (limit - 1) + [429]
    # ... even when the administrator's office proxy adds an entry of its own.
    assert logs_in(via_proxies(ADMIN, proxy_count, sent_by_client="10.1.2.3"))
    # Claiming a new address on each attempt does not escape the lockout.
    codes = [
        failed_logins(via_proxies(OTHER_ATTACKER, proxy_count, f"192.0.2.{n}"), 1)[0]
        for n in range(limit)
    ]
    assert codes == [200] * (limit - 1) + [429]


@pytest.mark.django_db
def test_without_the_proxy_a_forwarded_for_header_is_not_trusted(settings):
    use_settings(settings, client_address_settings(TASKQ_BEHIND_TLS_PROXY="0"))
    User.objects.create_superuser("boss", "b@example.com", "right-password-1")
    limit = settings.AXES_FAILURE_LIMIT
    codes = [
        Client(REMOTE_ADDR=ATTACKER, HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")
        .post("/admin/login/", {"username": "boss", "password": "wrong"})
        .status_code
        for n in range(limit)
    ]
    assert codes == [200] * (limit - 1) + [429]
    assert logs_in(Client(REMOTE_ADDR=ADMIN, HTTP_X_FORWARDED_FOR=ATTACKER))
