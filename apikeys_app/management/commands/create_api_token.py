from argparse import ArgumentParser
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apikeys_app.models import Role
from apikeys_app.services import create_token
from taskq_project.ids import id_problem


class Command(BaseCommand):
    help = (
        "Create an API token and print it as the last line. Without options the token "
        "has full API access (operator role, every namespace, no expiry)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name", help="A label to recognise the token by, e.g. the worker pool.")
        parser.add_argument(
            "--role",
            choices=Role.values,
            default=Role.OPERATOR,
            help="worker: read, list, capture, release; operator: also register and "
            "delete; read-only: read and list.",
        )
        parser.add_argument(
            "--namespace",
            action="append",
            default=[],
            metavar="NS",
            help="Limit the token to this namespace (repeatable). Default: every namespace.",
        )
        parser.add_argument(
            "--expires", type=int, metavar="DAYS", help="Expire the token after DAYS days."
        )

    def handle(self, *args: Any, name: str, **options: Any) -> None:
        name = name.strip()
        if not name or len(name) > 100:
            raise CommandError("NAME must be 1 to 100 characters.")
        for namespace in options["namespace"]:
            problem = id_problem(namespace)
            if problem:
                raise CommandError(f"--namespace {namespace!r}: id {problem}.")
        days = options["expires"]
        if days is not None and not 1 <= days <= 36500:
            raise CommandError("--expires takes 1 to 36500 days.")
        token, secret = create_token(
            name=name,
            role=options["role"],
            namespaces=options["namespace"],
            expires_in=timedelta(days=days) if days is not None else None,
        )
        scope = ", ".join(token.namespaces) if token.namespaces else "every namespace"
        expiry = (
            f"expires {token.expires_at:%Y-%m-%d %H:%M} UTC" if token.expires_at else "no expiry"
        )
        self.stdout.write(
            f"Created token {token.name!r} (id {token.pk}): role {token.role}, {scope}, "
            f"{expiry}. It is shown once; store it now."
        )
        self.stdout.write(secret)
