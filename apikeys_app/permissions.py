"""Role checks for token-authenticated API calls."""

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from apikeys_app.models import ApiToken, Role


class TokenRole(BasePermission):
    """Allow an action when the token's role reaches the one the view requires.

    Views declare `required_roles`, a map from action name to Role; an action
    not listed needs the operator role, so a new endpoint is closed by default.
    """

    message = "This token's role may not do this."

    def has_permission(self, request: Request, view: Any) -> bool:
        token = request.auth
        if not isinstance(token, ApiToken):
            return False
        action = getattr(view, "action", None)
        if action == "metadata":  # OPTIONS describes, it does not act
            return True
        required = getattr(view, "required_roles", {}).get(action, Role.OPERATOR)
        if token.allows(required):
            return True
        self.message = (
            f"This token's role ({token.role}) may not do this; it needs the {required} role."
        )
        return False


def token_scope(request: Request) -> frozenset[str] | None:
    """The namespaces the request's token is limited to, or None for all."""
    token = request.auth
    return token.namespace_scope if isinstance(token, ApiToken) else frozenset()
