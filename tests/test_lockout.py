"""Guessing is throttled where it happens, and nobody can aim a lockout at somebody else.

Failed password checks are counted once per account (username and email alike); addresses the
owner logged in from before keep a count of their own; change-password's current password is a
password check like a login; invalid tokens and keys are counted per client address.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import PASSWORD, Actor, assert_error, bearer

HOME = "198.51.100.7"


def _login(client, address: str, password: str, name: str = "olga"):
    return client.post(
        "/auth/login",
        json={"username": name, "password": password},
        environ_base={"REMOTE_ADDR": address},
    )


@pytest.fixture
def olga(make_app):
    """A user who logged in once from home; failures may be counted 100 an hour."""
    actor = Actor(make_app(rate_limits={"login_failures": "100/hour"}).test_client())
    actor.register("olga")
    assert _login(actor.client, HOME, PASSWORD).status_code == 200
    return actor


def test_failures_from_elsewhere_do_not_lock_the_owner_out_at_home(olga):
    answers = {
        _login(olga.client, f"203.0.113.{i % 50}", "not her password").status_code
        for i in range(150)
    }
    assert answers == {401, 429}  # the attacker is stopped after 100 ...
    assert _login(olga.client, HOME, PASSWORD).status_code == 200  # ... the owner is not
    blocked = _login(olga.client, "192.0.2.1", PASSWORD)  # a new address still is
    assert_error(blocked, 429, "RATE_LIMIT_EXCEEDED")


def test_username_and_email_are_one_account(make_app):
    actor = Actor(make_app(rate_limits={"login_failures": "3/hour"}).test_client())
    actor.register("paula")
    for body in ({"username": "paula"}, {"email": "paula@example.org"}, {"username": "PAULA"}):
        response = actor.client.post("/auth/login", json={**body, "password": "wrong password"})
        assert_error(response, 401, "INVALID_CREDENTIALS")
    by_email = {"email": "paula@example.org", "password": PASSWORD}
    assert_error(actor.client.post("/auth/login", json=by_email), 429, "RATE_LIMIT_EXCEEDED")


def test_change_password_guesses_are_counted_and_held_back(make_app, clock):
    app = make_app(rate_limits={"login_failures": "3/hour"}, auth={"failed_login_delay_seconds": 1})
    actor = Actor(app.test_client())
    headers = actor.user_headers("quentin")
    clock.slept.clear()

    def change(current: str):
        body = {"current_password": current, "new_password": "quentin's new passphrase"}
        return actor.client.post("/auth/change-password", json=body, headers=headers)

    for _ in range(3):
        error = assert_error(change("a wrong guess"), 400, "VALIDATION_ERROR")
        assert error["details"] == {"field": "current_password"}
    assert clock.slept == [1, 1, 1]  # each failure answered a second late, like a login
    assert_error(change(PASSWORD), 429, "RATE_LIMIT_EXCEEDED")  # even the right one, now
    assert actor.predict(headers).status_code == 200  # the session itself still works


def test_invalid_tokens_and_keys_are_throttled_per_address(make_app):
    app = make_app(rate_limits={"invalid_credentials": "5/minute"})
    actor = Actor(app.test_client())
    good = bearer(actor.login("admin", "admin123")["access_token"])
    flood = {"REMOTE_ADDR": "127.0.0.9"}
    for i in range(5):
        bad = {"X-API-Key": "sk_live_nonsense"} if i % 2 else bearer(f"forged.{i}.token")
        response = actor.client.post("/predict", json={}, headers=bad, environ_base=flood)
        assert response.status_code == 401
    throttled = actor.client.post("/predict", json={}, headers=good, environ_base=flood)
    error = assert_error(throttled, 429, "RATE_LIMIT_EXCEEDED")
    assert "invalid tokens" in error["message"]
    assert int(throttled.headers["Retry-After"]) >= 1
    # Other addresses are not affected.
    assert actor.predict(good).status_code == 200


def test_a_failed_login_never_logs_what_was_typed(make_app, data_dir):
    actor = Actor(make_app().test_client())
    typed = "my-Secret-passw0rd"  # typed into the username field by mistake
    assert actor.client.post("/auth/login", json={"username": typed, "password": "x" * 9})
    actor.register("rosa")
    _login(actor.client, HOME, "wrong password", name="rosa")
    log = (data_dir / "audit.log").read_text()
    assert typed not in log and typed.lower() not in log
    failed = [e for e in map(json.loads, log.splitlines()) if e.get("outcome") == "failed"]
    assert "name_sha256" in failed[0] and "user_id" not in failed[0]
    rosa = actor.client.get("/admin/users?limit=5", headers=actor.admin_headers()).get_json()
    assert failed[1]["user_id"] == next(u["id"] for u in rosa["users"] if u["username"] == "rosa")


def test_answers_with_tokens_or_keys_are_never_cached(actor):
    login = actor.client.post("/auth/login", json={"username": "admin", "password": "admin123"})
    tokens = login.get_json()
    answers = {
        "login": login,
        "refresh": actor.client.post(
            "/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        ),
        "key creation": actor.client.post(
            "/auth/api-keys", json={"name": "k"}, headers=bearer(tokens["access_token"])
        ),
        "a 401": actor.client.get("/auth/me", headers=bearer("forged")),
        "health": actor.client.get("/health"),
    }
    for name, response in answers.items():
        assert response.headers["Cache-Control"] == "no-store", name
        assert response.headers["X-Content-Type-Options"] == "nosniff", name
