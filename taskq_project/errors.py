"""The product's domain errors: plain exceptions, free of HTTP.

Services raise them; the admin and the management commands show their
message; the API edge (taskq_project.api.exception_handler) is the one place
that maps each kind to an HTTP status.
"""

from typing import ClassVar


class DomainError(Exception):
    """A request the product's rules refuse; `code` names the rule for clients."""

    code: ClassVar[str] = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    """What the request names does not exist."""


class Conflict(DomainError):
    """What the request would create exists already."""


class Invalid(DomainError):
    """The request is at fault in what it refers to."""


class Forbidden(DomainError):
    """The caller may not act on what the request names."""
