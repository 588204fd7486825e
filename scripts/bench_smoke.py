"""`make bench-smoke`: every benchmark at a tiny size, so none rots.

Each runs as its own command, as a person would run it, on the configured
database server; the figures mean nothing at these sizes, but a benchmark
that no longer runs, or no longer verifies what it measured, fails here.
"""

import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

RUNS = [
    ["churn", "--seconds", "2", "--tasks", "1000", "--done-tasks", "1000"],
    [
        "cycle",
        "--rounds",
        "3",
        "--batches",
        "1",
        "10",
        "--history-rows",
        "1000",
        # The tree itself stands in for an earlier checkout.
        "--base-checkout",
        ".",
    ],
    [
        "dashboard",
        "--rows",
        "2000",
        "--baseline-rows",
        "1000",
        "--repeats",
        "1",
        "--warm-ups",
        "0",
        "--throughput-rows",
        "100",
        "--profile-runs",
        "1",
    ],
    ["delays", "--delayed", "2000", "--rounds", "3", "--warm-ups", "1"],
    ["fence", "--rounds", "2", "--batches", "1", "10"],
    ["import_bench", "--rows", "2000", "--no-phases"],
    [
        "long_poll",
        "--waiters",
        "20",
        "--requests",
        "20",
        "--rounds",
        "5",
        "--burst",
        "20",
        "--expiries",
        "1",
        "--window",
        "1",
        "--flush-seconds",
        "0",
        "--skip-return",
    ],
    [
        "metrics_scrape",
        "--rows",
        "2000",
        "--baseline-rows",
        "1000",
        "--more-done",
        "2000",
        "--namespaces",
        "5",
        "--repeats",
        "10",
        "--profile-runs",
        "1",
    ],
    [
        "scaling",
        "--seconds",
        "1",
        "--servers",
        "1",
        "--batches",
        "1",
        "--workers",
        "1",
        "--wal-rounds",
        "2",
    ],
    ["slow_clients", "--slow", "4", "--requests", "5"],
    ["sweep", "--rows", "2000", "--baseline-seconds", "1"],
    ["throughput", "--seconds", "1", "--skip-growth", "--batches", "1", "--workers", "1"],
    [
        "throughput",
        "--seconds",
        "1",
        "--skip-growth",
        "--batches",
        "1",
        "--workers",
        "1",
        "--history",
        "failures",
        "all",
        "--release-as",
        "failed",
        "--payload-bytes",
        "0",
        "1024",
    ],
]


def main() -> int:
    failed = []
    for run in RUNS:
        started = time.monotonic()
        process = subprocess.run(
            [sys.executable, "-m", f"bench.{run[0]}", *run[1:]],
            cwd=BASE_DIR,
            capture_output=True,
            text=True,
        )
        seconds = time.monotonic() - started
        print(f"bench.{run[0]:<14} exit {process.returncode}  {seconds:5.1f} s", flush=True)
        if process.returncode != 0:
            failed.append(run[0])
            print(process.stdout[-3000:] + process.stderr[-3000:], flush=True)
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
