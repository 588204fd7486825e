"""API tokens in the admin."""

import re

from django.contrib.admin.models import LogEntry
from django.forms.models import model_to_dict
from rest_framework.test import APIClient

from apikeys_app.models import ApiToken
from tests.admin.conftest import save_buttons

URL = "/admin/apikeys_app/apitoken/"


def test_creating_a_token_shows_its_secret_once_and_stores_only_its_hash(admin_client):
    r = admin_client.post(f"{URL}add/", {"name": "pool-a", "role": "worker"})
    assert r.status_code == 200
    assert "no-store" in r["Cache-Control"]
    found = re.search(r'id="taskq-new-token"[^>]*>([^<]+)<', r.content.decode())
    assert found
    secret = found.group(1)
    token = ApiToken.objects.get(name="pool-a")
    assert secret not in {token.hashed_key, token.prefix}
    assert secret.startswith(token.prefix)
    # The token works against the API ...
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.get("/v1/namespace").status_code == 200
    # ... and the admin never shows the secret again.
    assert secret not in admin_client.get(f"{URL}{token.pk}/change/").content.decode()
    assert secret not in admin_client.get(URL).content.decode()


def test_the_token_add_page_can_save(admin_client):
    assert "_save" in save_buttons(admin_client.get(f"{URL}add/").content.decode())


def test_a_token_page_is_read_only_and_never_shows_the_hash(admin_client, token):
    target = ApiToken.objects.get()
    r = admin_client.get(f"{URL}{target.pk}/change/")
    assert r.status_code == 200
    html = r.content.decode()
    assert save_buttons(html) == []
    assert 'name="namespaces"' not in html
    assert target.hashed_key not in html
    assert "every namespace" in html


def test_a_forged_post_to_a_token_page_changes_nothing(admin_client, token):
    target = ApiToken.objects.get()
    before = model_to_dict(target)
    r = admin_client.post(
        f"{URL}{target.pk}/change/",
        {
            "name": "renamed",
            "role": "read-only",
            "namespaces": "elsewhere",
            "hashed_key": "0" * 64,
            "_save": "Save",
        },
    )
    assert r.status_code == 403
    assert model_to_dict(ApiToken.objects.get()) == before
    assert not LogEntry.objects.exists()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.post("/v1/namespace", {"id": "still-an-operator"}, format="json").status_code == 201


def test_token_list_shows_name_last_use_and_scope(admin_client, token):
    html = admin_client.get(URL).content.decode()
    assert "test-worker" in html
    assert "every namespace" in html
    assert "operator" in html
    assert "active" in html


def test_revoking_a_token_from_the_admin(admin_client, token):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/v1/namespace").status_code == 200
    target = ApiToken.objects.get()
    r = admin_client.post(URL, {"action": "revoke", "_selected_action": [target.pk]}, follow=True)
    assert "Revoked 1 token(s)." in r.content.decode()
    assert api.get("/v1/namespace").status_code == 401
