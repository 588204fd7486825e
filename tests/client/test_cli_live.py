"""The `taskq` command against a real server (gunicorn, PostgreSQL).

Each test runs the installed command as a subprocess, as a shell script
would, and checks its output, its exit code and the database.
"""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.utils import timezone
from taskq_client import cli

from apikeys_app.services import create_token
from namespaces_app.models import Namespace
from tasks_app.models import Task
from tests.factories import make_namespace, make_task
from tests.test_web_server import free_port, serve

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

EXAMPLES = Path(__file__).parent / "examples"
TASKQ = [sys.executable, "-m", "taskq_client.cli"]


@pytest.fixture(scope="module")
def port(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    # The production body limit: a failed release carries up to 8 KiB of error.
    yield from serve(tmp_path_factory.mktemp("cli"), TASKQ_MAX_BODY_BYTES=str(2 * 1024 * 1024))


@pytest.fixture
def env(port: int) -> dict[str, str]:
    _, secret = create_token(name="cli")
    return {**os.environ, "TASKQ_URL": f"http://127.0.0.1:{port}", "TASKQ_TOKEN": secret}


class Taskq:
    """The `taskq` command with the test's server and token, run in this
    process (`cli.main`, as the console script calls it) to spare each call
    an interpreter's start; `taskq work` runs as its own process below."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        out, err = io.StringIO(), io.StringIO()
        given = ["--url", self.env["TASKQ_URL"], "--token", self.env["TASKQ_TOKEN"], *args]
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            mock.patch.object(sys, "stdin", io.StringIO(input or "")),
        ):
            try:
                code = cli.main(given)
            except SystemExit as exit_:  # argparse's usage errors
                code = int(exit_.code or 0)
        return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())

    def many(self, *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
        return [self(*args) for args in commands]


def test_the_console_script_runs_the_command(env: dict[str, str]) -> None:
    answer = subprocess.run(
        [*TASKQ, "--json", "ns", "ls"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (answer.returncode, json.loads(answer.stdout)) == (0, []), answer.stderr


@pytest.fixture
def taskq(env: dict[str, str]) -> Taskq:
    return Taskq(env)


def start_worker(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*TASKQ, "work", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(
    condition: Callable[[], bool], worker: subprocess.Popen[str], timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or worker.poll() is not None:
            worker.kill()
            _, stderr = worker.communicate()
            raise AssertionError(f"timed out; the worker said:\n{stderr}")
        time.sleep(0.05)


def stop(worker: subprocess.Popen[str], signum: int = signal.SIGTERM) -> tuple[int, str]:
    worker.send_signal(signum)
    _, stderr = worker.communicate(timeout=20)
    return worker.returncode, stderr


def statuses(namespace: str) -> dict[str, str]:
    return dict(Task.objects.filter(namespace_id=namespace).values_list("id", "status"))


def test_namespaces(taskq: Taskq) -> None:
    added = taskq("ns", "add", "Images", "default_timeout=60", "history=all", "--json")
    assert added.returncode == 0, added.stderr
    namespace = json.loads(added.stdout)
    assert namespace["id"] == "Images"
    assert (namespace["default_timeout"], namespace["history"]) == (60, "all")
    again, listed, unknown = taskq.many(
        ["ns", "add", "Images"], ["--json", "ns", "ls"], ["ns", "show", "Nope"]
    )
    assert again.returncode == 4
    assert json.loads(listed.stdout) == [{"id": "Images"}]
    assert (unknown.returncode, unknown.stdout) == (3, "")
    assert "no namespace 'Nope'" in unknown.stderr

    changed = taskq("ns", "set", "Images", "default_timeout=null", 'retry_backoff={"kind": "none"}')
    assert changed.returncode == 0, changed.stderr
    assert "default_timeout: -" in changed.stdout
    assert Namespace.objects.get(id="Images").default_timeout is None

    paused = taskq("ns", "pause", "Images", "--json")
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout)["paused"] is True
    assert Namespace.objects.get(id="Images").paused_at is not None
    resumed, missing = taskq.many(["ns", "resume", "Images", "--json"], ["ns", "pause", "Nope"])
    assert json.loads(resumed.stdout)["paused"] is False
    assert Namespace.objects.get(id="Images").paused_at is None
    assert missing.returncode == 3
    make_task("waiting", namespace_id="Images")
    stats, shown, unknown_stats = taskq.many(
        ["ns", "stats", "Images", "--json"], ["ns", "stats", "Images"], ["ns", "stats", "Nope"]
    )
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["counts"]["idle"] == 1
    assert "idle:" in shown.stdout and "last_5_minutes:" in shown.stdout, shown.stdout
    assert "0 captured, 0 done, 0 failed, 0 expired" in shown.stdout, shown.stdout
    assert unknown_stats.returncode == 3

    make_task("finished", namespace_id="Images", status="done")
    purged, shown_purge, bad_state = taskq.many(
        ["ns", "purge", "Images", "done", "failed_final", "--json"],
        ["ns", "purge", "Images", "idle", "--older-than", "3600"],
        ["ns", "purge", "Images", "finished"],
    )
    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout) == {
        "id": "Images",
        "deleted": 1,
        "by_state": {"done": 1, "failed_final": 0},
    }
    assert shown_purge.stdout.split() == ["deleted:", "0", "idle:", "0"]
    assert bad_state.returncode == 2 and "invalid choice" in bad_state.stderr

    assert taskq("ns", "rm", "Images").returncode == 0
    assert not Namespace.objects.exists()
    assert taskq("ns", "rm", "Images").returncode == 3


def test_tasks(taskq: Taskq, tmp_path: Path) -> None:
    make_namespace("Images")
    make_namespace("Other")
    lines = [{"id": f"bulk-{n}", "payload": n} for n in range(7)]
    lines[3]["namespace_id"] = "Other"
    source = tmp_path / "tasks.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    one, many = taskq.many(
        [
            "task", "add", "-n", "Images", "--id", "resize-1", "--priority", "2",
            "--payload", '{"src": "s3://b/1.png", "w": 640}', "--delay", "600", "--json",
        ],
        ["task", "add", "--from", str(source), "-n", "Images", "--chunk", "3"],
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["priority"] == 2
    assert Task.objects.get(id="resize-1").payload == {"src": "s3://b/1.png", "w": 640}
    assert (many.returncode, many.stdout) == (0, "registered 7 tasks\n"), many.stderr
    assert Task.objects.filter(namespace_id="Images").count() == 7
    assert Task.objects.get(id="bulk-3").namespace_id == "Other"

    taken, unknown_namespace, shown, unknown, listed, table = taskq.many(
        ["task", "add", "-n", "Images", "--id", "resize-1"],
        ["task", "add", "-n", "Nowhere", "--id", "x"],
        ["task", "show", "resize-1"],
        ["task", "show", "nope"],
        ["task", "ls", "Images", "--json", "--payload"],
        ["task", "ls", "Images", "--page-size", "2", "--limit", "3"],
    )
    assert taken.returncode == 4
    assert unknown_namespace.returncode == 1
    assert 'payload:       {"w":640,"src":"s3://b/1.png"}' in shown.stdout
    assert unknown.returncode == 3
    tasks = json.loads(listed.stdout)
    assert [t["id"] for t in tasks] == [f"bulk-{n}" for n in (0, 1, 2, 4, 5, 6)] + ["resize-1"]
    assert tasks[0]["payload"] == 0
    header, *rows = table.stdout.splitlines()
    assert header.split() == [
        "ID", "STATUS", "PRI", "ATTEMPT", "RETRIES", "TIMEOUT", "UPDATED", "AVAILABLE"
    ]  # fmt: skip
    assert [row.split()[:2] for row in rows] == [[f"bulk-{n}", "idle"] for n in (0, 1, 2)]

    assert taskq("task", "rm", "bulk-0", "nope").returncode == 3
    assert not Task.objects.filter(id="bulk-0").exists()


def test_capture_release_extend(taskq: Taskq) -> None:
    make_namespace("Infra")
    for n in range(3):
        make_task(f"backup-{n}", "Infra")

    captured = taskq("capture", "Infra", "--limit", "2", "--json")
    assert captured.returncode == 0, captured.stderr
    leases = json.loads(captured.stdout)
    assert [lease["id"] for lease in leases] == ["backup-0", "backup-1"]

    extended = taskq("extend", "--timeout", "900", input=captured.stdout)
    assert extended.returncode == 0, extended.stderr
    assert extended.stdout.splitlines()[1].startswith(f"backup-0:{leases[0]['lease_token']}")

    done = taskq("release", "done", "--result", '{"bytes": 1}', "--json", input=captured.stdout)
    assert done.returncode == 0, done.stderr
    assert [t["status"] for t in json.loads(done.stdout)["list"]] == ["done", "done"]
    assert Task.objects.get(id="backup-0").result == {"bytes": 1}

    again = taskq("release", "done", f"backup-0:{leases[0]['lease_token']}")
    assert again.returncode == 4
    assert "backup-0: not_in_progress" in again.stderr

    # The human form of a capture, ID:TOKEN, is what release takes.
    third = taskq("capture", "Infra").stdout.splitlines()[1].split()[0]
    failed = taskq("release", "failed", third, "--error", "disk full", "--retry-after", "60")
    assert failed.returncode == 0, failed.stderr
    attempts, unknown = taskq.many(["attempts", "backup-2", "--json"], ["attempts", "nope"])
    assert [(a["outcome"], a["error"]) for a in json.loads(attempts.stdout)] == [
        ("failed", "disk full")
    ]
    assert unknown.returncode == 3


def test_exit_codes_of_connection_failures(taskq: Taskq) -> None:
    down, refused = taskq.many(
        ["--url", f"http://127.0.0.1:{free_port()}", "--max-retries", "0", "ns", "ls"],
        ["--token", "wrong", "ns", "ls"],
    )
    assert down.returncode == 5
    assert "Cannot reach the service" in down.stderr
    assert refused.returncode == 1


def test_work_runs_the_example_script(env: dict[str, str], tmp_path: Path) -> None:
    """README's example: `taskq work files -- tests/client/examples/checksum.sh`."""
    make_namespace("files")
    report = tmp_path / "report.txt"
    report.write_text("hello\n")
    make_task(str(report), namespace_id="files")
    make_task("/nonexistent", namespace_id="files", retries_left=0)

    worker = start_worker(env, "files", "--", str(EXAMPLES / "checksum.sh"))
    wait_for(lambda: set(statuses("files").values()) == {"done", "failed"}, worker)
    assert stop(worker)[0] == 0

    done = Task.objects.get(id=str(report))
    assert done.status == "done"
    assert done.result == {
        "sha256": "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
        "bytes": 6,
    }
    failed = Task.objects.get(id="/nonexistent")
    assert failed.status == "failed"
    assert failed.last_error == "sha256sum: /nonexistent: No such file or directory"


SCRIPT = """
read -r task
case "$TASKQ_TASK_ID" in
  echo) printf '{"id": "%s", "attempt": %s, "payload": %s, "namespace": "%s", "stdin": %s}' \\
          "$TASKQ_TASK_ID" "$TASKQ_ATTEMPT" "$TASKQ_PAYLOAD" "$TASKQ_NAMESPACE" "$task" ;;
  text) echo "plain words" ;;
  silent) ;;
  fail) seq 1 2000 >&2; exit 3 ;;
  later) echo "busy, come back" >&2; exit 75 ;;
esac
"""


def test_work_maps_exit_codes_and_output(env: dict[str, str]) -> None:
    make_namespace("jobs")
    for task_id in ("echo", "text", "silent", "fail", "later"):
        retries = 1 if task_id == "later" else 0
        make_task(task_id, namespace_id="jobs", retries_left=retries, payload={"n": [1, "two"]})

    worker = start_worker(env, "jobs", "--concurrency", "3", "--", "sh", "-c", SCRIPT)
    wait_for(lambda: set(statuses("jobs").values()) == {"done", "failed"}, worker)
    assert stop(worker)[0] == 0

    tasks = {task.id: task for task in Task.objects.all()}
    echoed = tasks["echo"].result
    assert isinstance(echoed, dict)
    assert echoed["stdin"]["lease_token"]
    assert {k: echoed["stdin"][k] for k in ("id", "namespace_id", "attempt", "payload")} == {
        "id": "echo",
        "namespace_id": "jobs",
        "attempt": 1,
        "payload": {"n": [1, "two"]},
    }
    assert {k: v for k, v in echoed.items() if k != "stdin"} == {
        "id": "echo",
        "attempt": 1,
        "payload": {"n": [1, "two"]},
        "namespace": "jobs",
    }
    assert (tasks["text"].status, tasks["text"].result) == ("done", "plain words")
    assert (tasks["silent"].status, tasks["silent"].result) == ("done", None)
    assert tasks["fail"].status == "failed"
    # The tail: the last 4 KiB of what it wrote.
    error = tasks["fail"].last_error
    assert isinstance(error, str)
    assert error.endswith("1998\n1999\n2000")
    assert len(error.encode()) <= 4096
    assert not error.startswith("1\n")
    later = tasks["later"]
    assert (later.status, later.last_error) == ("failed", "busy, come back")
    # Held back --retry-after seconds (60 by default).
    assert later.available_at is not None
    assert later.available_at > timezone.now() + timedelta(seconds=50)


SLOW = """
touch "started.$TASKQ_TASK_ID"
echo $$ > "pid.$TASKQ_TASK_ID"
trap 'echo term > "term.$TASKQ_TASK_ID"; exit 143' TERM
sleep "$1" & wait
echo '{"finished": true}'
"""


def test_sigterm_lets_running_commands_finish(env: dict[str, str], tmp_path: Path) -> None:
    make_namespace("slow")
    for n in range(3):
        make_task(f"job-{n}", namespace_id="slow")

    worker = start_worker(
        env, "slow", "--concurrency", "2", "--", "sh", "-c", SLOW, "sh", "1", cwd=tmp_path
    )
    wait_for(lambda: len(list(tmp_path.glob("started.*"))) == 2, worker)
    code, stderr = stop(worker)
    assert code == 0, stderr

    # The two that ran finished; the third was never captured.
    assert statuses("slow") == {"job-0": "done", "job-1": "done", "job-2": "idle"}
    assert Task.objects.get(id="job-0").result == {"finished": True}
    assert Task.objects.get(id="job-2").attempt == 0


def test_after_the_grace_commands_are_terminated_and_handed_back(
    env: dict[str, str], tmp_path: Path
) -> None:
    make_namespace("slow")
    make_task("long", namespace_id="slow", retries_left=0)

    worker = start_worker(
        env, "slow", "--grace", "0.5", "--", "sh", "-c", SLOW, "sh", "30", cwd=tmp_path
    )
    wait_for(lambda: (tmp_path / "pid.long").exists(), worker)
    started = time.monotonic()
    code, _ = stop(worker, signal.SIGINT)
    assert code == 130
    assert time.monotonic() - started < 5

    # Handed back, not failed: no retry charged, capturable again at once.
    task = Task.objects.get(id="long")
    assert (task.status, task.attempt, task.retries_left) == ("idle", 1, 0)
    assert (tmp_path / "term.long").read_text() == "term\n"
    with pytest.raises(ProcessLookupError):
        os.kill(int((tmp_path / "pid.long").read_text()), 0)
