"""`import_tasks` and `export_tasks` with a task's priority, payload and turn
(`available_at`): both formats, every rejection, `--on-conflict update`, and
round trips that keep the rows and the order capture takes them in."""

import gzip
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction

from tasks_app import bulk, serializers
from tasks_app.models import Task
from tasks_app.services import NewTask, capture_tasks, register_tasks
from tests.factories import make_namespace, make_task

pytestmark = pytest.mark.django_db

LIMIT = 256 * 1024


def run_import(*args: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    call_command("import_tasks", *args, "--quiet", stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


def failing_import(*args: str) -> tuple[CommandError, list[str]]:
    err = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("import_tasks", *args, "--quiet", stdout=io.StringIO(), stderr=err)
    return caught.value, err.getvalue().splitlines()


def write(tmp_path: Path, name: str, content: str) -> str:
    path = tmp_path / name
    data = content.encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return str(path)


def jsonl(*items: dict) -> str:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def csv_cell(value: object) -> str:
    """`value` as JSON text in a CSV cell, quoted."""
    return '"' + json.dumps(value).replace('"', '""') + '"'


def unix(moment: datetime) -> int:
    return int(moment.timestamp())


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def whole_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


FIELDS = (
    "namespace_id",
    "timeout",
    "retries_left",
    "status",
    "priority",
    "payload",
    "available_at",
    "lease_expires_at",
)


def stored(*fields: str) -> dict[str, tuple]:
    return {row[0]: row[1:] for row in Task.objects.values_list("id", *(fields or FIELDS))}


def export(tmp_path: Path, fmt: str, *args: str) -> str:
    target = tmp_path / f"export.{fmt}"
    call_command("export_tasks", "-o", str(target), *args, stderr=io.StringIO())
    return str(target)


def turn_of(task_id: str) -> datetime:
    turn = Task.objects.get(pk=task_id).available_at
    assert turn is not None
    return turn


def capture_order(namespace_id: str) -> list[str]:
    return [lease.id for lease in capture_tasks(namespace_id=namespace_id, limit=1000)]


def test_the_limits_are_those_of_the_api():
    assert bulk.MAX_PAYLOAD_BYTES == serializers.MAX_PAYLOAD_BYTES == LIMIT
    assert bulk.MAX_UNIX_SECONDS == serializers.MAX_UNIX_SECONDS
    assert bulk.DELAYABLE_STATUSES == serializers.DELAYABLE_STATUSES


class TestColumns:
    def test_csv_gives_priority_payload_and_available_at(self, tmp_path, clock):
        make_namespace("ns")
        later = unix(clock.now()) + 3600
        path = write(
            tmp_path,
            "t.csv",
            "id,status,priority,payload,available_at\n"
            f'a,,3,"{{""k"": [1, 2.5, {{""é"": null}}]}}",{later}\n'
            "b,,,,\n"
            f'c,failed,9,"""text""",{later + 1}\n'
            # JSON null is no payload, as over the API.
            "d,,0,null,\n",
        )
        assert "imported 4, updated 0, skipped 0, rejected 0" in run_import(
            path, "--namespace", "ns"
        )
        rows = stored("priority", "payload", "available_at")
        assert rows["a"] == (3, {"k": [1, 2.5, {"é": None}]}, at(later))
        assert rows["c"] == (9, "text", at(later + 1))
        # Not given: priority 0, no payload, the turn of the import.
        assert rows["b"] == (0, None, clock.now() - timedelta(microseconds=2))
        assert rows["d"][:2] == (0, None)

    def test_jsonl_gives_priority_payload_and_available_at(self, tmp_path, clock):
        make_namespace("ns")
        later = unix(clock.now()) + 60
        payload = {"nested": {"list": [1, -2, 3.25, True, None]}, "text": "zürich 東京 🎉"}
        path = write(
            tmp_path,
            "t.jsonl",
            jsonl(
                {"id": "a", "priority": 2, "payload": payload, "available_at": later},
                {"id": "b", "payload": [1, "two"], "status": "done"},
                {"id": "c", "payload": "plain", "priority": None, "available_at": None},
                {"id": "d", "payload": None},
            ),
        )
        run_import(path, "--namespace", "ns")
        rows = stored("priority", "payload", "available_at", "status")
        assert rows["a"] == (2, payload, at(later), "idle")
        assert rows["b"] == (0, [1, "two"], None, "done")
        assert rows["c"][:2] == (0, "plain")
        assert rows["d"][:2] == (0, None)

    @pytest.mark.parametrize("fmt", ["csv", "jsonl"])
    def test_available_at_is_the_turn(self, tmp_path, clock, fmt):
        make_namespace("ns")
        make_task("waiting", "ns")
        now = unix(clock.now())
        rows = [("early", now - 60), ("late", now + 60)]
        if fmt == "csv":
            content = "id,available_at\n" + "".join(f"{i},{s}\n" for i, s in rows)
        else:
            content = jsonl(*({"id": i, "available_at": s} for i, s in rows))
        run_import(write(tmp_path, f"t.{fmt}", content), "--namespace", "ns")
        # A turn in the past goes ahead of the task already waiting; one in
        # the future waits for it.
        assert capture_order("ns") == ["early", "waiting"]
        clock.advance(59)
        assert capture_order("ns") == []
        clock.advance(1)
        assert capture_order("ns") == ["late"]

    def test_captures_take_priorities_then_turns_and_carry_the_payload(self, tmp_path, clock):
        make_namespace("ns")
        now = unix(clock.now())
        path = write(
            tmp_path,
            "t.jsonl",
            jsonl(
                {"id": "p5-old", "priority": 5, "available_at": now - 100, "payload": {"n": 1}},
                {"id": "p1", "priority": 1},
                {"id": "p5-new", "priority": 5, "available_at": now - 50},
                {"id": "p0", "payload": ["x"]},
            ),
        )
        run_import(path, "--namespace", "ns")
        leases = capture_tasks(namespace_id="ns", limit=10)
        assert [lease.id for lease in leases] == ["p0", "p1", "p5-old", "p5-new"]
        assert {lease.id: lease.payload for lease in leases} == {
            "p0": ["x"],
            "p1": None,
            "p5-old": {"n": 1},
            "p5-new": None,
        }

    def test_rows_given_the_same_second_take_it_in_file_order(self, tmp_path, clock):
        make_namespace("ns")
        second = unix(clock.now()) - 10
        ids = ["zeta", "alpha", "mike", "bravo"]
        path = write(
            tmp_path, "t.csv", "id,available_at\n" + "".join(f"{i},{second}\n" for i in ids)
        )
        run_import(path, "--namespace", "ns")
        # A microsecond apart, within the second given.
        turns = stored("available_at")
        assert [turns[i] for i in ids] == [
            (at(second) + timedelta(microseconds=n),) for n in range(len(ids))
        ]
        assert capture_order("ns") == ids

    def test_a_payload_is_measured_as_compact_json_of_its_value(self, tmp_path):
        make_namespace("ns")
        # Exactly at the limit compact, over it as written: spaces between
        # items do not count, escapes count as the characters they stand for.
        spaced = {"k": "x" * (LIMIT - len('{"k":""}'))}
        escaped = "\\u00e9" * ((LIMIT - 2) // 2)
        path = write(
            tmp_path,
            "t.csv",
            "id,payload\n"
            f"spaced,{csv_cell(spaced).replace(':', ': ', 1)}\n"
            f'escaped,"""{escaped}"""\n'
            f'numbers,"[{", ".join(["1"] * ((LIMIT - 1) // 2))}]"\n',
        )
        assert "imported 3" in run_import(path, "--namespace", "ns")
        rows = stored("payload")
        assert len(json.dumps(rows["spaced"][0], separators=(",", ":"))) == LIMIT
        assert rows["escaped"] == ("é" * ((LIMIT - 2) // 2),)
        assert len(rows["numbers"][0]) == (LIMIT - 1) // 2


class TestRejections:
    def test_csv(self, tmp_path):
        make_namespace("ns")
        over = {"k": "x" * (LIMIT - len('{"k":""}') + 1)}
        path = write(
            tmp_path,
            "t.csv",
            "id,status,priority,payload,available_at\n"
            "ok,,1,[],1\n"  # line 2
            "p1,,high,,\n"  # 3
            "p2,,10,,\n"  # 4
            "p3,,-1,,\n"  # 5
            "p4,,1.5,,\n"  # 6
            "a1,,,,soon\n"  # 7
            "a2,,,,-1\n"  # 8
            "a3,,,,253402300800\n"  # 9
            "a4,done,,,5\n"  # 10
            "a5,in_progress,,,5\n"  # 11
            'j1,,,"{x: 1}",\n'  # 12
            'j2,,,"""\\u0000""",\n'  # 13
            f"j3,,,{csv_cell(over)},\n"  # 14
            "j4,,,[1,\n"  # 15
            # One reason per row, the first: priority before payload.
            "both,,11,{x,\n"  # 16
            'fine,failed,9,"{""a"": 1}",253402300799\n',  # 17
        )
        error, lines = failing_import(path, "--namespace", "ns")
        assert error.returncode == 1
        assert lines == [
            "line 3: priority is not an integer ('high')",
            "line 4: priority out of range (0 to 9, got '10')",
            "line 5: priority out of range (0 to 9, got '-1')",
            "line 6: priority is not an integer ('1.5')",
            "line 7: available_at is not an integer ('soon')",
            "line 8: available_at out of range (0 to 253402300799, got '-1')",
            "line 9: available_at out of range (0 to 253402300799, got '253402300800')",
            "line 10: available_at only for an idle or failed task (status is done)",
            "line 11: available_at only for an idle or failed task (status is in_progress)",
            "line 12: payload is not valid JSON (Token \"x\" is invalid: '{x: 1}')",
            "line 13: payload is not valid JSON"
            " (\\u0000 cannot be converted to text: '\"\\u0000\"')",
            f"line 14: payload larger than {LIMIT} bytes as compact JSON"
            f' (got {LIMIT + 1}: \'{{"k": "{"x" * 33}…\')',
            "line 15: payload is not valid JSON (The input string ended unexpectedly: '[1')",
            "line 16: priority out of range (0 to 9, got '11')",
        ]
        assert not Task.objects.exists()

    def test_jsonl(self, tmp_path):
        make_namespace("ns")
        over = "x" * (LIMIT - 1)
        path = write(
            tmp_path,
            "t.jsonl",
            jsonl(
                {"id": "ok", "priority": 0, "payload": {"a": [1]}, "available_at": 0},
                {"id": "p1", "priority": "5"},
                {"id": "p2", "priority": 1.5},
                {"id": "p3", "priority": True},
                {"id": "p4", "priority": 10},
                {"id": "a1", "available_at": "1700000000"},
                {"id": "a2", "available_at": 1.7e9},
                {"id": "a3", "available_at": -5},
                {"id": "a4", "available_at": 5, "status": "in_progress"},
                {"id": "j1", "payload": {"k": "\u0000"}},
                {"id": "j2", "payload": over},
            ),
        )
        _, lines = failing_import(path, "--namespace", "ns")
        assert lines == [
            'line 2: priority is not an integer ("5")',
            "line 3: priority is not an integer (1.5)",
            "line 4: priority is not an integer (true)",
            "line 5: priority out of range (0 to 9, got '10')",
            'line 6: available_at is not an integer ("1700000000")',
            "line 7: available_at is not an integer (1700000000.0)",
            "line 8: available_at out of range (0 to 253402300799, got '-5')",
            "line 9: available_at only for an idle or failed task (status is in_progress)",
            "line 10: payload is not valid JSON"
            ' (\\u0000 cannot be converted to text: \'{"k":"\\u0000"}\')',
            f"line 11: payload larger than {LIMIT} bytes as compact JSON"
            f" (got {LIMIT + 1}: '\"{'x' * 39}…')",
        ]

    def test_the_largest_payload_the_api_takes_is_taken(self, tmp_path):
        make_namespace("ns")
        path = write(tmp_path, "t.jsonl", jsonl({"id": "a", "payload": "x" * (LIMIT - 2)}))
        assert "imported 1" in run_import(path, "--namespace", "ns")

    @pytest.mark.parametrize("fmt", ["csv", "jsonl"])
    def test_skip_invalid_keeps_the_good_rows_and_writes_every_column(self, tmp_path, fmt):
        make_namespace("ns")
        if fmt == "csv":
            content = 'id,payload,priority\ngood,"[1]",2\nbad,{oops,\nworse,"{""a"": 1}",x\n'
        else:
            content = jsonl(
                {"id": "good", "payload": [1], "priority": 2},
                {"id": "bad", "payload": {"k": "\u0000"}},
                {"id": "worse", "payload": {"a": 1}, "priority": "x"},
            )
        path = write(tmp_path, f"t.{fmt}", content)
        out = run_import(path, "--namespace", "ns", "--skip-invalid")
        assert "imported 1, updated 0, skipped 0, rejected 2" in out
        assert stored("payload", "priority") == {"good": ([1], 2)}
        rejects = (tmp_path / f"t.{fmt}.rejects.csv").read_text().splitlines()
        if fmt == "csv":
            # The file's own columns: fixed, it imports again.
            assert rejects[0] == "line,reason,id,payload,priority"
            assert rejects[1].endswith(",bad,{oops,")
            assert rejects[2].endswith(',worse,"{""a"": 1}",x')
        else:
            assert rejects[0] == (
                "line,reason,id,namespace_id,timeout,retries_left,status,priority,payload,"
                "available_at"
            )
            assert rejects[1].endswith(',bad,,,,,,"{""k"":""\\u0000""}",')
            assert rejects[2] == '3,"priority is not an integer (""x"")",,,,,,,,'

    def test_a_deeply_nested_payload_is_a_row_error(self, tmp_path):
        make_namespace("ns")
        deep = "[" * 100_000 + "]" * 100_000
        path = write(tmp_path, "t.csv", f"id,payload\nok,[]\ndeep,{deep}\n")
        _, lines = failing_import(path, "--namespace", "ns")
        assert len(lines) == 1
        assert lines[0].startswith("line 3: payload is not valid JSON (")


class TestUpdate:
    def test_only_the_columns_given_change(self, tmp_path, clock):
        make_namespace("ns")
        make_task("a", "ns", priority=4, payload={"keep": 1})
        make_task("b", "ns", priority=4, payload={"old": 1})
        before = stored()
        path = write(
            tmp_path, "t.csv", 'id,priority,payload\na,7,\nb,,"{""new"": [1, 2]}"\nc,2,"[3]"\n'
        )
        out = run_import(path, "--namespace", "ns", "--on-conflict", "update")
        assert "imported 1, updated 2, skipped 0, rejected 0" in out
        after = stored()
        assert after["a"] == (*before["a"][:4], 7, {"keep": 1}, *before["a"][6:])
        assert after["b"] == (*before["b"][:5], {"new": [1, 2]}, *before["b"][6:])
        assert after["c"][4:6] == (2, [3])

    def test_a_given_available_at_sets_the_turn(self, tmp_path, clock):
        make_namespace("ns")
        make_task("idle", "ns")
        make_task("failed", "ns", status="failed", retries_left=2)
        make_task("first", "ns")
        later = unix(clock.now()) + 30
        path = write(tmp_path, "t.csv", f"id,available_at\nidle,{later}\nfailed,{later}\n")
        assert "updated 2" in run_import(path, "--namespace", "ns", "--on-conflict", "update")
        rows = stored("status", "available_at")
        assert rows["idle"] == ("idle", at(later))
        # The same second as the row before it: a microsecond after it.
        assert rows["failed"] == ("failed", at(later) + timedelta(microseconds=1))
        assert capture_order("ns") == ["first"]
        clock.advance(30)
        assert capture_order("ns") == ["idle", "failed"]

    def test_a_turn_within_its_own_second_is_left_as_it_is(self, tmp_path, clock):
        make_namespace("ns")
        make_task("a", "ns", payload={"x": 1}, priority=3)
        before = stored("updated_at", "available_at")
        turn = turn_of("a")
        assert turn != whole_second(turn)
        # The same values, the payload written otherwise.
        path = write(
            tmp_path,
            "t.csv",
            f'id,priority,payload,available_at\na,3,"{{ ""x"":1.0 }}",{unix(turn)}\n',
        )
        out = run_import(path, "--namespace", "ns", "--on-conflict", "update")
        assert "updated 0, skipped 1 (1 unchanged)" in out
        assert stored("updated_at", "available_at") == before

    def test_another_second_moves_the_turn(self, tmp_path, clock):
        make_namespace("ns")
        make_task("a", "ns")
        make_task("b", "ns")
        earlier = unix(turn_of("a")) - 1
        path = write(tmp_path, "t.csv", f"id,available_at\nb,{earlier}\n")
        assert "updated 1" in run_import(path, "--namespace", "ns", "--on-conflict", "update")
        assert stored("available_at")["b"] == (at(earlier),)
        assert capture_order("ns") == ["b", "a"]

    def test_a_finished_task_set_waiting_takes_the_turn_given_or_else_now(self, tmp_path, clock):
        make_namespace("ns")
        make_task("done-later", "ns", status="done")
        make_task("done-now", "ns", status="done")
        make_task("dead", "ns", status="failed", retries_left=0)
        later = unix(clock.now()) + 100
        clock.advance(5)
        path = write(
            tmp_path,
            "t.csv",
            "id,status,retries_left,available_at\n"
            f"done-later,idle,,{later}\ndone-now,idle,,\ndead,,1,{later + 1}\n",
        )
        assert "updated 3" in run_import(path, "--namespace", "ns", "--on-conflict", "update")
        rows = stored("status", "available_at")
        assert rows["done-later"] == ("idle", at(later))
        assert rows["done-now"] == ("idle", clock.now())
        assert rows["dead"] == ("failed", at(later + 1))

    def test_available_at_for_a_task_that_stays_done_is_rejected(self, tmp_path):
        make_namespace("ns")
        make_task("done", "ns", status="done")
        path = write(tmp_path, "t.csv", "id,available_at\ndone,5\nnew,5\n")
        _, lines = failing_import(path, "--namespace", "ns", "--on-conflict", "update")
        assert lines == ["line 2: available_at only for an idle or failed task (status is done)"]

    def test_a_leased_task_is_skipped_whatever_the_row_gives(self, tmp_path, clock):
        make_namespace("ns")
        make_task("leased", "ns", payload=[1])
        capture_tasks(namespace_id="ns", limit=1)
        before = stored()
        path = write(tmp_path, "t.csv", 'id,priority,payload,available_at\nleased,9,"[2]",5\n')
        out = run_import(path, "--namespace", "ns", "--on-conflict", "update")
        assert "imported 0, updated 0, skipped 1, rejected 0" in out
        assert stored() == before


def populate(clock) -> None:
    """Tasks of every kind: waiting in one second in an order the ids do not
    follow, at several priorities, delayed, failed, finished and leased, with
    payloads of every JSON kind and a large one."""
    make_namespace("ns")
    make_namespace("other")
    now = clock.now()
    soon = unix(now) + 30
    nested = {
        "user": {"name": "Zoë Ångström", "tags": ["ä", "東京", "🎉"], "active": True},
        "numbers": [0, -7, 3.5, 1e-3, 2**63 - 1, 12345678901234567890],
        "empty": {"list": [], "object": {}, "string": "", "null": None},
        "quoted": 'a "quote", a \\ and a\nnewline',
    }
    # Over the limit as jsonb writes it, under it compact.
    large = {"items": [1] * 100_000}
    register_tasks(
        tasks=[
            NewTask(id="m-first", namespace_id="ns", payload=nested),
            NewTask(id="c-second", namespace_id="ns", priority=2, payload="text"),
            NewTask(id="z-third", namespace_id="ns", payload=[1, "two", None]),
            NewTask(id="a-fourth", namespace_id="ns", priority=2, payload=large),
            NewTask(id="y-fifth", namespace_id="ns", payload=42),
            NewTask(id="b-sixth", namespace_id="ns", priority=9),
            NewTask(id="x-delayed", namespace_id="ns", available_at=at(soon), payload={"d": 1}),
            NewTask(id="d-delayed", namespace_id="ns", priority=1, available_at=at(soon - 10)),
            NewTask(
                id="f-failed",
                namespace_id="ns",
                status="failed",
                retries_left=2,
                available_at=at(soon + 5),
                payload={"why": "retry"},
            ),
            NewTask(id="dead", namespace_id="ns", status="failed", retries_left=0, payload=1),
            NewTask(id="done", namespace_id="ns", status="done", priority=3, payload=[True]),
            NewTask(id="held", namespace_id="other", payload={"lease": "mine"}),
            NewTask(id="o-waiting", namespace_id="other", payload=False, priority=4),
        ]
    )
    (held,) = capture_tasks(namespace_id="other", limit=1)
    assert held.id == "held"


def comparable() -> dict[str, tuple]:
    """The stored columns an export carries, the turn to the second (a file
    holds whole seconds), and whether a task is leased (an imported lease
    starts at the import)."""
    rows = stored()
    return {
        task_id: (
            *row[:6],
            None if row[6] is None or row[3] == "in_progress" else whole_second(row[6]),
            row[7] is not None,
        )
        for task_id, row in rows.items()
    }


def capture_everything(clock) -> list[str]:
    """Every capture of both namespaces once all turns have come, undone after."""
    with transaction.atomic():
        clock.advance(60)
        order = capture_order("ns") + capture_order("other")
        transaction.set_rollback(True)
    return order


class TestRoundTrip:
    @pytest.mark.parametrize("fmt", ["csv", "jsonl", "csv.gz", "jsonl.gz"])
    def test_export_then_import_reproduces_the_rows_and_the_queue(self, tmp_path, clock, fmt):
        populate(clock)
        before = comparable()
        exact_turns = stored("available_at")
        order = capture_everything(clock)
        assert order == [
            *("m-first", "z-third", "y-fifth", "x-delayed", "f-failed"),
            *("d-delayed", "c-second", "a-fourth", "b-sixth", "o-waiting"),
        ]
        path = export(tmp_path, fmt)
        Task.objects.all().delete()
        clock.advance(1)
        assert "imported 13, updated 0, skipped 0, rejected 0" in run_import(path)
        assert comparable() == before
        # A turn given in whole seconds is kept exactly.
        after = stored("available_at")
        for task_id in ("x-delayed", "d-delayed", "f-failed"):
            assert after[task_id] == exact_turns[task_id]
        assert capture_everything(clock) == order

    @pytest.mark.parametrize("fmt", ["csv", "jsonl"])
    def test_an_unchanged_export_updates_nothing(self, tmp_path, clock, fmt):
        populate(clock)
        before = stored("updated_at", *FIELDS, "lease_token")
        path = export(tmp_path, fmt)
        clock.advance(1)
        out = run_import(path, "--on-conflict", "update")
        assert "imported 0, updated 0, skipped 13 (12 unchanged), rejected 0" in out
        assert stored("updated_at", *FIELDS, "lease_token") == before

    def test_csv_export_writes_json_text_and_unix_seconds(self, tmp_path, clock):
        populate(clock)
        soon = unix(clock.now()) + 30
        lines = Path(export(tmp_path, "csv", "--namespace", "ns")).read_text().splitlines()
        assert lines[0] == (
            "id,namespace_id,timeout,retries_left,status,priority,payload,available_at"
        )
        rows = {line.split(",", 1)[0]: line for line in lines[1:]}
        assert rows["x-delayed"] == f'x-delayed,ns,300,3,idle,0,"{{""d"": 1}}",{soon}'
        assert rows["f-failed"] == (
            f'f-failed,ns,300,2,failed,0,"{{""why"": ""retry""}}",{soon + 5}'
        )
        # No turn: finished, failed for good, or leased.
        assert rows["dead"] == "dead,ns,300,0,failed,0,1,"
        assert rows["done"] == "done,ns,300,3,done,3,[true],"
        assert rows["b-sixth"] == f"b-sixth,ns,300,3,idle,9,,{unix(turn_of('b-sixth'))}"

    def test_jsonl_export_writes_json_values_and_no_turn_for_a_lease(self, tmp_path, clock):
        populate(clock)
        lines = Path(export(tmp_path, "jsonl", "--namespace", "other")).read_text().splitlines()
        items = [json.loads(line) for line in lines]
        # By priority: the leased task (0) before the waiting one (4).
        assert [item["id"] for item in items] == ["held", "o-waiting"]
        assert items[0] == {
            "id": "held",
            "namespace_id": "other",
            "timeout": 300,
            "retries_left": 3,
            "status": "in_progress",
            "priority": 0,
            "payload": {"lease": "mine"},
            "available_at": None,
        }
        assert items[1]["payload"] is False
        assert items[1]["available_at"] == unix(turn_of("o-waiting"))

    def test_export_lists_each_namespace_in_queue_order(self, tmp_path, clock):
        populate(clock)
        lines = Path(export(tmp_path, "csv", "--namespace", "ns")).read_text().splitlines()
        assert [line.split(",", 1)[0] for line in lines[1:]] == [
            "m-first",
            "z-third",
            "y-fifth",
            "x-delayed",
            "f-failed",
            "dead",
            "d-delayed",
            "c-second",
            "a-fourth",
            "done",
            "b-sixth",
        ]
