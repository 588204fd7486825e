"""API tokens in the admin: create (the secret is shown once), list, revoke.

A token's page is read-only, with no Save buttons: its role and scope are
fixed when it is issued (for another scope, issue a new token and revoke the
old one), and the stored hash is never shown.
"""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html

from apikeys_app import services
from apikeys_app.models import ApiToken, Role
from taskq_project.admin_site import timestamp
from taskq_project.ids import id_problem


class ApiTokenAddForm(forms.ModelForm):
    namespaces = forms.CharField(
        required=False,
        help_text="Comma-separated namespace ids the token is limited to; empty for every "
        "namespace.",
    )

    class Meta:
        model = ApiToken
        fields = ["name", "role", "namespaces", "expires_at"]

    def clean_namespaces(self) -> list[str]:
        raw = self.cleaned_data.get("namespaces") or ""
        names = sorted({part.strip() for part in raw.split(",") if part.strip()})
        for name in names:
            problem = id_problem(name)
            if problem:
                raise forms.ValidationError(f"{name!r}: id {problem}.")
        return names


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "prefix",
        "role_name",
        "scope",
        "created",
        "last_used",
        "expires",
        "state",
    ]
    list_filter = ["role", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix"]
    actions = ["revoke"]
    readonly_fields = [
        "name",
        "prefix",
        "role",
        "scope",
        "created",
        "expires",
        "last_used",
        "revoked",
    ]

    @admin.display(description="role", ordering="role")
    def role_name(self, token: ApiToken) -> str:
        # The role's name alone: its description ("worker: also capture and
        # release") wrapped the column onto four lines. It stays a hover away,
        # and on the token's page.
        return format_html('<abbr title="{}">{}</abbr>', Role(token.role).label, token.role)

    @admin.display(description="created at", ordering="created_at")
    def created(self, token: ApiToken) -> str:
        return timestamp(token.created_at)

    @admin.display(description="expires at", ordering="expires_at")
    def expires(self, token: ApiToken) -> str:
        return timestamp(token.expires_at) if token.expires_at else "never"

    @admin.display(description="last used at", ordering="last_used_at")
    def last_used(self, token: ApiToken) -> str:
        return timestamp(token.last_used_at) if token.last_used_at else "never"

    @admin.display(description="revoked at", ordering="revoked_at")
    def revoked(self, token: ApiToken) -> str:
        return timestamp(token.revoked_at)

    @admin.display(description="namespaces")
    def scope(self, token: ApiToken) -> str:
        return ", ".join(token.namespaces) if token.namespaces else "every namespace"

    @admin.display(description="state")
    def state(self, token: ApiToken) -> str:
        if not token.is_active:
            return format_html("revoked {}", timestamp(token.revoked_at))
        if token.expires_at is not None and token.expires_at <= timezone.now():
            return format_html("expired {}", timestamp(token.expires_at))
        return "active"

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        revoked = services.revoke_tokens(queryset=queryset)
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = ApiTokenAddForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        # Named, not derived from the model: the default would list every
        # other column, the hash among them.
        return self.readonly_fields if obj is not None else super().get_fields(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        return self.readonly_fields if obj is not None else []

    def has_change_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        # No token is edited in a form: its page has no Save buttons and a
        # POST to it is refused. The list's change permission stays, for the
        # revoke action.
        if obj is not None:
            return False
        return super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if change:
            # Unreachable while change pages are read-only; a new secret must
            # never be issued for an existing token.
            raise PermissionDenied
        # Kept on the request only, to render it once in response_add.
        request._taskq_new_secret = services.issue_secret(obj)  # type: ignore[attr-defined]
        obj.save()

    def response_add(
        self, request: HttpRequest, obj: ApiToken, post_url_continue: str | None = None
    ) -> HttpResponse:
        # Rendered directly, not via a redirect and a message: the secret must
        # never be stored in a cookie or the session.
        context = {
            **self.admin_site.each_context(request),
            "title": "Token created",
            "opts": self.model._meta,
            "token": obj,
            "secret": request._taskq_new_secret,  # type: ignore[attr-defined]
        }
        response = TemplateResponse(request, "admin/apikeys_app/token_created.html", context)
        response["Cache-Control"] = "no-store"
        return response
