"""The sweeper end to end: a real `celery worker -B` reclaims a lease on its own."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from tests.utils import database_url_of_test_database

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

BASE_DIR = Path(settings.BASE_DIR)


@pytest.fixture
def celery_worker_with_beat(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": database_url_of_test_database(),
        "TASKQ_SWEEP_SECONDS": "1",
        # A queue of its own, so a `make run` on the same broker never takes
        # these messages, nor this worker its.
        "TASKQ_CELERY_QUEUE": f"taskq-test-{uuid.uuid4().hex[:8]}",
    }
    log = (tmp_path / "celery.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "taskq_project",
            "worker",
            "-B",
            "--schedule",
            str(tmp_path / "beat-schedule"),
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process, tmp_path / "celery.log"
    finally:
        # Always stop the worker and its beat, even when the test failed. At
        # once: this test is of the sweep, and a graceful stop takes the
        # worker seconds (tests/test_make_run.py holds the stack to those).
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it already exited; the test reports why from its log
        process.wait(timeout=10)
        log.close()
        # The filesystem broker keeps a binding per queue, and the messages
        # beat sent last: this queue's are nobody's once the worker is gone.
        if settings.CELERY_BROKER_URL.startswith("filesystem://"):
            queue = env["TASKQ_CELERY_QUEUE"]
            folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
            for path in [folder / f"{queue}.exchange", *folder.glob(f"*.{queue}.msg")]:
                path.unlink(missing_ok=True)


def test_worker_with_beat_fails_an_expired_lease_without_retries(api, celery_worker_with_beat):
    process, log_path = celery_worker_with_beat
    assert api.post("/v1/namespace", {"id": "ns"}, format="json").status_code == 201
    r = api.post(
        "/v1/task",
        {"id": "short", "namespace_id": "ns", "timeout": 1, "retries_left": 0},
        format="json",
    )
    assert r.status_code == 201
    captured = api.get("/v1/task/capture?namespace_id=ns").json()["list"]
    assert [t["id"] for t in captured] == ["short"]

    deadline = time.monotonic() + 30
    status = "in_progress"
    while time.monotonic() < deadline and status != "failed":
        assert process.poll() is None, log_path.read_text()
        time.sleep(0.2)
        status = api.get("/v1/task/short").json()["status"]
    assert status == "failed", log_path.read_text()
    task = api.get("/v1/task/short").json()
    assert task["retries_left"] == 0
    assert task["lease_expires_at"] is None
    assert api.get("/v1/task/capture?namespace_id=ns").json()["list"] == []
    health = api.get("/healthz").json()
    assert health["sweeper"]["ok"] is True
