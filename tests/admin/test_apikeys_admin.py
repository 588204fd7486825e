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


def test_the_token_list_names_the_role_in_a_word_and_dates_to_the_second(admin_client, token):
    target = ApiToken.objects.get()
    html = admin_client.get(URL).content.decode()
    role = re.search(r'<td class="field-role_name">(.*?)</td>', html, re.S)
    # The role's description, which wrapped the column, is its title.
    assert (
        role and role.group(1) == '<abbr title="operator: also register and delete">operator</abbr>'
    )
    created = re.search(r'<td class="field-created">(.*?)</td>', html, re.S)
    assert created and target.created_at.strftime("%Y-%m-%d %H:%M:%S") + "\xa0UTC" in created[1]
    assert '<td class="field-last_used">never</td>' in html
    assert '<td class="field-expires">never</td>' in html
    assert '<td class="field-state">active</td>' in html


def test_a_revoked_token_says_when_to_the_second(admin_client, token):
    target = ApiToken.objects.get()
    admin_client.post(URL, {"action": "revoke", "_selected_action": [target.pk]})
    target.refresh_from_db()
    assert target.revoked_at is not None
    html = admin_client.get(URL).content.decode()
    when = target.revoked_at.strftime("%Y-%m-%d %H:%M:%S")
    assert re.search(rf'<td class="field-state">revoked <time datetime="[^"]+">{when}\xa0UTC', html)
    page = admin_client.get(f"{URL}{target.pk}/change/").content.decode()
    assert f"{when}\xa0UTC" in page


def test_djangos_own_pages_show_times_to_the_second_with_their_zone(admin_client, admin_user):
    from datetime import UTC, datetime

    from django.contrib.admin.models import CHANGE, LogEntry
    from django.contrib.contenttypes.models import ContentType

    entry = LogEntry.objects.create(
        user=admin_user,
        content_type=ContentType.objects.get_for_model(admin_user),
        object_id=str(admin_user.pk),
        object_repr=str(admin_user),
        action_flag=CHANGE,
        change_message="Changed nothing.",
    )
    LogEntry.objects.filter(pk=entry.pk).update(
        action_time=datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    )
    page = admin_client.get(f"/admin/auth/user/{admin_user.pk}/history/").content.decode()
    assert "2026-03-04 05:06:07 UTC" in page
