from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from apikeys_app.models import ApiToken
from apikeys_app.services import authenticate_secret


class TokenUser:
    """The request's `user` for token-authenticated calls.

    Tokens are not Django users: a worker's key must never open the admin, so
    it is not attached to an account that could have staff rights.
    """

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, token: ApiToken) -> None:
        self.token = token
        self.pk = None
        self.username = f"token:{token.name}"

    def __str__(self) -> str:
        return self.username


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[TokenUser, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header: expected 'Bearer <token>'."
            )
        try:
            secret = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        token = authenticate_secret(secret)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        return TokenUser(token), token

    def authenticate_header(self, request: Any) -> str:
        return f'{self.keyword} realm="api"'
