"""A PostgreSQL server of a test's own, to stop, pause and reconfigure.

Real faults need a real server that nothing else uses: the binaries are the
ones the embedded database runs (pgserver's), the cluster lives in a fresh
directory, listens on a free TCP port of 127.0.0.1, and is destroyed at the
end. As root, PostgreSQL runs as the unprivileged `pgserver` user that the
embedded database already uses.
"""

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from pgserver._commands import POSTGRES_BIN_PATH  # type: ignore[import-untyped]

SYSTEM_USER = "pgserver" if os.geteuid() == 0 else None


def ensure_system_user() -> None:
    """The `pgserver` user, and its access to the binaries, as the embedded database sets up.

    Done here too: with DATABASE_URL set, no embedded server may have started
    on this machine yet.
    """
    from pgserver.utils import (  # type: ignore[import-untyped]
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    assert SYSTEM_USER is not None
    try:
        ensure_user_exists(SYSTEM_USER)
    except subprocess.CalledProcessError:
        # Another process of the test run added it at the same moment.
        pwd.getpwnam(SYSTEM_USER)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="taskq-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.port = free_port()
        if SYSTEM_USER is not None:
            ensure_system_user()
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "utf8")

    def _run(self, program: str, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [str(POSTGRES_BIN_PATH / program), *args],
            check=True,
            user=SYSTEM_USER,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.root / "log"),
            "-o",
            f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop")

    def pids(self) -> list[int]:
        """The postmaster and every process it started."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        found = [postmaster]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                found.append(int(entry.name))
        return found

    def pause(self) -> list[int]:
        """SIGSTOP the whole server: connections stay open and nothing answers."""
        pids = self.pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    @staticmethod
    def resume(pids: list[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.resume(self.pids())
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def wait_for(predicate, *, timeout: float = 30, interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true within {timeout}s: {predicate}")
        time.sleep(interval)
