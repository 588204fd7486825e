from django.apps import AppConfig


class ApikeysAppConfig(AppConfig):
    name = "apikeys_app"
    verbose_name = "API keys"
