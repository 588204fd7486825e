"""What the benchmarks share: Django set-up, a throwaway database, figures and tables.

Import nothing from Django at module level here: `setup_django()` must run
first, and it sets the environment that the settings read.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

# The settings give every session `statement_timeout=30s`; a benchmark's bulk
# load or VACUUM of millions of rows may take longer than that.
STATEMENT_TIMEOUT_ENV = "TASKQ_DB_STATEMENT_TIMEOUT_MS"

# The environment as it was before `setup_django()` changed it, for
# subprocesses that must run the product exactly as an operator would.
_ORIGINAL_ENVIRON = dict(os.environ)


def setup_django() -> None:
    os.environ[STATEMENT_TIMEOUT_ENV] = "0"
    # django-axes logs its start and every login at INFO: noise between the figures.
    logging.getLogger("axes").setLevel(logging.WARNING)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskq_project.settings")
    import django

    django.setup()


def original_environ() -> dict[str, str]:
    """A copy of the environment this process started with (no lifted statement limit)."""
    return dict(_ORIGINAL_ENVIRON)


# --- The benchmark's own database ---------------------------------------------------


def use_database(name: str) -> None:
    """Point Django's default connection at database `name`; the next query reconnects.

    The switch Django's test runner makes for its test database: both the
    settings and the connection's own copy of them name the new database.
    """
    from django.conf import settings
    from django.db import connection

    connection.close()
    settings.DATABASES["default"]["NAME"] = name
    connection.settings_dict["NAME"] = name


def _drop_and_create(name: str, *, create: bool) -> None:
    from django.db import connection

    quoted = connection.ops.quote_name(name)
    # A session on the maintenance database, whichever database the default
    # connection names: a database cannot be dropped from a session in it.
    # FORCE ends sessions that a crashed earlier run left behind.
    with connection._nodb_cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        if create:
            cursor.execute(f"CREATE DATABASE {quoted}")


@contextmanager
def bench_database(name: str, *, keep: bool = False) -> Iterator[None]:
    """A fresh, migrated database `name` on the configured server, for the `with` block.

    Dropped and created anew on entry, so no rows, bloat or statistics from an
    earlier run remain, and dropped again on exit unless `keep`. The
    configured database is never read or written.
    """
    from django.conf import settings
    from django.core.management import call_command

    home = str(settings.DATABASES["default"]["NAME"])
    if name == home:
        raise SystemExit(f"refusing to benchmark in the configured database {home!r}")
    _drop_and_create(name, create=True)
    use_database(name)
    try:
        call_command("migrate", verbosity=0)
        yield
    finally:
        use_database(home)
        if not keep:
            _drop_and_create(name, create=False)


def database_url() -> str:
    """A DATABASE_URL for the database Django's default connection uses now."""
    from django.db import connection

    from taskq_project.database_url import database_url as url_of

    return url_of(connection.settings_dict)


# --- Describing the run ---------------------------------------------------------------


def machine_description() -> list[tuple[str, str]]:
    """The facts a reader needs to compare two runs: CPUs, server, code, load."""
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT version(), current_setting('shared_buffers')")
        version, shared_buffers = cursor.fetchone()  # type: ignore[misc]
    source = "DATABASE_URL" if "DATABASE_URL" in _ORIGINAL_ENVIRON else "embedded (var/pgdata)"
    host = settings.DATABASES["default"]["HOST"] or "localhost"
    return [
        ("CPUs (nproc)", str(len(os.sched_getaffinity(0)))),
        ("PostgreSQL", str(version)),
        ("server", f"{source}, host {host}, shared_buffers {shared_buffers}"),
        ("code", code_version()),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]


def code_version() -> str:
    """The commit the measured code comes from, and whether the tree differs from it."""
    from django.conf import settings

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(settings.BASE_DIR), *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.rstrip("\n")  # not strip(): porcelain lines start with a space

    try:
        commit = git("rev-parse", "--short", "HEAD")
        status = git("status", "--porcelain").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    # The benchmarks and their results are not the code under test.
    changed = [line[3:] for line in status if not line[3:].startswith(("bench/", "docs/"))]
    if not changed:
        return f"{commit} (clean)"
    return f"{commit} + uncommitted changes: {', '.join(changed)}"


# --- Figures and tables ----------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation): a value that was actually measured."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, title: str | None = None
) -> None:
    """A Markdown table (pasted as is into docs/benchmarks.md); numbers align right."""

    def numeric(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    def blank(value: object) -> bool:
        return value in ("", "-")

    if title:
        print(f"\n{title}\n")
    else:
        print()
    print("| " + " | ".join(headers) + " |")
    # A column of numbers (and blanks) aligns right.
    align = [
        "---:"
        if any(numeric(row[i]) for row in rows)
        and all(numeric(row[i]) or blank(row[i]) for row in rows)
        else "---"
        for i in range(len(headers))
    ]
    print("|" + "|".join(align) + "|")
    for row in rows:
        print("| " + " | ".join(_cell(value) for value in row) + " |")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"
