"""The fault-injection run (scripts/faults.py) in its short form: nothing acknowledged is lost.

About 30 seconds of load by six workers against the real stack, on a
PostgreSQL of the run's own, while every kind of fault is injected at least
once; then the checker (tests/faults/checker.py) must find no violation.
`scripts/faults.py --seconds 120` is the long form.
"""

import importlib.util
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from tests.faults.checker import check

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "faults.py"


def load_script() -> Any:
    # scripts/ is not a package: load the file itself.
    spec = importlib.util.spec_from_file_location("taskq_faults_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_short_fault_injection_run_loses_nothing(tmp_path: Path) -> None:
    faults = load_script()
    seed = random.randrange(1_000_000)
    out = io.StringIO()
    result = faults.run(seconds=30, workers=6, seed=seed, workdir=tmp_path, out=out)
    figures = f"seed {seed}\n{out.getvalue()}"
    print(figures)  # shown with -s or -rP
    assert result.client_failures == {}, figures
    assert all(result.faults[kind] >= 1 for kind in faults.FAULT_KINDS), figures
    stats = result.report.stats
    # The load did run: tasks went through, and some outcomes were lost to faults.
    assert stats["final"].get("done", 0) > 20, figures
    unknown = stats["ops"].get("release unknown", 0) + stats["ops"].get("capture unknown", 0)
    assert unknown > 0, figures
    assert result.report.violations == [], figures

    # The checker tied this history to this table: without the done tasks,
    # it must find acknowledged work lost.
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    final = json.loads((tmp_path / "final.json").read_text())
    final["tasks"] = [task for task in final["tasks"] if task["status"] != "done"]
    sabotaged = check(records, final).counts()
    assert sabotaged["lost_registration"] > 0 and sabotaged["lost_done_release"] > 0, sabotaged
