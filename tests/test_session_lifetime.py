"""Sessions are bound to what created them, and none lives for ever.

A session from a key login ends with the key (revoked, expired, owner gone); refreshing never
carries a session past `auth.session_max_days` or past its key's expiry.
"""

from __future__ import annotations

import jwt
import pytest

from tests.conftest import ADMIN, PASSWORD, assert_error, bearer

DAY = 86400


def _key_login(actor, key: str) -> dict:
    response = actor.client.post("/auth/login", json={"api_key": key})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def _refresh(actor, token: str):
    return actor.client.post("/auth/refresh", json={"refresh_token": token})


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def test_a_key_login_session_dies_when_the_key_is_revoked(actor):
    owner = actor.user_headers("uma")
    created = actor.create_key(owner, scopes=["predict"])
    tokens = _key_login(actor, created["key"])
    assert actor.predict(bearer(tokens["access_token"])).status_code == 200

    assert actor.client.delete(f"/auth/api-keys/{created['id']}", headers=owner).status_code == 200
    assert_error(actor.predict(bearer(tokens["access_token"])), 401, "INVALID_TOKEN")
    assert_error(_refresh(actor, tokens["refresh_token"]), 401, "INVALID_TOKEN")


def test_a_key_login_session_dies_when_the_owner_is_deleted(actor):
    uid = actor.register("vera")
    created = actor.create_key(bearer(actor.login("vera", PASSWORD)["access_token"]))
    tokens = _key_login(actor, created["key"])
    deleted = actor.client.delete(f"/admin/users/{uid}", headers=actor.admin_headers())
    assert deleted.status_code == 200
    assert_error(_refresh(actor, tokens["refresh_token"]), 401, "INVALID_TOKEN")


def test_refresh_never_carries_a_key_login_past_the_keys_expiry(actor, clock):
    created = actor.create_key(actor.user_headers("wade"), scopes=["predict"], expires_days=1)
    tokens = _key_login(actor, created["key"])
    key_expiry = _claims(tokens["refresh_token"])["exp"]
    assert key_expiry <= clock() + DAY  # not the 7 days of a password session

    clock.advance(DAY - 60)
    tokens = _refresh(actor, tokens["refresh_token"]).get_json()
    assert _claims(tokens["refresh_token"])["exp"] <= key_expiry
    assert _claims(tokens["access_token"])["exp"] <= key_expiry
    assert actor.predict(bearer(tokens["access_token"])).status_code == 200

    clock.advance(60)
    assert_error(actor.predict(bearer(tokens["access_token"])), 401, "TOKEN_EXPIRED")
    assert_error(_refresh(actor, tokens["refresh_token"]), 401, "TOKEN_EXPIRED")


def test_every_session_has_an_absolute_lifetime(make_app, clock):
    from tests.conftest import Actor

    actor = Actor(make_app(auth={"session_max_days": 10}).test_client())
    tokens = actor.login(*ADMIN)
    started = clock()
    for _ in range(3):  # refreshing every 3 days keeps the session going ...
        clock.advance(3 * DAY)
        response = _refresh(actor, tokens["refresh_token"])
        assert response.status_code == 200
        tokens = response.get_json()
        assert _claims(tokens["refresh_token"])["exp"] <= started + 10 * DAY
    clock.advance(DAY - 60)
    tokens = _refresh(actor, tokens["refresh_token"]).get_json()
    assert actor.predict(bearer(tokens["access_token"])).status_code == 200
    clock.advance(60)  # ... until day 10, however recently it was refreshed
    assert_error(actor.predict(bearer(tokens["access_token"])), 401, "TOKEN_EXPIRED")
    assert_error(_refresh(actor, tokens["refresh_token"]), 401, "TOKEN_EXPIRED")
    assert actor.login(*ADMIN)  # a password login starts afresh


def test_the_default_admin_cannot_refresh_from_a_remote_address(actor):
    tokens = actor.login(*ADMIN)
    response = actor.client.post(
        "/auth/refresh",
        json={"refresh_token": tokens["refresh_token"]},
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")


@pytest.mark.parametrize("password", [ADMIN[1], "wrong password"])
def test_the_remote_default_admin_gets_one_answer_for_right_and_wrong(actor, password):
    response = actor.client.post(
        "/auth/login",
        json={"username": "admin", "password": password},
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    error = assert_error(response, 401, "INVALID_CREDENTIALS")
    assert error["message"] == "invalid username or password"


def test_an_admin_reset_makes_the_owner_change_the_password_at_next_login(actor):
    uid = actor.register("xavi")
    key = actor.create_key(bearer(actor.login("xavi", PASSWORD)["access_token"]))["key"]
    temporary = "a temporary passphrase"
    response = actor.client.post(
        f"/admin/users/{uid}/reset-password",
        json={"new_password": temporary},
        headers=actor.admin_headers(),
    )
    assert response.status_code == 200
    tokens = actor.login("xavi", temporary)
    assert tokens["password_change_required"] is True
    headers = bearer(tokens["access_token"])
    assert_error(actor.predict(headers), 403, "INSUFFICIENT_PERMISSIONS")
    me = actor.client.get("/auth/me", headers=headers)
    assert me.headers["X-Password-Change-Required"] == "true"
    assert actor.predict({"X-API-Key": key}).status_code == 200  # services keep running

    response = actor.client.post(
        "/auth/change-password",
        json={"current_password": temporary, "new_password": "xavi's own passphrase"},
        headers=headers,
    )
    assert response.status_code == 200
    assert actor.predict(headers).status_code == 200
    assert "X-Password-Change-Required" not in actor.predict(headers).headers


def test_the_sweep_drops_ended_sessions_and_keeps_live_ones(app, actor, clock):
    state = app.extensions["auth"]
    for _ in range(1_000):  # a service logging in every time, never logging out
        actor.client.post("/auth/login", json={"username": "admin", "password": "admin123"})
    clock.advance(4 * DAY)
    live = actor.login(*ADMIN)
    revoked = actor.login(*ADMIN)
    actor.client.post("/auth/logout", headers=bearer(revoked["access_token"]))
    clock.advance(4 * DAY)  # the first 1,000 are past their 7 days; the logout is 4 days old

    assert state.sweep_sessions() == 1_001
    assert len(state.sessions) == 1
    refreshed = _refresh(actor, live["refresh_token"])
    assert refreshed.status_code == 200  # the live session goes on
    version = state.sessions.version()
    assert state.sweep_sessions() == 0
    assert state.sessions.version() == version  # nothing to drop: nothing written
