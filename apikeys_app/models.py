import hashlib

from django.contrib.postgres.fields import ArrayField
from django.db import models


def hash_secret(secret: str) -> str:
    """SHA-256 of a token's secret.

    Tokens are 256-bit random strings, so a fast hash is enough: there is no
    low-entropy password to stretch, and a slow KDF would tax every request.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


class Role(models.TextChoices):
    """What a token may do, each role including the one before it."""

    READ_ONLY = "read-only", "read-only: read and list"
    WORKER = "worker", "worker: also capture and release"
    OPERATOR = "operator", "operator: also register and delete"


ROLE_RANK = {Role.READ_ONLY: 0, Role.WORKER: 1, Role.OPERATOR: 2}


class ApiToken(models.Model):
    """A bearer token for the v1 API. Only its hash is stored."""

    name = models.CharField(max_length=100)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.OPERATOR)
    # Empty: every namespace. Otherwise the only namespaces the token sees;
    # all others answer as if they did not exist. Ids, not foreign keys, so
    # deleting a namespace never widens a token to "every namespace".
    namespaces = ArrayField(models.CharField(max_length=255), default=list, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # The first characters of the token, kept in clear so operators can tell
    # keys apart in the admin without the secret.
    prefix = models.CharField(max_length=16)
    hashed_key = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @property
    def namespace_scope(self) -> frozenset[str] | None:
        """The namespaces this token is limited to, or None for all."""
        return frozenset(self.namespaces) if self.namespaces else None

    def allows(self, role: str) -> bool:
        return ROLE_RANK[Role(self.role)] >= ROLE_RANK[Role(role)]
