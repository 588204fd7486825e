from django.contrib import admin

from apikeys_app.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["name", "prefix", "hashed_key", "created_at", "last_used_at", "revoked_at"]
    search_fields = ["name", "prefix"]

    def has_add_permission(self, request: object) -> bool:
        # Secrets are shown exactly once, by `manage.py create_api_token`.
        return False
