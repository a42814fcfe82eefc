"""Authorisation follows the scopes of the credential presented, never only the user's role.

An admin's prediction key (or a token from logging in with it) must be as harmless as anyone's:
it predicts, and nothing else. Account management (keys, password, profile) needs account scopes
that password sessions hold and keys hold only when created with them.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import PASSWORD, assert_error, bearer

PUBLIC = {
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/swagger-ui.css"),
    ("GET", "/console"),
    ("GET", "/console/swagger-ui.css"),
    ("POST", "/auth/login"),
    ("POST", "/auth/refresh"),
}
PREDICT = {  # a prediction key predicts, and submits and follows its jobs
    "/predict",
    "/<model_name>/predict",
    "/predict/batch",
    "/jobs",
    "/jobs/<job_id>",
    "/jobs/<job_id>/result",
    "/jobs/<job_id>/cancel",
}
SAMPLE = {
    "model_name": "demo",
    "key_id": "key_0",
    "user_id": "usr_0",
    "name": "demo",
    "asset": "swagger-ui.css",
}


def _non_predict_routes(app):
    for rule in app.url_map.iter_rules():
        if rule.rule in PREDICT:
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: SAMPLE[m.group(1)], rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if (method, path) not in PUBLIC and path != "/auth/logout":
                yield method, path


@pytest.fixture
def admin_predict_key(actor):
    """A predict-only key of the (default) admin, and a token from logging in with it."""
    key = actor.create_key(actor.admin_headers(), scopes=["predict"])["key"]
    tokens = actor.client.post("/auth/login", json={"api_key": key}).get_json()
    return {"X-API-Key": key}, bearer(tokens["access_token"])


@pytest.mark.parametrize("which", ["key", "token from a key login"])
def test_a_predict_only_key_of_an_admin_can_only_predict(app, actor, admin_predict_key, which):
    headers = admin_predict_key[0 if which == "key" else 1]
    body = {
        "username": "mallory",
        "password": PASSWORD,
        "email": "m@example.org",
        "role": "admin",
        "name": "child",
    }
    refused = 0
    for method, path in _non_predict_routes(app):
        response = actor.client.open(path, method=method, json=body, headers=headers)
        assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
        refused += 1
    assert refused >= 15  # the walk saw the admin, auth and model routes it is meant to cover
    assert actor.predict(headers).status_code == 200
    # Nothing was created along the way: no admin, no key.
    admin = actor.admin_headers()
    users = actor.client.get("/admin/users", headers=admin).get_json()
    assert [u["username"] for u in users["users"]] == ["admin"]
    keys = actor.client.get("/auth/api-keys", headers=admin).get_json()
    assert keys["total"] == 1


def test_an_admin_key_without_the_admin_scope_cannot_revoke_other_users_keys(actor):
    victim = actor.create_key(actor.user_headers("victor"))
    admin_key = actor.create_key(actor.admin_headers(), scopes=["api-keys:manage", "predict"])
    headers = {"X-API-Key": admin_key["key"]}
    response = actor.client.delete(f"/auth/api-keys/{victim['id']}", headers=headers)
    assert_error(response, 404, "NOT_FOUND")
    assert actor.predict({"X-API-Key": victim["key"]}).status_code == 200
    # With the admin scope (a password session) it may.
    response = actor.client.delete(f"/auth/api-keys/{victim['id']}", headers=actor.admin_headers())
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/auth/api-keys", {"name": "child"}),
        ("GET", "/auth/api-keys", None),
        ("DELETE", "/auth/api-keys/{own}", None),
        ("POST", "/auth/change-password", {"current_password": PASSWORD, "new_password": "x" * 20}),
        ("GET", "/auth/me", None),
    ],
)
def test_a_prediction_key_cannot_manage_its_account(actor, method, path, body):
    created = actor.create_key(actor.user_headers("peggy"), scopes=["predict", "models:read"])
    headers = {"X-API-Key": created["key"]}
    response = actor.client.open(
        path.format(own=created["id"]), method=method, json=body, headers=headers
    )
    error = assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
    assert error["details"]["required_scopes"]
    assert actor.predict(headers).status_code == 200  # the key itself still works
    assert actor.login("peggy", PASSWORD)  # and the password was not changed


def test_keys_made_without_scopes_get_no_account_scopes(actor):
    created = actor.create_key(actor.user_headers("quinn"))
    assert created["scopes"] == ["models:read", "predict"]
    admin_key = actor.create_key(actor.admin_headers())
    assert admin_key["scopes"] == ["models:manage", "models:read", "predict"]


def test_password_sessions_hold_the_account_scopes(client, actor):
    me = client.get("/auth/me", headers=actor.user_headers("rita")).get_json()
    assert {"api-keys:manage", "user:read", "user:write"} <= set(me["scopes"])


def test_a_key_made_by_a_key_is_no_wider_expires_no_later_and_dies_with_it(actor, clock):
    headers = actor.user_headers("sybil")
    parent = actor.create_key(headers, scopes=["predict", "api-keys:manage"], expires_days=10)
    parent_headers = {"X-API-Key": parent["key"]}
    wider = actor.client.post(
        "/auth/api-keys",
        json={"name": "wider", "scopes": ["predict", "models:read"]},
        headers=parent_headers,
    )
    assert_error(wider, 403, "INSUFFICIENT_PERMISSIONS")
    # No expiry asked, or a later one: the child expires with its parent.
    for asked in ({}, {"expires_days": 365}):
        child = actor.create_key(parent_headers, scopes=["predict"], **asked)
        assert child["expires_at"] == parent["expires_at"]
    grandchild = actor.create_key(parent_headers, scopes=["predict", "api-keys:manage"])
    great = actor.create_key({"X-API-Key": grandchild["key"]}, scopes=["predict"])
    # A token from a key login makes keys as that key would.
    tokens = actor.client.post("/auth/login", json={"api_key": parent["key"]}).get_json()
    via_session = actor.create_key(bearer(tokens["access_token"]), scopes=["predict"])
    assert via_session["expires_at"] == parent["expires_at"]

    assert actor.client.delete(f"/auth/api-keys/{parent['id']}", headers=headers).status_code == 200
    for dead in (child, grandchild, great, via_session):
        assert_error(actor.predict({"X-API-Key": dead["key"]}), 401, "INVALID_API_KEY")
    keys = actor.client.get("/auth/api-keys", headers=headers).get_json()["keys"]
    assert not any(k["is_active"] for k in keys)


def test_a_child_key_expires_with_its_parent(actor, clock):
    parent = actor.create_key(
        actor.user_headers("trent"), scopes=["predict", "api-keys:manage"], expires_days=1
    )
    child = actor.create_key({"X-API-Key": parent["key"]}, scopes=["predict"])
    clock.advance(86400)
    assert_error(actor.predict({"X-API-Key": child["key"]}), 401, "INVALID_API_KEY")


def test_register_in_admin_only_mode_needs_the_admin_scope(actor, admin_predict_key):
    key_headers, _ = admin_predict_key
    body = {"username": "mallory", "password": PASSWORD, "email": "m@example.org"}
    response = actor.client.post("/auth/register", json=body, headers=key_headers)
    error = assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
    assert error["details"] == {"required_scopes": ["admin"]}
