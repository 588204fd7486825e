"""`import_tasks` and `export_tasks`: formats, validation, conflicts, atomicity."""

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from namespaces_app.models import Namespace
from tasks_app.models import Task
from tasks_app.services import Lease, LeaseProblem, capture_tasks, release_tasks
from tests.factories import age_task, make_namespace, make_task, make_tasks
from tests.utils import subprocess_env


def run_import(*args, stdin: bytes | None = None, monkeypatch=None) -> str:
    out = io.StringIO()
    err = io.StringIO()
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    call_command("import_tasks", *args, "--quiet", stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


def failing_import(*args) -> tuple[CommandError, str]:
    err = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("import_tasks", *args, "--quiet", stdout=io.StringIO(), stderr=err)
    return caught.value, err.getvalue()


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    data = content.encode() if isinstance(content, str) else content
    if name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return str(path)


def stored_state() -> dict[str, tuple]:
    """What an import could move that is not a column of the file."""
    return {
        row[0]: row[1:]
        for row in Task.objects.values_list(
            "id", "updated_at", "available_at", "lease_expires_at", "lease_token", "attempt"
        )
    }


def tasks_as_rows() -> list[tuple]:
    return list(
        Task.objects.order_by("id").values_list(
            "id", "namespace_id", "timeout", "retries_left", "status"
        )
    )


pytestmark = pytest.mark.django_db


class TestFormats:
    def test_csv_with_a_namespace_column_and_defaults(self, tmp_path):
        make_namespace("ns")
        path = write(
            tmp_path,
            "t.csv",
            "id,namespace_id,timeout,retries_left,status\n"
            "a,ns,60,1,idle\nb,ns,,,\nc,ns,10,0,failed\n",
        )
        out = run_import(path)
        assert "imported 3, updated 0, skipped 0, rejected 0" in out
        assert tasks_as_rows() == [
            ("a", "ns", 60, 1, "idle"),
            ("b", "ns", 300, 3, "idle"),
            ("c", "ns", 10, 0, "failed"),
        ]
        assert Task.objects.get(pk="b").available_at is not None

    def test_imported_tasks_go_out_in_file_order(self, tmp_path):
        make_namespace("ns")
        ids = ["zeta", "alpha", "mike", "bravo"]
        write(tmp_path, "t.csv", "id\n" + "\n".join(ids) + "\n")
        run_import(str(tmp_path / "t.csv"), "--namespace", "ns")
        got = [capture_tasks(namespace_id="ns", limit=1)[0].id for _ in ids]
        assert got == ids

    def test_jsonl(self, tmp_path):
        make_namespace("ns")
        path = write(
            tmp_path,
            "t.jsonl",
            '{"id": "a", "timeout": 5}\n\n{"id": "b", "status": "done", "retries_left": 0}\n',
        )
        run_import(path, "--namespace", "ns")
        assert tasks_as_rows() == [("a", "ns", 5, 3, "idle"), ("b", "ns", 300, 0, "done")]

    @pytest.mark.parametrize("name", ["t.csv.gz", "t.jsonl.gz"])
    def test_gzip_files(self, tmp_path, name):
        make_namespace("ns")
        body = "id\nx\ny\n" if ".csv" in name else '{"id": "x"}\n{"id": "y"}\n'
        run_import(write(tmp_path, name, body), "--namespace", "ns")
        assert Task.objects.count() == 2

    def test_standard_input_with_an_explicit_format(self, monkeypatch):
        make_namespace("ns")
        run_import(
            "-", "--format", "csv", "--namespace", "ns", stdin=b"id\nx\n", monkeypatch=monkeypatch
        )
        assert list(Task.objects.values_list("id", flat=True)) == ["x"]

    def test_standard_input_may_be_gzipped(self, monkeypatch):
        make_namespace("ns")
        data = gzip.compress(b'{"id": "x"}\n')
        run_import(
            "-", "--format", "jsonl", "--namespace", "ns", stdin=data, monkeypatch=monkeypatch
        )
        assert Task.objects.count() == 1

    def test_format_must_be_known(self, tmp_path):
        error, _ = failing_import(write(tmp_path, "t.txt", "id\nx\n"), "--namespace", "ns")
        assert error.returncode == 2
        assert "--format" in str(error)

    def test_utf8_bom_and_crlf_line_ends(self, tmp_path):
        make_namespace("ns")
        path = write(tmp_path, "t.csv", "\ufeffid,timeout\r\na,7\r\nb,8\r\n".encode())
        run_import(path, "--namespace", "ns")
        assert tasks_as_rows() == [("a", "ns", 7, 3, "idle"), ("b", "ns", 8, 3, "idle")]


class TestMalformedFiles:
    @pytest.mark.parametrize(
        ("name", "content", "message"),
        [
            ("empty.csv", b"", "the file is empty"),
            ("blank.jsonl", b"\n\n", "the file is empty"),
            ("header-only.csv", b"id,timeout\n", "no rows, only a header"),
            ("noheader.csv", b"a,60\nb,70\n", "missing header"),
            ("unknown.csv", b"id,colour\nx,red\n", "unknown column(s) 'colour'"),
            (
                "case.csv",
                b"ID,Namespace_Id\nx,ns\n",
                "line 1: unknown column(s) 'ID', 'Namespace_Id'; names are case-sensitive; "
                "allowed: id, namespace_id, timeout, retries_left, status",
            ),
            (
                "mixedcase.csv",
                b"id,Timeout\nx,5\n",
                "unknown column(s) 'Timeout'; names are case-sensitive",
            ),
            ("noid.csv", b"timeout,status\n5,idle\n", "line 1: no id column"),
            ("twice.csv", b"id,id\nx,y\n", "named twice"),
            (
                "extra.csv",
                b"id,timeout\nx,1,surplus\n",
                "line 2: extra data after last expected column",
            ),
            (
                "latin1.csv",
                "id\nGr\u00f6\u00dfe\n".encode("latin-1"),
                "line 2: the file is not UTF-8",
            ),
            ("latin1head.csv", "\u00efd\nx\n".encode("latin-1"), "line 1: the file is not UTF-8"),
            (
                "latin1.jsonl",
                '{"id": "\u00e9"}\n'.encode("latin-1"),
                "line 1: the file is not UTF-8",
            ),
        ],
    )
    def test_malformed_file_gets_a_clear_message_and_exit_code_2(
        self, tmp_path, name, content, message
    ):
        make_namespace("ns")
        error, _ = failing_import(write(tmp_path, name, content), "--namespace", "ns")
        assert error.returncode == 2
        assert message in str(error)
        assert not Task.objects.exists()

    def test_truncated_gzip(self, tmp_path):
        make_namespace("ns")
        data = gzip.compress(("id\n" + "\n".join(f"t{i}" for i in range(50_000))).encode())
        path = tmp_path / "cut.csv.gz"
        path.write_bytes(data[: len(data) // 2])
        error, _ = failing_import(str(path), "--namespace", "ns")
        assert error.returncode == 2
        assert "truncated" in str(error)
        assert not Task.objects.exists()

    @pytest.mark.parametrize(
        ("namespace", "problem"),
        [
            ("n" * 300, "id must be at most 255 characters long (got 300)"),
            ("bad/", "id must not end with '/'"),
            ("a\tb", "id must not contain control characters (found U+0009)"),
            ("", "id must not be empty"),
        ],
    )
    def test_namespace_option_is_checked_like_any_namespace_id(self, tmp_path, namespace, problem):
        error, _ = failing_import(
            write(tmp_path, "t.csv", "id\nx\n"), "--namespace", namespace, "--create-namespace"
        )
        assert error.returncode == 2
        assert str(error).startswith("--namespace '")
        assert problem in str(error)
        # The value is quoted short and printable, whatever was passed.
        assert len(str(error)) < 120
        assert "\t" not in str(error)
        assert not Task.objects.exists()
        assert not Namespace.objects.exists()

    def test_missing_file(self, tmp_path):
        error, _ = failing_import(str(tmp_path / "nope.csv"))
        assert error.returncode == 2
        assert "Cannot open" in str(error)


class TestValidation:
    BAD = (
        "id,namespace_id,timeout,retries_left,status\n"
        "good,ns,1,1,idle\n"  # line 2
        ",ns,1,1,idle\n"  # 3 missing id
        f"{'x' * 256},ns,1,1,idle\n"  # 4 overlong
        "capture,ns,1,1,idle\n"  # 5 reserved
        "t5,ns,soon,1,idle\n"  # 6 not an integer
        "t6,ns,0,1,idle\n"  # 7 out of range
        "t7,ns,1,99999999999,idle\n"  # 8 out of range
        "t8,ns,1,1,paused\n"  # 9 unknown status
        "t9,elsewhere,1,1,idle\n"  # 10 unknown namespace
        "good,ns,1,1,idle\n"  # 11 duplicate
        "t11,ns,1.5,1,idle\n"  # 12 not an integer
        "t12,ns,-4,1,idle\n"  # 13 out of range
        "extend,ns,1,1,idle\n"  # 14 reserved
    )
    EXPECTED = [
        "line 3: missing id\n",
        f"line 4: id longer than 255 characters (got 256: '{'x' * 40}…')\n",
        "line 5: id capture is reserved\n",
        "line 6: timeout is not an integer ('soon')\n",
        "line 7: timeout out of range (1 to 2147483647, got '0')\n",
        "line 8: retries_left out of range (0 to 2147483647, got '99999999999')\n",
        "line 9: unknown status paused\n",
        "line 10: unknown namespace elsewhere\n",
        "line 11: duplicate id (first on line 2)\n",
        "line 12: timeout is not an integer ('1.5')\n",
        "line 13: timeout out of range (1 to 2147483647, got '-4')\n",
        "line 14: id extend is reserved\n",
    ]

    def test_every_bad_row_is_reported_with_its_line_and_nothing_is_imported(self, tmp_path):
        make_namespace("ns")
        error, err = failing_import(write(tmp_path, "bad.csv", self.BAD))
        assert error.returncode == 1
        assert "nothing was imported" in str(error)
        for expected in self.EXPECTED:
            assert expected in err
        assert not Task.objects.exists()

    def test_skip_invalid_imports_the_good_rows_and_writes_the_rejects(self, tmp_path):
        make_namespace("ns")
        path = write(tmp_path, "bad.csv", self.BAD)
        out = run_import(path, "--skip-invalid")
        assert "imported 1, updated 0, skipped 0, rejected 12" in out
        assert list(Task.objects.values_list("id", flat=True)) == ["good"]
        rejects = (tmp_path / "bad.csv.rejects.csv").read_text().splitlines()
        assert rejects[0] == "line,reason,id,namespace_id,timeout,retries_left,status"
        assert rejects[1] == "3,missing id,,ns,1,1,idle"
        assert len(rejects) == 13

    def test_row_errors_quote_values_cut_short_and_printable(self, tmp_path):
        make_namespace("ns")
        path = write(
            tmp_path,
            "t.csv",
            "id,namespace_id,timeout,status\n"
            "a\tb,ns,,\n"  # line 2
            "bad/,ns,,\n"  # 3
            "t3,ns/,,\n"  # 4
            't4,"n\x01s",,\n'  # 5
            f"t5,ns,{'9' * 50},\n"  # 6
            f"t6,ns,,{'p' * 100}\n"  # 7
            f"t7,{'q' * 300},,\n",  # 8
        )
        _, err = failing_import(path)
        assert err.splitlines() == [
            "line 2: id contains control characters (found U+0009 in 'a\ufffdb')",
            "line 3: id ends with / ('bad/')",
            "line 4: invalid namespace_id: ends with / ('ns/')",
            "line 5: invalid namespace_id: contains control characters"
            " (found U+0001 in 'n\ufffds')",
            f"line 6: timeout out of range (1 to 2147483647, got '{'9' * 40}…')",
            f"line 7: unknown status {'p' * 40}…",
            f"line 8: namespace_id longer than 255 characters (got 300: '{'q' * 40}…')",
        ]

    def test_an_empty_namespace_id_is_rejected_not_registered(self, tmp_path):
        path = write(tmp_path, "t.jsonl", '{"id": "a", "namespace_id": ""}\n')
        _, err = failing_import(path, "--create-namespace")
        assert err.splitlines() == ["line 1: invalid namespace_id: empty"]
        assert not Namespace.objects.exists()

    def test_identical_bad_rows_are_each_rejected_once(self, tmp_path):
        make_namespace("ns")
        path = write(tmp_path, "t.csv", "id,timeout\nt,soon\nt,soon\nu,soon\nu,5\nok,1\n")
        out = run_import(path, "--namespace", "ns", "--skip-invalid")
        assert "imported 1, updated 0, skipped 0, rejected 4" in out
        assert "line 2: timeout is not an integer ('soon')" in out
        assert "line 3: timeout is not an integer ('soon')" in out
        assert "line 4: timeout is not an integer ('soon')" in out
        # A later line is a duplicate even when the first is rejected itself.
        assert "line 5: duplicate id (first on line 4)" in out
        rejects = (tmp_path / "t.csv.rejects.csv").read_text().splitlines()
        assert [row.split(",")[0] for row in rejects[1:]] == ["2", "3", "4", "5"]
        assert list(Task.objects.values_list("id", flat=True)) == ["ok"]

    def test_rejects_path_can_be_chosen(self, tmp_path):
        make_namespace("ns")
        target = tmp_path / "out" / "r.csv"
        target.parent.mkdir()
        run_import(write(tmp_path, "bad.csv", self.BAD), "--skip-invalid", "--rejects", str(target))
        assert target.read_text().count("\n") == 13

    def test_jsonl_type_errors_are_rows_not_file_errors(self, tmp_path):
        make_namespace("ns")
        path = write(
            tmp_path,
            "t.jsonl",
            '{"id": "ok"}\n{"id": 5}\n{"id": "s", "timeout": "5"}\nnot json\n[1]\n'
            '{"id": "k", "colour": "red"}\n{"id": "b", "retries_left": true}\n',
        )
        error, err = failing_import(path, "--namespace", "ns")
        assert error.returncode == 1
        lines = err.splitlines()
        assert lines[0] == "line 2: id is not a string (5)"
        assert lines[1] == 'line 3: timeout is not an integer ("5")'
        assert lines[2].startswith("line 4: invalid JSON (")
        assert lines[2].endswith(") in 'not json'")
        assert lines[3:] == [
            "line 5: not a JSON object ([1])",
            "line 6: unknown key(s) colour",
            "line 7: retries_left is not an integer (true)",
        ]
        run_import(path, "--namespace", "ns", "--skip-invalid")
        assert list(Task.objects.values_list("id", flat=True)) == ["ok"]

    def test_namespace_option_must_agree_with_the_column(self, tmp_path):
        make_namespace("ns")
        make_namespace("other")
        path = write(tmp_path, "t.csv", "id,namespace_id\na,ns\nb,other\nc,\n")
        _, err = failing_import(path, "--namespace", "ns")
        assert "line 3: namespace_id other differs from --namespace" in err
        run_import(path, "--namespace", "ns", "--skip-invalid")
        assert tasks_as_rows() == [("a", "ns", 300, 3, "idle"), ("c", "ns", 300, 3, "idle")]

    def test_create_namespace_registers_unknown_namespaces(self, tmp_path):
        path = write(tmp_path, "t.csv", "id,namespace_id\na,one\nb,two\n")
        run_import(path, "--create-namespace")
        assert set(Namespace.objects.values_list("pk", flat=True)) == {"one", "two"}

    def test_without_any_namespace_the_rows_are_rejected(self, tmp_path):
        _, err = failing_import(write(tmp_path, "t.csv", "id\na\n"))
        assert "line 2: missing namespace_id" in err


class TestConflicts:
    def test_error_is_the_default(self, tmp_path):
        make_namespace("ns")
        make_task("a", "ns")
        _, err = failing_import(write(tmp_path, "t.csv", "id\na\nb\n"), "--namespace", "ns")
        assert "line 2: id already registered" in err
        assert Task.objects.count() == 1

    def test_skip_never_duplicates_when_run_again(self, tmp_path):
        make_namespace("ns")
        path = write(tmp_path, "t.csv", "id\na\nb\nc\n")
        assert "imported 3" in run_import(path, "--namespace", "ns", "--on-conflict", "skip")
        out = run_import(path, "--namespace", "ns", "--on-conflict", "skip")
        assert "imported 0, updated 0, skipped 3" in out
        assert Task.objects.count() == 3

    def test_update_changes_only_the_columns_the_file_gives(self, tmp_path):
        make_namespace("ns")
        make_task("a", "ns", timeout=10, retries_left=7)
        make_task("b", "ns", timeout=20, retries_left=8, status="done")
        before = stored_state()
        path = write(tmp_path, "t.csv", "id,timeout\na,99\nb,\nc,5\n")
        out = run_import(path, "--namespace", "ns", "--on-conflict", "update")
        # b gives no column that differs from what is stored: not written.
        assert "imported 1, updated 1, skipped 1 (1 unchanged), rejected 0" in out
        assert tasks_as_rows() == [
            ("a", "ns", 99, 7, "idle"),
            ("b", "ns", 20, 8, "done"),
            ("c", "ns", 5, 3, "idle"),
        ]
        after = stored_state()
        assert after["b"] == before["b"]
        assert after["a"][0] > before["a"][0]

    @pytest.mark.parametrize("fmt", ["csv", "jsonl"])
    def test_update_from_an_unchanged_export_writes_no_row(self, tmp_path, fmt):
        make_namespace("ns")
        make_namespace("work")
        make_tasks("ns", 3, prefix="i", timeout=42)
        make_tasks("ns", 2, prefix="d", status="done", retries_left=0)
        make_tasks("ns", 2, prefix="f", status="failed", retries_left=2)
        make_task("leased", "work")
        make_task("released", "work")
        assert [t.id for t in capture_tasks(namespace_id="work", limit=1)] == ["leased"]
        (old,) = capture_tasks(namespace_id="work", limit=1)
        release_tasks(status="failed", leases=[Lease(id=old.id, lease_token=old.lease_token)])
        for task_id in Task.objects.values_list("id", flat=True):
            # An hour back, so that a rewrite could not land on the same instant.
            age_task(task_id, 3600)
        before = stored_state()
        # A rewrite would also drop the token the last holder released with.
        assert str(before["released"][3]) == old.lease_token
        target = tmp_path / f"all.{fmt}"
        call_command("export_tasks", "-o", str(target), stderr=io.StringIO())
        out = run_import(str(target), "--on-conflict", "update")
        # The leased task is skipped as always; the other eight are unchanged.
        assert "imported 0, updated 0, skipped 9 (8 unchanged), rejected 0" in out
        assert stored_state() == before

    def test_update_of_status_keeps_the_lease_rules(self, tmp_path):
        make_namespace("ns")
        make_task("done-task", "ns", status="done")
        make_task("leased", "ns")
        capture_tasks(namespace_id="ns", limit=1)
        path = write(tmp_path, "t.csv", "id,status\ndone-task,idle\nleased,done\n")
        out = run_import(path, "--namespace", "ns", "--on-conflict", "update")
        assert "imported 0, updated 1, skipped 1" in out
        assert Task.objects.get(pk="leased").status == "in_progress"
        requeued = Task.objects.get(pk="done-task")
        assert requeued.status == "idle"
        assert requeued.available_at is not None
        assert capture_tasks(namespace_id="ns", limit=5)[0].id == "done-task"

    def test_an_update_that_starts_a_lease_does_not_hand_it_to_an_old_holder(self, tmp_path):
        make_namespace("ns")
        make_task("a", "ns")
        (old,) = capture_tasks(namespace_id="ns", limit=1)
        release_tasks(status="failed", leases=[Lease(id="a", lease_token=old.lease_token)])
        path = write(tmp_path, "t.csv", "id,status\na,in_progress\n")
        assert "updated 1" in run_import(path, "--namespace", "ns", "--on-conflict", "update")
        result = release_tasks(status="done", leases=[Lease(id="a", lease_token=old.lease_token)])
        assert [e.code for e in result.errors] == [LeaseProblem.STALE_LEASE]
        assert Task.objects.get(pk="a").status == "in_progress"


def test_a_hundred_thousand_rows(tmp_path):
    make_namespace("ns")
    lines = "\n".join(f"task-{i:06d},{i % 900 + 1},{i % 5}" for i in range(100_000))
    path = write(tmp_path, "big.csv.gz", "id,timeout,retries_left\n" + lines + "\n")
    out = run_import(path, "--namespace", "ns")
    assert "imported 100000, updated 0, skipped 0, rejected 0" in out
    assert Task.objects.count() == 100_000
    assert Task.objects.get(pk="task-012345").timeout == 12345 % 900 + 1


class TestExport:
    def populate(self):
        make_namespace("ns")
        make_namespace("other")
        make_tasks("ns", 3, prefix="i", timeout=42)
        make_tasks("ns", 2, prefix="d", status="done", retries_left=0)
        make_task('weird "quoted", id ü', "ns")
        make_tasks("other", 2, prefix="o")

    @pytest.mark.parametrize("fmt", ["csv", "jsonl"])
    def test_export_then_import_round_trips_unchanged(self, tmp_path, fmt):
        self.populate()
        before = tasks_as_rows()
        target = tmp_path / f"all.{fmt}.gz"
        call_command("export_tasks", "-o", str(target), stderr=io.StringIO())
        Task.objects.all().delete()
        run_import(str(target))
        assert tasks_as_rows() == before

    def test_export_filters_by_namespace_and_status(self, tmp_path, capsysbinary):
        self.populate()
        err = io.StringIO()
        call_command("export_tasks", "--namespace", "ns", "--status", "done", stderr=err)
        output = capsysbinary.readouterr().out.decode()
        assert output.splitlines() == [
            "id,namespace_id,timeout,retries_left,status,priority,payload,available_at",
            "d000000,ns,300,0,done,0,,",
            "d000001,ns,300,0,done,0,,",
        ]
        assert "exported 2 task(s)" in err.getvalue()

    def test_jsonl_export_is_one_object_per_line(self, capsysbinary):
        self.populate()
        call_command(
            "export_tasks", "--namespace", "other", "--format", "jsonl", stderr=io.StringIO()
        )
        lines = capsysbinary.readouterr().out.decode().splitlines()
        turns = {
            task_id: int(at.timestamp()) if at else None
            for task_id, at in Task.objects.filter(namespace_id="other").values_list(
                "id", "available_at"
            )
        }
        assert [json.loads(line) for line in lines] == [
            {
                "id": task_id,
                "namespace_id": "other",
                "timeout": 300,
                "retries_left": 3,
                "status": "idle",
                "priority": 0,
                "payload": None,
                "available_at": turns[task_id],
            }
            for task_id in ("o000000", "o000001")
        ]

    def test_export_of_unknown_namespace_is_an_error(self):
        with pytest.raises(CommandError, match="not registered"):
            call_command("export_tasks", "--namespace", "nope")


@pytest.mark.django_db(transaction=True)
def test_an_import_killed_midway_leaves_nothing_behind(tmp_path):
    make_namespace("ns")
    path = tmp_path / "huge.csv"
    with path.open("w") as handle:
        handle.write("id,timeout\n")
        for i in range(3_000_000):
            handle.write(f"killed-{i:07d},60\n")
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "import_tasks",
            str(path),
            "--namespace",
            "ns",
            "--create-namespace",
            "--quiet",
        ],
        cwd=settings.BASE_DIR,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        copying = False
        while time.monotonic() < deadline and not copying:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND query LIKE 'COPY taskq_import%%' AND state = 'active'"
                )
                copying = cursor.fetchone()[0] > 0
            time.sleep(0.05)
        assert copying, "the import never reached its COPY"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
        if process.stderr:
            process.stderr.close()
    # The server notices the dead client and rolls its transaction back.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'COPY taskq_import%%'"
            )
            if cursor.fetchone()[0] == 0:
                break
        time.sleep(0.1)
    assert Task.objects.count() == 0
    assert list(Namespace.objects.values_list("pk", flat=True)) == ["ns"]
