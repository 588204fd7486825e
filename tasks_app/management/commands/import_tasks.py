"""`manage.py import_tasks`: load tasks from CSV or JSON Lines at COPY speed."""

import csv
import sys
from argparse import ArgumentParser
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from tasks_app.bulk import (
    FORMATS,
    ON_CONFLICT,
    ImportFileError,
    ImportOptionError,
    ImportResult,
    Rejection,
    detect_format,
    import_tasks,
    open_source,
)

EXIT_REJECTED = 1
EXIT_BAD_FILE = 2
SHOWN_REJECTIONS = 20


class Command(BaseCommand):
    help = (
        "Import tasks from a CSV or JSON Lines file (optionally gzipped), or '-' for "
        "standard input. All or nothing unless --skip-invalid."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("file", help="Path to a .csv, .jsonl (or .gz of either), or '-'.")
        parser.add_argument(
            "--namespace", help="Namespace of every row (else a namespace_id column)."
        )
        parser.add_argument("--format", choices=FORMATS, help="Default: from the file's extension.")
        parser.add_argument(
            "--on-conflict",
            choices=ON_CONFLICT,
            default="error",
            help="An id that is already registered: a rejected row (default), skip it, "
            "or update the columns the file gives.",
        )
        parser.add_argument(
            "--create-namespace",
            action="store_true",
            help="Register namespaces the file names that do not exist yet.",
        )
        parser.add_argument(
            "--skip-invalid",
            action="store_true",
            help="Import the good rows and write the bad ones to the rejects file.",
        )
        parser.add_argument(
            "--rejects",
            help="Where to write rejected rows (CSV). Default: next to the input, "
            "<file>.rejects.csv (import-rejects.csv for standard input).",
        )
        parser.add_argument("--quiet", action="store_true", help="No progress bar.")

    def handle(self, *args: Any, **options: Any) -> None:
        name: str = options["file"]
        fmt = options["format"] or detect_format(name)
        if fmt is None:
            raise CommandError(
                f"Cannot tell the format of {name!r} from its name; pass --format csv|jsonl.",
                returncode=EXIT_BAD_FILE,
            )
        rejects_path = Path(
            options["rejects"]
            or ("import-rejects.csv" if name == "-" else f"{name.removesuffix('.gz')}.rejects.csv")
        )
        show_bar = not options["quiet"] and sys.stderr.isatty()
        bar = None
        if show_bar:
            from tqdm import tqdm

            bar = tqdm(unit=" rows", unit_scale=True, desc="importing", file=sys.stderr)

        write_rejections: Callable[[tuple[str, ...], Iterator[Rejection]], None] | None = None
        if options["skip_invalid"] or options["rejects"]:

            def write_rejections(columns: tuple[str, ...], rejections: Iterator[Rejection]) -> None:
                _write_rejects(rejects_path, columns, rejections)

        try:
            raw = sys.stdin.buffer if name == "-" else open(name, "rb")
        except OSError as exc:
            raise CommandError(
                f"Cannot open {name!r}: {exc.strerror}.", returncode=EXIT_BAD_FILE
            ) from None
        try:
            result = import_tasks(
                source=open_source(raw),
                fmt=fmt,
                namespace=options["namespace"],
                on_conflict=options["on_conflict"],
                create_namespace=options["create_namespace"],
                skip_invalid=options["skip_invalid"],
                write_rejections=write_rejections,
                progress=bar.update if bar is not None else None,
            )
        except ImportOptionError as exc:
            raise CommandError(f"{exc}.", returncode=EXIT_BAD_FILE) from None
        except ImportFileError as exc:
            raise CommandError(f"{name}: {exc}", returncode=EXIT_BAD_FILE) from None
        finally:
            if bar is not None:
                bar.close()
            if raw is not sys.stdin.buffer:
                raw.close()
        self._report(result, rejects_path if write_rejections is not None else None)

    def _report(self, result: ImportResult, rejects_path: Path | None) -> None:
        for rejection in result.rejections[:SHOWN_REJECTIONS]:
            self.stderr.write(f"line {rejection.line}: {rejection.reason}")
        if result.rejected > SHOWN_REJECTIONS:
            hint = (
                f" (all in {rejects_path})" if rejects_path else " (--rejects PATH writes them all)"
            )
            self.stderr.write(f"... and {result.rejected - SHOWN_REJECTIONS} more{hint}")
        elif result.rejected and rejects_path:
            self.stderr.write(f"rejected rows written to {rejects_path}")
        unchanged = f" ({result.unchanged} unchanged)" if result.unchanged else ""
        summary = (
            f"imported {result.imported}, updated {result.updated}, "
            f"skipped {result.skipped}{unchanged}, "
            f"rejected {result.rejected} in {result.seconds:.2f} s "
            f"({result.rows_per_second:,.0f} rows/s)"
        )
        if not result.committed:
            self.stdout.write(summary)
            raise CommandError(
                f"{result.rejected} invalid row(s): nothing was imported. Fix them, or pass "
                "--skip-invalid to import the valid rows only.",
                returncode=EXIT_REJECTED,
            )
        self.stdout.write(summary)


def _write_rejects(path: Path, columns: tuple[str, ...], rejections: Iterator[Rejection]) -> None:
    """The rejected rows with their line and reason, then the file's columns
    (every column for JSON Lines, a payload as its compact JSON text): less
    the first two columns, a file to fix and import again."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["line", "reason", *columns])
        for rejection in rejections:
            writer.writerow([rejection.line, rejection.reason, *rejection.values])
