"""A worker process for the live tests: `python worker_script.py URL TOKEN NS GRACE DIR`.

Handlers print `started ID` and block: task `quick` until the file
DIR/release-quick exists, every other task forever. Worker events print
as `event KIND ID`. Lines are flushed, so a test can follow them.
"""

import sys
import threading
import time
from pathlib import Path

from taskq_client import Client, Lease, Worker

_out = threading.Lock()


def say(line: str) -> None:
    # One write per line, under a lock: handlers print from several threads.
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main() -> None:
    url, token, namespace, grace, directory = sys.argv[1:6]
    gate = Path(directory) / "release-quick"

    def handler(lease: Lease) -> str:
        say(f"started {lease.id}")
        while not (lease.id == "quick" and gate.exists()):
            time.sleep(0.02)
        return "finished"

    def on_event(kind: str, lease: Lease | None) -> None:
        say(f"event {kind} {lease.id if lease else '-'}")

    with Client(url, token) as client:
        Worker(
            client, namespace, handler, concurrency=2, grace=float(grace), on_event=on_event
        ).run()
    say("exit")


if __name__ == "__main__":
    main()
