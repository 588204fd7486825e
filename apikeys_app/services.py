import secrets
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from apikeys_app.models import ApiToken, Role, hash_secret

TOKEN_PREFIX = "tq_"
# How stale `last_used_at` may get: refreshing it on every request would turn
# each read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def issue_secret(token: ApiToken) -> str:
    """Give an unsaved token a new secret; return the secret, which is not stored."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token.prefix = secret[:10]
    token.hashed_key = hash_secret(secret)
    return secret


def create_token(
    *,
    name: str,
    role: str = Role.OPERATOR,
    namespaces: Sequence[str] = (),
    expires_in: timedelta | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; return it and its secret, which is not stored anywhere.

    By default the token has full API access (operator, every namespace, no
    expiry).
    """
    token = ApiToken(
        name=name,
        role=Role(role),
        namespaces=sorted(set(namespaces)),
        expires_at=timezone.now() + expires_in if expires_in is not None else None,
    )
    secret = issue_secret(token)
    token.save()
    return token, secret


# Tokens recently found valid, per process: hashed key -> (token, when looked up).
# Workers call many times a second; a database round trip per call for the
# same token is a real share of a capture's cost. A revocation reaches other
# processes within TASKQ_TOKEN_CACHE_SECONDS.
_recent: dict[str, tuple[ApiToken, float]] = {}


def authenticate_secret(secret: str) -> ApiToken | None:
    """The active token for `secret`, or None. Records its use (coarsely)."""
    hashed = hash_secret(secret)
    now = timezone.now()
    cached = _recent.get(hashed)
    if cached is not None and time.monotonic() - cached[1] < settings.TASKQ_TOKEN_CACHE_SECONDS:
        known = cached[0]
        if known.expires_at is None or known.expires_at > now:
            _record_use(known, now)
            return known
    token = (
        ApiToken.objects.filter(hashed_key=hashed, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=Now()))
        .first()
    )
    if token is None:
        _recent.pop(hashed, None)
        return None
    _recent[hashed] = (token, time.monotonic())
    _record_use(token, now)
    return token


def _record_use(token: ApiToken, now: datetime) -> None:
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=Now())
        token.last_used_at = now


def revoke_token(*, token: ApiToken) -> None:
    revoke_tokens(queryset=ApiToken.objects.filter(pk=token.pk))


def revoke_tokens(*, queryset: QuerySet[ApiToken]) -> int:
    """Revoke the active tokens of `queryset` at once; return how many.

    Effective at once in this process, and within TASKQ_TOKEN_CACHE_SECONDS
    in the others.
    """
    revoked = queryset.filter(revoked_at__isnull=True).update(revoked_at=Now())
    _recent.clear()
    return revoked
