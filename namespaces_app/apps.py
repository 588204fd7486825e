from django.apps import AppConfig


class NamespacesAppConfig(AppConfig):
    name = "namespaces_app"
    verbose_name = "Namespaces"
