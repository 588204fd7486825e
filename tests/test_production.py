"""Production settings: deploy checks, throttling, database limits, admin login."""

import subprocess
import sys
from pathlib import Path

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
