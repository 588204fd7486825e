import hashlib

from django.db import models


def hash_secret(secret: str) -> str:
    """SHA-256 of a token's secret.

    Tokens are 256-bit random strings, so a fast hash is enough: there is no
    low-entropy password to stretch, and a slow KDF would tax every request.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiToken(models.Model):
    """A bearer token for the v1 API. Only its hash is stored."""

    name = models.CharField(max_length=100)
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
