"""Overlapping registrations and imports, on their own connections, in both orders.

Two inserts of the same ids in different orders used to deadlock on the
primary key's index tuples; now each inserts in id order, so one wins and the
other is refused for the ids it found taken: never a deadlock, never a 500.
"""

import threading
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections
from rest_framework.test import APIClient

from apikeys_app.services import create_token
from tasks_app.models import Task
from tests.factories import make_namespace

pytestmark = pytest.mark.django_db(transaction=True)

IDS = [f"task-{i:04d}" for i in range(1000)]


def together(*targets):
    """Run the callables at once, each on its own connection; return their results."""
    barrier = threading.Barrier(len(targets))
    results: list[object] = [None] * len(targets)

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = targets[index]()
        except Exception as exc:
            results[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


@pytest.fixture
def client():
    make_namespace("ns")
    _, secret = create_token(name="loader")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return api


def register(client, ids):
    def post():
        response = client.post(
            "/v1/task", [{"id": i, "namespace_id": "ns"} for i in ids], format="json"
        )
        return response.status_code, response.json()

    return post


def registration_order() -> list[str]:
    """The ids in the order capture would hand them out (FIFO)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM tasks_app_task ORDER BY available_at, id")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.parametrize("attempt", range(3))
def test_two_registrations_of_the_same_ids_in_opposite_orders_never_deadlock(client, attempt):
    forward, backward = register(client, IDS), register(client, IDS[::-1])
    results = together(forward, backward)
    statuses = sorted(status for status, _ in results)  # type: ignore[misc]
    assert statuses == [201, 409], results
    assert Task.objects.count() == 1000
    # The winner's order is the FIFO order, whichever won.
    (winner,) = [body for status, body in results if status == 201]  # type: ignore[misc]
    assert registration_order() == [task["id"] for task in winner["list"]]


def write_file(tmp_path: Path, ids: list[str]) -> str:
    path = tmp_path / f"tasks-{ids[0]}.csv"
    path.write_text("id,namespace_id\n" + "".join(f"{i},ns\n" for i in ids))
    return str(path)


@pytest.mark.parametrize("file_reversed", [False, True])
def test_an_import_and_a_registration_of_the_same_ids_never_deadlock(
    client, tmp_path, file_reversed
):
    path = write_file(tmp_path, IDS[::-1] if file_reversed else IDS)

    def run_import():
        call_command("import_tasks", path, "--quiet")
        return "imported"

    api_ids = IDS if file_reversed else IDS[::-1]
    imported, registered = together(run_import, register(client, api_ids))
    if imported == "imported":
        assert registered[0] == 409, registered  # type: ignore[index]
    else:
        # The import lost: every row it had is reported as already registered.
        assert isinstance(imported, CommandError), imported
        assert "already registered" in str(imported) or imported.returncode == 1
        assert registered[0] == 201, registered  # type: ignore[index]
    assert Task.objects.count() == 1000


def test_registration_keeps_the_order_the_caller_gave(client):
    shuffled = IDS[500:] + IDS[:500]
    status, body = register(client, shuffled)()
    assert status == 201
    assert [task["id"] for task in body["list"]] == shuffled
    assert registration_order() == shuffled


def test_import_keeps_the_order_of_the_file(client, tmp_path):
    shuffled = IDS[::-1]
    call_command("import_tasks", write_file(tmp_path, shuffled), "--quiet")
    assert registration_order() == shuffled


def test_an_id_registered_while_an_import_checks_its_file_is_still_refused(client, tmp_path):
    """The import checks for taken ids, then inserts; an id another session
    commits in between is refused as already registered, not silently skipped
    while the import reports success."""
    import io
    import time

    import psycopg

    from tests.utils import database_url_of_test_database

    path = write_file(tmp_path, ["late", "free"])
    url = database_url_of_test_database()
    with psycopg.connect(url) as blocker, psycopg.connect(url, autocommit=True) as observer:
        blocker.execute(
            "INSERT INTO tasks_app_task (id, namespace_id, timeout, retries_left, status,"
            " available_at) VALUES ('late', 'ns', 60, 1, 'idle', now())"
        )
        outcome: list[object] = []
        errors = io.StringIO()

        def run_import() -> None:
            try:
                call_command("import_tasks", path, "--quiet", stderr=errors)
                outcome.append("imported")
            except CommandError as exc:
                outcome.append(exc)
            finally:
                connection.close()

        thread = threading.Thread(target=run_import)
        thread.start()
        deadline = time.monotonic() + 20
        # The import's insert waits on the uncommitted 'late'.
        while not observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database()"
        ).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "the import never reached the lock"
            time.sleep(0.02)
        blocker.commit()
        thread.join(30)
    (result,) = outcome
    assert isinstance(result, CommandError), result
    assert "1 invalid row(s): nothing was imported" in str(result)
    assert "line 2: id already registered" in errors.getvalue()
    assert not Task.objects.filter(pk="free").exists()
