"""The admin API: who may use it, what it changes, and the invariants it keeps."""

from __future__ import annotations

import json

import pytest

from tests.conftest import PASSWORD, Actor, assert_error, bearer

ADMIN_ROUTES = [
    ("GET", "/admin/users"),
    ("GET", "/admin/users/usr_x"),
    ("PATCH", "/admin/users/usr_x"),
    ("DELETE", "/admin/users/usr_x"),
    ("POST", "/admin/users/usr_x/reset-password"),
    ("GET", "/admin/api-keys"),
]


@pytest.fixture
def admin(actor):
    return actor.admin_headers()


def _uid(app, name):
    return next(u for u, r in app.extensions["auth"].users.records() if r["username"] == name)


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_refuse_users_and_anonymous(client, actor, method, path):
    user = actor.user_headers("plainuser")
    key = {"X-API-Key": actor.create_key(user)["key"]}
    for headers in (user, key):
        assert_error(
            client.open(path, method=method, json={}, headers=headers),
            403,
            "INSUFFICIENT_PERMISSIONS",
        )
    assert_error(client.open(path, method=method, json={}), 401, "AUTHENTICATION_REQUIRED")


def test_admin_key_needs_the_admin_scope(client, actor, admin):
    narrow = {"X-API-Key": actor.create_key(admin)["key"]}  # default: no "admin" scope
    assert_error(client.get("/admin/users", headers=narrow), 403, "INSUFFICIENT_PERMISSIONS")
    wide = {"X-API-Key": actor.create_key(admin, scopes=["admin"])["key"]}
    assert client.get("/admin/users", headers=wide).status_code == 200


def test_list_users_pages(client, actor, admin):
    for i in range(5):
        actor.register(f"pager{i}")
    page = client.get("/admin/users?limit=2&offset=1", headers=admin).get_json()
    assert page["total"] == 6 and page["limit"] == 2 and page["offset"] == 1
    assert [u["username"] for u in page["users"]] == ["pager0", "pager1"]
    assert all("password_hash" not in u for u in page["users"])
    assert_error(client.get("/admin/users?limit=0", headers=admin), 400, "VALIDATION_ERROR")
    assert_error(client.get("/admin/users?offset=x", headers=admin), 400, "VALIDATION_ERROR")


def test_get_user(app, client, actor, admin):
    actor.register("viewed")
    uid = _uid(app, "viewed")
    body = client.get(f"/admin/users/{uid}", headers=admin).get_json()
    assert body["username"] == "viewed" and body["api_keys"] == 0
    assert_error(client.get("/admin/users/usr_nope", headers=admin), 404, "NOT_FOUND")


def test_patch_user_fields(app, client, actor, admin):
    actor.register("patched")
    uid = _uid(app, "patched")
    changes = {
        "role": "admin",
        "rate_limit": "7/minute",
        "email": "new@example.org",
        "full_name": "Pat Ched",
    }
    body = client.patch(f"/admin/users/{uid}", json=changes, headers=admin).get_json()
    assert {k: body[k] for k in changes} == changes
    cleared = client.patch(f"/admin/users/{uid}", json={"rate_limit": None}, headers=admin)
    assert cleared.get_json()["rate_limit"] is None
    # An integer is per minute, as auth.rate_limit_per_minute in the config.
    per_minute = client.patch(f"/admin/users/{uid}", json={"rate_limit": 10}, headers=admin)
    assert per_minute.get_json()["rate_limit"] == "10/minute"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"role": "root"}, "role"),
        ({"is_active": "no"}, "is_active"),
        ({"rate_limit": "lots"}, "rate_limit"),
        ({"rate_limit": 0}, "rate_limit"),
        ({"rate_limit": True}, "rate_limit"),
        ({"email": "nope"}, "email"),
        ({"password_hash": "x"}, "password_hash"),
        ({}, None),
    ],
)
def test_patch_validates(app, client, actor, admin, body, field):
    actor.register("validated")
    response = client.patch(f"/admin/users/{_uid(app, 'validated')}", json=body, headers=admin)
    assert assert_error(response, 400, "VALIDATION_ERROR")["details"]["field"] == field


def test_patch_email_conflict(app, client, actor, admin):
    actor.register("first")
    actor.register("second")
    response = client.patch(
        f"/admin/users/{_uid(app, 'second')}", json={"email": "FIRST@example.org"}, headers=admin
    )
    assert_error(response, 409, "CONFLICT")


def test_last_active_admin_is_protected(app, client, actor, admin):
    me = _uid(app, "admin")
    for method, body in (
        ("PATCH", {"role": "user"}),
        ("PATCH", {"is_active": False}),
        ("DELETE", None),
    ):
        response = client.open(f"/admin/users/{me}", method=method, json=body, headers=admin)
        assert_error(response, 409, "CONFLICT")
    actor.register("deputy", role="admin")
    assert (
        client.patch(f"/admin/users/{me}", json={"role": "user"}, headers=admin).status_code == 200
    )
    deputy = bearer(actor.login("deputy", PASSWORD)["access_token"])
    response = client.patch(
        f"/admin/users/{_uid(app, 'deputy')}", json={"is_active": False}, headers=deputy
    )
    assert_error(response, 409, "CONFLICT")


def test_disable_stops_tokens_and_keys_at_once_in_every_worker(app, make_app, client, actor, admin):
    headers = actor.user_headers("disabled")
    key = {"X-API-Key": actor.create_key(headers)["key"]}
    other_worker = Actor(make_app().test_client())
    assert other_worker.predict(headers).status_code == 200
    assert other_worker.predict(key).status_code == 200
    uid = _uid(app, "disabled")
    assert (
        client.patch(f"/admin/users/{uid}", json={"is_active": False}, headers=admin).status_code
        == 200
    )
    for worker in (actor, other_worker):
        assert_error(worker.predict(headers), 401, "INVALID_TOKEN")
        assert_error(worker.predict(key), 401, "INVALID_API_KEY")
    # Enabling again does not bring the ended sessions back, but keys work again.
    client.patch(f"/admin/users/{uid}", json={"is_active": True}, headers=admin)
    assert_error(actor.predict(headers), 401, "INVALID_TOKEN")
    assert actor.predict(key).status_code == 200


def test_delete_user_revokes_everything(app, client, actor, admin):
    headers = actor.user_headers("doomed")
    created = actor.create_key(headers)
    uid = _uid(app, "doomed")
    assert client.delete(f"/admin/users/{uid}", headers=admin).status_code == 200
    assert_error(actor.predict(headers), 401, "INVALID_TOKEN")
    assert_error(actor.predict({"X-API-Key": created["key"]}), 401, "INVALID_API_KEY")
    keys = dict(app.extensions["auth"].keys.records())
    assert keys[created["id"]]["is_active"] is False
    assert_error(client.delete(f"/admin/users/{uid}", headers=admin), 404, "NOT_FOUND")


def test_reset_password(app, client, actor, admin):
    headers = actor.user_headers("forgetful")
    uid = _uid(app, "forgetful")
    weak = client.post(
        f"/admin/users/{uid}/reset-password", json={"new_password": "password"}, headers=admin
    )
    assert_error(weak, 400, "VALIDATION_ERROR")
    done = client.post(
        f"/admin/users/{uid}/reset-password",
        json={"new_password": "a fresh start phrase"},
        headers=admin,
    )
    assert done.status_code == 200 and done.get_json()["sessions_ended"] == 1
    assert_error(actor.predict(headers), 401, "INVALID_TOKEN")
    bad = client.post("/auth/login", json={"username": "forgetful", "password": PASSWORD})
    assert_error(bad, 401, "INVALID_CREDENTIALS")
    actor.login("forgetful", "a fresh start phrase")


def test_admin_lists_and_revokes_any_users_keys(app, client, actor, admin):
    headers = actor.user_headers("keyholder")
    created = actor.create_key(headers, name="theirs")
    listed = client.get("/admin/api-keys?user=keyholder", headers=admin).get_json()
    assert [k["name"] for k in listed["keys"]] == ["theirs"] and listed["total"] == 1
    everyone = client.get("/admin/api-keys", headers=admin).get_json()
    assert everyone["total"] >= 1
    assert_error(client.get("/admin/api-keys?user=ghost", headers=admin), 404, "NOT_FOUND")
    assert client.delete(f"/auth/api-keys/{created['id']}", headers=admin).status_code == 200
    assert_error(actor.predict({"X-API-Key": created["key"]}), 401, "INVALID_API_KEY")


def test_admin_actions_are_audited_with_actor_target_address_request(
    app, client, actor, admin, data_dir
):
    actor.register("audited")
    uid = _uid(app, "audited")
    client.patch(
        f"/admin/users/{uid}",
        json={"rate_limit": "9/minute"},
        headers=admin,
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    )
    client.post(
        f"/admin/users/{uid}/reset-password",
        json={"new_password": "another passphrase"},
        headers={**admin, "X-Request-ID": "req-reset-1"},
    )
    client.delete(f"/admin/users/{uid}", headers=admin)
    text = (data_dir / "audit.log").read_text()
    events = {e["event"]: e for e in map(json.loads, text.splitlines())}
    admin_id = _uid(app, "admin")
    for name in ("user.updated", "user.password_reset", "user.deleted"):
        assert events[name]["actor"] == admin_id and events[name]["user_id"] == uid
        assert events[name]["ip"] == "127.0.0.1" and events[name]["request_id"]
    assert events["user.password_reset"]["request_id"] == "req-reset-1"
    assert "another passphrase" not in text


def test_admin_routes_404_in_simple_mode(make_app):
    client = make_app(auth={"enabled": False}).test_client()
    assert_error(client.get("/admin/users"), 404, "NOT_FOUND")
