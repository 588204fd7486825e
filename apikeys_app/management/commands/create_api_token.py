from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apikeys_app.services import create_token


class Command(BaseCommand):
    help = "Create an API token with full API access and print it as the last line."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name", help="A label to recognise the token by, e.g. the worker pool.")

    def handle(self, *args: Any, name: str, **options: Any) -> None:
        name = name.strip()
        if not name or len(name) > 100:
            raise CommandError("NAME must be 1 to 100 characters.")
        token, secret = create_token(name=name)
        self.stdout.write(
            f"Created token {token.name!r} (id {token.pk}). It is shown once; store it now."
        )
        self.stdout.write(secret)
