from typing import Any

from django.apps import AppConfig
from django.core import checks


class ApikeysAppConfig(AppConfig):
    name = "apikeys_app"
    verbose_name = "API keys"

    def ready(self) -> None:
        checks.register(check_throttle_rates)


def check_throttle_rates(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Refuse to start with a rate that cannot be parsed, rather than never throttle."""
    from django.conf import settings

    from apikeys_app.throttling import parse_rate

    errors: list[checks.CheckMessage] = []
    for role, rate in settings.TASKQ_THROTTLE_RATES.items():
        try:
            parse_rate(rate)
        except ValueError as exc:
            errors.append(checks.Error(f"{role} throttle: {exc}", id="taskq.E001"))
    return errors
