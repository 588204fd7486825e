"""API tokens in the admin."""

import re

from rest_framework.test import APIClient

from apikeys_app.models import ApiToken

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
