"""When a call is sent again, and how long to wait before it.

A call is retried only when sending it again cannot do harm:

- `IDEMPOTENT` calls (reads, DELETE, PATCH of settings, and the fenced
  release and extend, which act only under the lease's token) are retried
  after any transport failure, a 502/503/504 and a 429. Sent twice, they
  change nothing more than once (a DELETE whose first sending succeeded
  unseen answers 404 the second time, which the client takes for success).
- `UNSENT_ONLY` calls (capture, registration) are retried only when the
  request provably never reached the service: a connect error, a 429, or a
  503 (the server answers 503 only for requests that changed nothing). After
  a lost answer (a read timeout, a dropped connection) they are not: a
  capture sent again could lease more tasks to us while the first answer's
  leases wait out their timeout, and a registration sent again could answer
  409 for its own success. Those raise `Unavailable` with code `no_answer`.

Waits grow exponentially with full jitter (uniform in [0, min(max_backoff,
backoff * 2**n)]), and are never shorter than the server's `Retry-After`
(capped at `max_backoff`, so a client is never parked for long).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx


class Safety(enum.Enum):
    IDEMPOTENT = "idempotent"
    UNSENT_ONLY = "unsent_only"


# Transport failures after which the request provably never reached the
# server: no connection was made, or none was free in the pool.
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
# Answered by the service itself, before or instead of running the request.
_UNSENT_STATUSES = frozenset({429, 503})


def never_sent(exc: httpx.TransportError) -> bool:
    return isinstance(exc, _UNSENT)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (0 for the first)."""
        # Capped exponent: past ~60 doublings the ceiling is max_backoff
        # anyway, and an unbounded one overflows the float multiplication.
        ceiling = min(self.max_backoff, self.backoff * (2 ** min(retry, 60)))
        wait = random.uniform(0, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff))
        return wait

    def retries_transport(self, exc: httpx.TransportError, safety: Safety) -> bool:
        return safety is Safety.IDEMPOTENT or never_sent(exc)

    def retries_status(self, status: int, safety: Safety) -> bool:
        if safety is Safety.IDEMPOTENT:
            return status in RETRIED_STATUSES
        return status in _UNSENT_STATUSES


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The `Retry-After` header in seconds (delta-seconds or an HTTP date)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
