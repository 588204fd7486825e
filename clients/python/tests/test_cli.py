"""The `taskq` command without a server: argument parsing, input and output
formats, exit codes (over httpx.MockTransport), and `taskq work`'s handler
running real commands (`sh -c`)."""

import io
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from taskq_client import _cli_command as command
from taskq_client import cli
from taskq_client._cli_format import Progress, cell, fields, format_time, table
from taskq_client.client import Client
from taskq_client.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    Forbidden,
    NotFound,
    StaleLease,
    TaskqError,
    Unavailable,
)
from taskq_client.models import Lease
from taskq_client.worker import Retry

TASK = {
    "id": "t1",
    "namespace_id": "ns",
    "timeout": 60,
    "retries_left": 3,
    "updated_at": 1767225600,
    "status": "idle",
    "lease_expires_at": None,
    "attempt": 0,
    "priority": 0,
    "available_at": 1767225600,
}


def lease(
    task_id: str = "t1",
    payload: Any = None,
    attempt: int = 1,
    token: str = "6f1c0000-0000-0000-0000-000000000000",
) -> Lease:
    raw = {
        **TASK,
        "id": task_id,
        "status": "in_progress",
        "attempt": attempt,
        "payload": payload,
        "lease_token": token,
    }
    return Lease.from_json(raw)


# Parsing


def parse(*argv: str):
    return cli.parse(cli.build_parser(), list(argv))


def test_json_and_connection_options_go_before_or_after_the_command() -> None:
    before = parse("--json", "--url", "http://x", "ns", "ls")
    after = parse("ns", "ls", "--json", "--url", "http://x")
    assert (before.json, before.url) == (after.json, after.url) == (True, "http://x")
    assert parse("ns", "ls").json is False
    assert parse("ns", "ls").url is None


def test_work_takes_everything_after_the_double_dash_as_the_command() -> None:
    args = parse("work", "ns", "--concurrency", "2", "--", "sh", "-c", "x", "--json", "--")
    assert args.concurrency == 2
    assert args.json is False
    assert args.argv == ["sh", "-c", "x", "--json", "--"]
    assert parse("--url", "work", "work", "ns", "--", "cmd").argv == ["cmd"]
    assert parse("work", "ns", "cmd").argv == ["cmd"]
    # Elsewhere `--` is argparse's own: an id that looks like an option.
    assert parse("task", "show", "--", "-x").id == "-x"


def test_work_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--url", "http://x", "--token", "t", "work", "ns"])
    assert exited.value.code == 2
    assert "needs a command" in capsys.readouterr().err


def test_settings_are_json_when_they_parse_and_text_otherwise() -> None:
    args = parse("ns", "add", "Images", "default_timeout=60", "history=all", "x=null", "b={}")
    assert args.settings == [("default_timeout", 60), ("history", "all"), ("x", None), ("b", {})]
    assert parse("ns", "set", "Images", "msg=a=b").settings == [("msg", "a=b")]


@pytest.mark.parametrize(
    "argv",
    [
        ["ns", "add", "Images", "no-equals-sign"],
        ["ns", "set", "Images"],
        ["task", "add", "--payload", "{oops"],
        ["task", "add", "--delay", "5", "--available-at", "5"],
        ["task", "add", "--timeout", "0"],
        ["task", "add", "--from", "f", "--chunk", "1001"],
        ["release", "done", "no-token"],
        ["release", "finished", "a:b"],
        ["capture", "ns", "--limit", "many"],
        ["capture", "ns", "--wait", "21"],
        ["work", "ns", "--wait", "60", "--", "true"],
        ["task", "ls", "ns", "--status", "lost"],
        ["bogus"],
        [],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "usage: taskq" in capsys.readouterr().err


def all_parsers() -> list[tuple[str, Any]]:
    found = []

    def walk(parser: Any, name: str) -> None:
        found.append((name, parser))
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for sub_name, sub in action.choices.items():
                    walk(sub, f"{name} {sub_name}")

    walk(cli.build_parser(), "taskq")
    return found


def test_every_command_has_help_with_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    names = []
    for name, parser in all_parsers():
        names.append(name)
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(["--help"])
        assert exited.value.code == 0
        text = capsys.readouterr().out
        assert "exit codes:" in text, name
        assert "130  interrupted" in text
    assert set(names) >= {
        "taskq ns ls",
        "taskq ns add",
        "taskq ns show",
        "taskq ns set",
        "taskq ns rm",
        "taskq task add",
        "taskq task show",
        "taskq task ls",
        "taskq task rm",
        "taskq capture",
        "taskq release",
        "taskq extend",
        "taskq attempts",
        "taskq work",
    }


def test_lease_pairs_split_at_the_last_colon() -> None:
    parsed = cli.lease_of("a:b:6f1c")
    assert (parsed.id, parsed.lease_token) == ("a:b", "6f1c")


def test_leases_from_captures_json_json_lines_or_pairs() -> None:
    answer = [{**TASK, "lease_token": "k1"}, {**TASK, "id": "t2", "lease_token": "k2"}]
    expected = [("t1", "k1"), ("t2", "k2")]

    def pairs(text: str) -> list[tuple[str, str]]:
        return [(lease.id, lease.lease_token) for lease in cli.leases_from_text(text)]

    assert pairs(json.dumps(answer)) == expected
    assert pairs(json.dumps({"list": answer})) == expected
    assert pairs("\n".join(json.dumps(item) for item in answer) + "\n") == expected
    assert pairs("t1:k1\n\nt2:k2\n") == expected
    assert pairs(json.dumps(answer[0])) == expected[:1]
    assert pairs("  \n") == []
    with pytest.raises(cli.UsageError, match="line 2"):
        cli.leases_from_text("t1:k1\nnot a lease\n")
    with pytest.raises(cli.UsageError, match="not a lease"):
        cli.leases_from_text('[{"id": "t1"}]')


def test_tasks_from_json_lines_or_an_array() -> None:
    lines = '{"id": "a", "payload": {"n": 1}}\n\n{"id": "b", "namespace_id": "other", "delay": 5}\n'
    tasks = cli.new_tasks_from_text(lines, "ns")
    assert [task.to_json() for task in tasks] == [
        {"id": "a", "namespace_id": "ns", "payload": {"n": 1}},
        {"id": "b", "namespace_id": "other", "delay": 5},
    ]
    array = json.dumps([{"id": "a", "namespace_id": "x", "priority": 1}])
    assert cli.new_tasks_from_text(array, None)[0].to_json() == {
        "id": "a",
        "namespace_id": "x",
        "priority": 1,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"id": "a"}\n', "line 1: no namespace_id"),
        ('{"id": "a", "namespace_id": "n", "retry_left": 1}\n', "line 1: unknown field"),
        ('{"id": "a", "namespace_id": "n"}\n{oops\n', "line 2: not JSON"),
        ('[{"id": "a", "namespace_id": "n"}, 7]', "item 2: a task is a JSON object"),
        ('{"namespace_id": "n"}\n', "line 1: no id"),
    ],
)
def test_tasks_from_bad_input(text: str, message: str) -> None:
    with pytest.raises(cli.UsageError, match=message):
        cli.new_tasks_from_text(text, None)


def test_chunks_bound_both_the_count_and_the_bytes() -> None:
    tasks = cli.new_tasks_from_text(
        "".join(json.dumps({"id": f"t{n}", "payload": "x" * 100}) + "\n" for n in range(10)), "ns"
    )
    assert [len(c) for c in cli.chunked(tasks, 4, 10**6)] == [4, 4, 2]
    assert [len(c) for c in cli.chunked(tasks, 100, 400)] == [2, 2, 2, 2, 2]
    # A task larger than the bound still goes, alone.
    assert [len(c) for c in cli.chunked(tasks, 100, 10)] == [1] * 10


# Output


def test_tables_pad_every_column_but_the_last() -> None:
    assert table(["ID", "STATUS"], [["a", "idle"], ["longer", None]]) == (
        "ID      STATUS\na       idle\nlonger  -"
    )


def test_cells_are_json_cut_and_single_line() -> None:
    assert cell({"a": [1, 2]}) == '{"a":[1,2]}'
    assert cell("two\nlines\tand tab") == "two lines and tab"
    assert cell("x" * 100, width=10) == "x" * 9 + "…"
    assert cell(True) == "true"
    assert fields([("id", "a"), ("payload", {"w": 1})]) == 'id:      a\npayload: {"w":1}'


def test_times_are_utc() -> None:
    assert format_time(1767225600) == "2026-01-01 00:00:00Z"
    assert format_time(None) == "-"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_only_on_a_terminal() -> None:
    piped = io.StringIO()
    progress = Progress(piped)
    progress.update("registered 1/2", force=True)
    progress.close("registered 2/2")
    assert piped.getvalue() == ""

    terminal = Terminal()
    progress = Progress(terminal, interval=3600)
    progress.update("registered 1/3")
    progress.update("registered 2/3")  # throttled
    progress.close("registered 3/3")
    assert terminal.getvalue() == "\rregistered 1/3\x1b[K\rregistered 3/3\x1b[K\n"


# Commands over a mocked server


Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Callable[[Handler], list[httpx.Request]]:
    """Answer the command's requests with `handler`; the requests as sent."""

    def install(handler: Handler) -> list[httpx.Request]:
        sent: list[httpx.Request] = []

        def record(request: httpx.Request) -> httpx.Response:
            sent.append(request)
            return handler(request)

        def client(*args: Any, **kwargs: Any) -> Client:
            made = Client(*args, transport=httpx.MockTransport(record), **kwargs)
            made._sleep = lambda seconds: None
            return made

        monkeypatch.setattr(cli, "Client", client)
        monkeypatch.setenv("TASKQ_URL", "http://taskq.test")
        monkeypatch.setenv("TASKQ_TOKEN", "secret")
        return sent

    return install


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_show_of_an_unknown_id_exits_3(serve, capsys) -> None:
    serve(lambda request: httpx.Response(204))
    assert run(capsys, "task", "show", "nope") == (3, "", "taskq: no task 'nope'\n")
    assert run(capsys, "ns", "show", "nope")[0] == 3
    assert run(capsys, "attempts", "nope")[0] == 3


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (400, {"detail": "Unknown namespace.", "code": "invalid"}, 1),
        (401, {"detail": "Invalid token."}, 1),
        (403, {"detail": "Not allowed."}, 1),
        (404, {"detail": "No such namespace."}, 3),
        (409, {"detail": "Already registered.", "code": "task_exists"}, 4),
        (503, {"detail": "Database unavailable.", "code": "database_unavailable"}, 5),
    ],
)
def test_server_errors_map_to_exit_codes(serve, capsys, status, body, code) -> None:
    serve(lambda request: httpx.Response(status, json=body))
    result = run(capsys, "--max-retries", "1", "task", "add", "-n", "ns", "--id", "t1")
    assert result == (code, "", f"taskq: {status}: {body['detail']}\n")


def test_exit_codes_of_each_error_class() -> None:
    assert cli.exit_code(ConfigError("x")) == 2
    assert cli.exit_code(NotFound("x")) == 3
    assert cli.exit_code(Conflict("x")) == 4
    assert cli.exit_code(StaleLease("x")) == 4
    assert cli.exit_code(Unavailable("x")) == 5
    assert cli.exit_code(BadRequest("x")) == 1
    assert cli.exit_code(Forbidden("x")) == 1
    assert cli.exit_code(TaskqError("x")) == 1


def test_no_url_or_token_is_a_usage_error(monkeypatch, capsys) -> None:
    monkeypatch.delenv("TASKQ_URL", raising=False)
    monkeypatch.setenv("TASKQ_TOKEN", "t")
    code, _, err = run(capsys, "ns", "ls")
    assert code == 2
    assert "TASKQ_URL" in err


def test_json_output_is_the_servers_json(serve, capsys) -> None:
    raw = {**TASK, "payload": {"w": 640}, "result": None, "last_error": None, "new_field": 1}
    serve(lambda request: httpx.Response(200, json=raw))
    code, out, _ = run(capsys, "task", "show", "t1", "--json")
    assert (code, json.loads(out)) == (0, raw)
    code, out, _ = run(capsys, "task", "show", "t1")
    assert out.splitlines()[0] == "id:            t1"
    assert 'payload:       {"w":640}' in out


def test_task_ls_streams_every_page(serve, capsys) -> None:
    def pages(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("cursor"):
            return httpx.Response(200, json={"list": [{**TASK, "id": "t2"}], "next": None})
        following = "http://elsewhere/v1/task?namespace_id=ns&cursor=abc"
        return httpx.Response(200, json={"list": [TASK], "next": following})

    sent = serve(pages)
    code, out, _ = run(capsys, "task", "ls", "ns", "--json", "--status", "idle", "--payload")
    assert code == 0
    assert [t["id"] for t in json.loads(out)] == ["t1", "t2"]
    assert sent[0].url.params.get_list("status") == ["idle"]
    assert sent[0].url.params["fields"] == "payload"
    assert json.loads(run(capsys, "task", "ls", "ns", "--json", "--limit", "1")[1]) == [TASK]
    code, out, _ = run(capsys, "task", "ls", "ns")
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["ID", "STATUS"],
        ["t1", "idle"],
        ["t2", "idle"],
    ]
    serve(lambda request: httpx.Response(200, json={"list": [], "next": None}))
    assert run(capsys, "task", "ls", "ns", "--json") == (0, "[]\n", "")


def test_task_add_from_a_file_in_chunks(serve, capsys, tmp_path) -> None:
    def register(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        return httpx.Response(201, json={"list": [{**TASK, **item} for item in body]})

    sent = serve(register)
    source = tmp_path / "tasks.jsonl"
    source.write_text("".join(json.dumps({"id": f"t{n}"}) + "\n" for n in range(5)))
    code, out, _ = run(capsys, "task", "add", "--from", str(source), "-n", "ns", "--chunk", "2")
    assert (code, out) == (0, "registered 5 tasks\n")
    assert [len(json.loads(r.content)) for r in sent] == [2, 2, 1]
    assert run(capsys, "task", "add", "--from", str(tmp_path / "none"))[0] == 2
    assert run(capsys, "task", "add", "--from", str(source), "--id", "x")[0] == 2


def test_task_add_from_a_file_says_what_went_in_before_an_error(serve, capsys, tmp_path) -> None:
    def register(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body[0]["id"] == "t2":
            return httpx.Response(409, json={"detail": "t3 is registered already."})
        return httpx.Response(201, json={"list": [{**TASK, **item} for item in body]})

    serve(register)
    source = tmp_path / "tasks.json"
    source.write_text(json.dumps([{"id": f"t{n}"} for n in range(5)]))
    code, out, err = run(capsys, "task", "add", "--from", str(source), "-n", "ns", "--chunk", "2")
    assert (code, out) == (4, "")
    assert "registered 2 of 5 tasks; the chunk from 't2' to 't3' was refused" in err


def test_capture_prints_id_token_pairs(serve, capsys) -> None:
    leased = [{**TASK, "attempt": 1, "payload": {"w": 1}, "lease_token": "k1"}]
    serve(lambda request: httpx.Response(200, json={"list": leased}))
    code, out, _ = run(capsys, "capture", "ns")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["LEASE", "ATTEMPT", "EXPIRES", "PAYLOAD"]
    assert row.split()[0] == "t1:k1"
    assert json.loads(run(capsys, "capture", "ns", "--json")[1]) == leased


def test_release_reports_refused_leases_and_exits_4(serve, capsys, monkeypatch) -> None:
    answer = {
        "list": [{**TASK, "status": "done"}],
        "errors": [{"id": "t2", "code": "stale_lease", "detail": "Captured again."}],
    }
    sent = serve(lambda request: httpx.Response(200, json=answer))
    monkeypatch.setattr(sys, "stdin", io.StringIO("t1:k1\nt2:k2\n"))
    code, out, err = run(capsys, "release", "done", "--result", "ok", "--json")
    assert code == 4
    assert json.loads(out) == answer
    assert err == "taskq: t2: stale_lease: Captured again.\n"
    assert json.loads(sent[0].content) == {
        "status": "done",
        "leases": [{"id": "t1", "lease_token": "k1"}, {"id": "t2", "lease_token": "k2"}],
        "result": "ok",
    }
    assert run(capsys, "release", "done", "t1:k1", "--error", "x")[0] == 2


def test_release_of_unknown_tasks_only_exits_3(serve, capsys) -> None:
    answer = {"list": [], "errors": [{"id": "t9", "code": "not_found", "detail": "No such."}]}
    serve(lambda request: httpx.Response(200, json=answer))
    assert run(capsys, "extend", "t9:k9")[0] == 3


def test_failed_release_with_an_error_and_a_wait(serve, capsys) -> None:
    sent = serve(lambda request: httpx.Response(200, json={"list": [], "errors": []}))
    assert run(capsys, "release", "failed", "t1:k1", "--error", '{"type": "Timeout"}')[0] == 0
    assert run(capsys, "release", "idle", "t1:k1", "--retry-after", "30")[0] == 0
    assert json.loads(sent[0].content)["error"] == {"type": "Timeout"}
    assert json.loads(sent[1].content)["retry_after"] == 30


def test_connection_failure_exits_5(serve, capsys) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    serve(refuse)
    code, _, err = run(capsys, "--max-retries", "2", "ns", "ls")
    assert code == 5
    assert "Cannot reach the service" in err


def test_ctrl_c_exits_130(serve, capsys) -> None:
    def interrupt(request: httpx.Request) -> httpx.Response:
        raise KeyboardInterrupt

    serve(interrupt)
    assert run(capsys, "ns", "ls")[0] == 130


def test_work_refuses_a_command_it_cannot_run(serve, capsys) -> None:
    serve(lambda request: httpx.Response(200, json={"list": []}))
    code, _, err = run(capsys, "work", "ns", "--", "/nonexistent/script.sh")
    assert code == 2
    assert "cannot run '/nonexistent/script.sh'" in err


# The command runner


def run_sh(script: str, task: Lease | None = None, **env: str) -> command.Finished:
    runner = command.CommandRunner(["sh", "-c", script], env={"PATH": os.environ["PATH"], **env})
    return runner.run(task or lease())


def test_the_task_is_on_stdin_and_in_the_environment() -> None:
    task = lease("resize-42", payload={"src": "a b", "w": 640}, attempt=2)
    finished = run_sh(
        'read -r line; printf \'{"stdin": %s, "id": "%s", "attempt": %s, "ns": "%s", "p": %s}\' '
        '"$line" "$TASKQ_TASK_ID" "$TASKQ_ATTEMPT" "$TASKQ_NAMESPACE" "$TASKQ_PAYLOAD"',
        task,
    )
    assert finished.returncode == 0
    result = command.result_of(finished)
    assert result["stdin"] == task.raw
    assert {k: v for k, v in result.items() if k != "stdin"} == {
        "id": "resize-42",
        "attempt": 2,
        "ns": "ns",
        "p": {"src": "a b", "w": 640},
    }


def test_a_payload_too_large_for_the_environment_is_on_stdin_only() -> None:
    big = lease(payload="x" * (command.ENV_PAYLOAD_MAX_BYTES + 1))
    finished = run_sh('echo "${TASKQ_PAYLOAD-unset}"; wc -c', big, TASKQ_PAYLOAD="stale")
    first, size = finished.stdout.decode().split()
    assert first == "unset"
    assert int(size) == len(command.task_stdin(big))


def test_a_command_that_does_not_read_its_input_is_fine() -> None:
    finished = run_sh("exit 0", lease(payload="x" * 300_000))
    assert finished.returncode == 0


@pytest.mark.parametrize(
    ("stdout", "result"),
    [
        ('{"bytes": 18230}\n', {"bytes": 18230}),
        ("[1, 2]", [1, 2]),
        ("42\n", 42),
        ("converted 3 files\n", "converted 3 files"),
        ("", None),
        ("\n  \n", None),
    ],
)
def test_standard_output_becomes_the_result(stdout: str, result: Any) -> None:
    finished = command.Finished(0, stdout.encode(), len(stdout), b"")
    assert command.result_of(finished) == result


def test_large_output_that_is_not_a_result_keeps_its_tail() -> None:
    finished = run_sh("seq 1 100000")
    assert finished.stdout_bytes > command.RESULT_MAX_BYTES
    result = command.result_of(finished)
    assert result.endswith("99999\n100000")
    assert len(result.encode()) <= command.TAIL_BYTES


def test_a_failure_keeps_the_tail_of_stderr() -> None:
    finished = run_sh("seq 1 5000 >&2; exit 3")
    assert finished.returncode == 3
    error = command.error_of(finished)
    assert error.endswith("4999\n5000")
    assert len(error.encode()) <= command.TAIL_BYTES
    assert command.error_of(run_sh("exit 4")) == "exit status 4"
    assert command.error_of(run_sh("kill -9 $$")) == "killed by SIGKILL"


def test_a_tail_starts_at_a_whole_character() -> None:
    data = "é".encode() * 3000
    tail = command.text_tail(data)
    assert set(tail) == {"é"}


def test_an_error_stays_under_the_servers_bound_as_json() -> None:
    controls = ("\x01" * 4096).encode()
    error = command.error_of(command.Finished(1, b"", 0, controls))
    assert len(json.dumps(error).encode()) <= command.ERROR_MAX_BYTES


def handler_for(script: str, **kwargs: Any) -> command.TaskHandler:
    return command.TaskHandler(command.CommandRunner(["sh", "-c", script]), **kwargs)


def test_the_handler_maps_exit_codes_to_releases() -> None:
    assert handler_for("echo '{\"ok\": true}'")(lease()) == {"ok": True}
    with pytest.raises(command.CommandFailed, match=r"^no such file$"):
        handler_for("echo 'no such file' >&2; exit 1")(lease())
    with pytest.raises(Retry) as retry:
        handler_for("echo 'busy' >&2; exit 75", retry_after=30)(lease())
    assert (str(retry.value), retry.value.after) == ("busy", 30)
    with pytest.raises(Retry):
        handler_for("exit 9", tempfail_code=9)(lease())
    with pytest.raises(command.CommandFailed, match="exit status 75"):
        handler_for("exit 75", tempfail_code=9)(lease())


def run_in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, outcome


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_stop_terminates_the_command_and_what_it_started(tmp_path) -> None:
    # The shell traps SIGTERM and leaves a `sleep` of its own running: the
    # signal goes to the whole process group, so the sleep ends too.
    script = f"trap 'echo term; exit 143' TERM; sleep 30 & echo $! > {tmp_path}/pid; wait"
    handler = handler_for(script, hold=10)
    thread, outcome = run_in_thread(lambda: handler(lease()))
    wait_until(lambda: (tmp_path / "pid").exists() and handler.runner.running == 1)
    handler.runner.stop()
    time.sleep(0.2)
    # Terminated for a shutdown: it waits for the worker to hand it back.
    assert thread.is_alive()
    handler.stopped.set()
    thread.join(5)
    assert isinstance(outcome[0], command.CommandStopped)
    sleeper = int((tmp_path / "pid").read_text())
    wait_until(lambda: not _alive(sleeper))


def test_a_command_that_ignores_sigterm_is_killed(tmp_path) -> None:
    runner = command.CommandRunner(
        ["sh", "-c", f"trap '' TERM; touch {tmp_path}/up; while :; do sleep 0.05; done"],
        kill_after=0.2,
    )
    thread, outcome = run_in_thread(lambda: runner.run(lease()))
    wait_until(lambda: (tmp_path / "up").exists())
    runner.stop()
    thread.join(5)
    assert outcome[0].returncode == -signal.SIGKILL
    assert outcome[0].terminated
    with pytest.raises(command.CommandStopped):
        runner.run(lease())


def test_a_lost_lease_ends_its_command_at_once(tmp_path) -> None:
    handler = handler_for(f"touch {tmp_path}/up; sleep 30", hold=30)
    thread, outcome = run_in_thread(lambda: handler(lease("t1")))
    wait_until(lambda: (tmp_path / "up").exists())
    handler.lost(lease("t2"))  # another task's lease: nothing to end here
    handler.lost(lease("t1", token="old"))  # an earlier lease of the same task
    time.sleep(0.2)
    assert thread.is_alive()
    handler.lost(lease("t1"))
    thread.join(5)
    assert isinstance(outcome[0], command.CommandStopped)
    # Nothing kept of the run: told again later (a refused release), no trace either.
    handler.lost(lease("t1"))
    assert (handler._lost, handler._active, handler.runner._signalled) == (set(), set(), set())


def test_a_terminated_command_is_not_remembered_after_its_run(tmp_path) -> None:
    runner = command.CommandRunner(["sh", "-c", f"touch {tmp_path}/up; sleep 30"])
    thread, outcome = run_in_thread(lambda: runner.run(lease()))
    wait_until(lambda: (tmp_path / "up").exists())
    runner.stop_for(lease())
    thread.join(5)
    assert outcome[0].terminated
    assert runner._signalled == set()


def test_sigkill_reaches_the_group_when_its_leader_is_gone(tmp_path) -> None:
    # The shell dies of SIGTERM; the loop it started ignores it.
    script = f"(trap '' TERM; while :; do sleep 0.05; done) & echo $! > {tmp_path}/pid; wait"
    runner = command.CommandRunner(["sh", "-c", script], kill_after=0.2)
    thread, outcome = run_in_thread(lambda: runner.run(lease()))
    wait_until(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text())
    looper = int((tmp_path / "pid").read_text())
    assert runner.stop()
    thread.join(5)
    assert outcome[0].returncode == -signal.SIGTERM
    # stop() returned once the group was gone, not merely its leader.
    assert not _alive(looper)


def test_output_with_nan_is_text_not_a_result() -> None:
    assert handler_for("echo NaN")(lease()) == "NaN"
    assert handler_for("echo '{\"x\": Infinity}'")(lease()) == '{"x": Infinity}'


def test_an_unstartable_command_holds_its_task_and_says_why(tmp_path) -> None:
    script = tmp_path / "no-shebang"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    told: list[str] = []
    handler = command.TaskHandler(
        command.CommandRunner([str(script)]), hold=10, on_unstartable=told.append
    )
    thread, outcome = run_in_thread(lambda: handler(lease()))
    wait_until(lambda: bool(told))
    # No failed release (a retry gone): the worker is to hand the task back.
    assert thread.is_alive()
    handler.stopped.set()
    thread.join(5)
    assert isinstance(outcome[0], command.CommandStopped)
    assert "cannot run" in told[0] and "#!" in told[0]
    assert handler.unstartable == told[0]


def _alive(pid: int) -> bool:
    # A zombie (an init that does not reap) runs no more.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_work_runs_the_command_releases_and_stops_on_sigterm(serve, capsys, monkeypatch) -> None:
    leased = [{**TASK, "status": "in_progress", "attempt": 1, "payload": 7, "lease_token": "k1"}]
    released: list[Any] = []

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/task/capture":
            time.sleep(0.02)
            answer, leased[:] = list(leased), []
            return httpx.Response(200, json={"list": answer})
        released.append(json.loads(request.content))
        # Stopped as a supervisor would, once the work is done.
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return httpx.Response(200, json={"list": [{**TASK, "status": "done"}], "errors": []})

    serve(server)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    code = cli.main(
        [
            "work",
            "ns",
            "--wait",
            "0",
            "--json",
            "--",
            "sh",
            "-c",
            'echo "{\\"n\\": $TASKQ_PAYLOAD}"',
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {
        "captured": 1,
        "done": 1,
        "failed": 0,
        "handed_back": 0,
        "lost": 0,
    }
    assert released == [
        {"status": "done", "leases": [{"id": "t1", "lease_token": "k1"}], "result": {"n": 7}}
    ]
    shown = terminal.getvalue()
    assert "\rns: captured 1  done 1  failed 0  handed back 0  lost 0  running 0\x1b[K\n" in shown
    assert shown.endswith("\n")


def _work_server(released: list[Any], on_release: Callable[[], None] = lambda: None):
    leased = [{**TASK, "status": "in_progress", "attempt": 1, "lease_token": "k1"}]

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/task/capture":
            time.sleep(0.02)
            answer, leased[:] = list(leased), []
            return httpx.Response(200, json={"list": answer})
        if request.url.path == "/v1/task/extend":
            return httpx.Response(200, json={"list": leased, "errors": []})
        body = json.loads(request.content)
        on_release()
        released.append(body)
        return httpx.Response(200, json={"list": [{**TASK, "status": body["status"]}]})

    return server


@pytest.mark.parametrize("signals", [1, 2])
def test_a_task_is_handed_back_only_once_its_command_is_gone(
    serve, capsys, tmp_path, signals
) -> None:
    # The command takes a while to end on SIGTERM, and leaves a child that
    # ignores it: the task must not be back on the server before both are gone.
    script = (
        f"(trap '' TERM; while :; do sleep 0.05; done) & echo $! > {tmp_path}/child; "
        f"trap 'sleep 0.3; touch {tmp_path}/ended; exit 1' TERM; touch {tmp_path}/up; "
        "while :; do sleep 0.05; done"
    )
    seen: list[tuple[bool, bool]] = []
    released: list[Any] = []

    def on_release() -> None:
        child = int((tmp_path / "child").read_text())
        seen.append(((tmp_path / "ended").exists(), _alive(child)))

    serve(_work_server(released, on_release))

    def stop() -> None:
        wait_until(lambda: (tmp_path / "up").exists())
        for _ in range(signals):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)

    threading.Thread(target=stop, daemon=True).start()
    argv = ["work", "ns", "--wait", "0", "--grace", "0.3" if signals == 1 else "30"]
    code = cli.main([*argv, "--kill-after", "0.5", "--", "sh", "-c", script])
    assert code == 0
    assert released == [{"status": "idle", "leases": [{"id": "t1", "lease_token": "k1"}]}]
    assert seen == [(True, False)]


def test_an_unstartable_command_stops_the_worker_and_exits_2(serve, capsys, tmp_path) -> None:
    script = tmp_path / "no-shebang"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    released: list[Any] = []
    serve(_work_server(released))
    # Without the fix the worker would go on; stopped all the same.
    backstop = threading.Timer(10, os.kill, (os.getpid(), signal.SIGTERM))
    backstop.start()
    try:
        code, _, err = run(capsys, "work", "ns", "--wait", "0", "--", str(script))
    finally:
        backstop.cancel()
    assert code == 2
    # Handed back, not failed: the task is not to blame.
    assert released == [{"status": "idle", "leases": [{"id": "t1", "lease_token": "k1"}]}]
    assert f"cannot run '{script}'" in err


def test_work_help_says_what_the_commands_inherit(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["work", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "TASKQ_URL and TASKQ_TOKEN included" in out
    assert "COMMAND could not be started" in out


def test_a_batch_from_a_file_shows_its_progress_on_a_terminal(serve, capsys, tmp_path, monkeypatch):
    def register(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        return httpx.Response(201, json={"list": [{**TASK, **item} for item in body]})

    serve(register)
    source = tmp_path / "tasks.jsonl"
    source.write_text("".join(json.dumps({"id": f"t{n}"}) + "\n" for n in range(5)))
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(["task", "add", "--from", str(source), "-n", "ns", "--chunk", "2"]) == 0
    assert terminal.getvalue().startswith("\rregistered 0/5 tasks\x1b[K")
    assert terminal.getvalue().endswith("\rregistered 5/5 tasks\x1b[K\n")


def test_work_on_an_unknown_namespace_exits_3(serve, capsys) -> None:
    serve(lambda request: httpx.Response(404, json={"detail": "No such namespace."}))
    code, _, err = run(capsys, "work", "nope", "--", "true")
    assert code == 3
    assert "No such namespace." in err


def test_library_warnings_are_one_line_each() -> None:
    record = logging.makeLogRecord(
        {"msg": "task %s failed: %s", "args": ("t1", "Traceback\n  line\nValueError: bad\n")}
    )
    formatted = cli._LogFormatter().format(record)
    assert formatted == "taskq: task t1 failed: Traceback … ValueError: bad"
