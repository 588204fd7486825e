"""`manage.py export_tasks`: stream tasks out in a format `import_tasks` reads back."""

import gzip
import sys
from argparse import ArgumentParser
from typing import IO, Any

from django.core.management.base import BaseCommand, CommandError

from namespaces_app.models import Namespace
from tasks_app.bulk import FORMATS, detect_format, export_tasks
from tasks_app.models import TaskStatus


class Command(BaseCommand):
    help = "Export tasks as CSV or JSON Lines (gzipped when the output ends in .gz)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--namespace", help="Only this namespace's tasks.")
        parser.add_argument(
            "--status", choices=TaskStatus.values, help="Only tasks in this status."
        )
        parser.add_argument(
            "--format", choices=FORMATS, help="Default: from -o's extension, else csv."
        )
        parser.add_argument("-o", "--output", default="-", help="File to write, or '-' (default).")

    def handle(self, *args: Any, **options: Any) -> None:
        output: str = options["output"]
        fmt = options["format"] or (detect_format(output) if output != "-" else None) or "csv"
        namespace = options["namespace"]
        if namespace is not None and not Namespace.objects.filter(pk=namespace).exists():
            raise CommandError(f"Namespace {namespace!r} is not registered.", returncode=2)
        out: IO[bytes]
        if output == "-":
            out = sys.stdout.buffer
        elif output.endswith(".gz"):
            out = gzip.open(output, "wb")  # type: ignore[assignment]
        else:
            out = open(output, "wb")
        try:
            count = export_tasks(out=out, fmt=fmt, namespace=namespace, status=options["status"])
        finally:
            if out is not sys.stdout.buffer:
                out.close()
            else:
                out.flush()
        self.stderr.write(f"exported {count} task(s)")
