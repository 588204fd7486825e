import re

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client


@pytest.fixture
def superuser(db: None) -> User:
    return User.objects.create_superuser("root", "root@example.com", "pw-for-tests-only")


@pytest.fixture
def admin_client(superuser: User) -> Client:
    client = Client()
    client.force_login(superuser)
    return client


def staff_with(*codenames: str) -> User:
    user = User.objects.create_user("staff", "staff@example.com", "pw", is_staff=True)
    for codename in codenames:
        app_label, code = codename.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=code)
        )
    return User.objects.get(pk=user.pk)  # fresh permission cache


@pytest.fixture
def viewer_client(db: None) -> Client:
    """Staff who may look at tasks and namespaces but not change them."""
    client = Client()
    client.force_login(staff_with("tasks_app.view_task", "namespaces_app.view_namespace"))
    return client


def save_buttons(html: str) -> list[str]:
    """The admin's submit buttons on a page: Save, Save and continue, ..."""
    return re.findall(r'name="(_save|_continue|_addanother|_saveasnew)"', html)
