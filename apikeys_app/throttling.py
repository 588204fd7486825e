"""Per-token request rate limits, by role.

A fixed-window counter in the shared cache (Redis when configured): one
atomic increment per request. DRF's SimpleRateThrottle keeps every request's
timestamp in a list per client, which at thousands of requests a minute costs
more than the request it guards.
"""

import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from apikeys_app.models import ApiToken

_PERIODS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}


def parse_rate(rate: str | None) -> tuple[int, int] | None:
    """'600/min' -> (600, 60); None or 'none' -> no limit."""
    if rate is None or rate.strip().lower() in {"", "none", "off"}:
        return None
    count, _, period = rate.partition("/")
    try:
        return int(count), _PERIODS[period.strip().lower()]
    except (ValueError, KeyError):
        raise ValueError(f"bad rate {rate!r}: use e.g. 600/min, 20/s, 10000/hour") from None


class TokenRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self._wait = 0.0

    def allow_request(self, request: Request, view: Any) -> bool:
        token = request.auth
        if not isinstance(token, ApiToken):
            return True
        limit = parse_rate(settings.TASKQ_THROTTLE_RATES.get(token.role))
        if limit is None:
            return True
        allowed, period = limit
        now = time.time()
        window = int(now // period)
        key = f"taskq:throttle:{token.pk}:{period}:{window}"
        # add() is a no-op when the key exists; incr() is atomic in Redis and
        # under the local cache's lock.
        cache.add(key, 0, timeout=period + 1)
        try:
            count = cache.incr(key)
        except ValueError:  # the window's key expired between add and incr
            cache.add(key, 1, timeout=period + 1)
            count = 1
        if count <= allowed:
            return True
        self._wait = (window + 1) * period - now
        return False

    def wait(self) -> float | None:
        return max(self._wait, 1.0)
