"""The /auth API as users meet it: registration, login, profile, passwords, API keys."""

from __future__ import annotations

import json

import pytest

from auth import api_keys
from auth.core import Credentials, Principal
from auth.remembered import Remembered
from tests.conftest import ADMIN, PASSWORD, assert_error, bearer, disk_text

# -- registration ---------------------------------------------------------------------------


def _register(client, headers=None, **body):
    body = {"username": "erin", "password": PASSWORD, "email": "erin@example.org", **body}
    return client.post("/auth/register", json=body, headers=headers or {})


def test_admin_only_registration_needs_an_admin(client, actor):
    assert_error(_register(client), 401, "AUTHENTICATION_REQUIRED")
    user = actor.user_headers("frank")
    assert_error(_register(client, user), 403, "INSUFFICIENT_PERMISSIONS")
    response = _register(client, actor.admin_headers())
    assert response.status_code == 201
    assert response.get_json()["user_id"].startswith("usr_")


def test_open_registration(make_app):
    client = make_app(auth={"registration": "open"}).test_client()
    assert _register(client).status_code == 201
    assert (
        client.post("/auth/login", json={"username": "erin", "password": PASSWORD}).status_code
        == 200
    )


def test_open_registration_cannot_choose_admin_role(make_app):
    client = make_app(auth={"registration": "open"}).test_client()
    assert_error(_register(client, role="admin"), 403, "INSUFFICIENT_PERMISSIONS")


def test_closed_registration(make_app, actor):
    client = make_app(auth={"registration": "closed"}).test_client()
    assert_error(_register(client), 403, "REGISTRATION_CLOSED")


def test_admin_can_create_an_admin(client, actor):
    assert _register(client, actor.admin_headers(), role="admin").status_code == 201
    tokens = actor.login("erin", PASSWORD)
    me = client.get("/auth/me", headers=bearer(tokens["access_token"])).get_json()
    assert me["role"] == "admin"


@pytest.mark.parametrize(
    ("field", "value"),
    [("username", "Erin"), ("username", "ERIN"), ("email", "ERIN@example.org")],
)
def test_duplicate_username_or_email_is_a_conflict(client, actor, field, value):
    admin = actor.admin_headers()
    assert _register(client, admin).status_code == 201
    other = {"username": "someone", "email": "someone@example.org", field: value}
    error = assert_error(_register(client, admin, **other), 409, "CONFLICT")
    assert error["details"]["field"] == field


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short1", "at least 8"),
        ("password123", "too common"),
        ("qwertyuiop", "too common"),
        ("x" * 129, "128 characters"),
        ("erin-the-user", None),
    ],
)
def test_password_policy_on_registration(client, actor, password, reason):
    response = _register(client, actor.admin_headers(), password=password)
    if reason is None:
        assert response.status_code == 201
    else:
        assert reason in assert_error(response, 400, "VALIDATION_ERROR")["message"]


def test_password_equal_to_username_is_refused(client, actor):
    response = _register(
        client, actor.admin_headers(), username="longusername", password="LongUserName"
    )
    assert "username" in assert_error(response, 400, "VALIDATION_ERROR")["message"]


# -- login ----------------------------------------------------------------------------------


def test_login_by_email_and_by_form(client, actor):
    actor.register("gina")
    by_email = client.post("/auth/login", json={"email": "gina@example.org", "password": PASSWORD})
    assert by_email.status_code == 200
    by_email_in_username = client.post(
        "/auth/login", json={"username": "GINA@example.org", "password": PASSWORD}
    )
    assert by_email_in_username.status_code == 200
    form = client.post("/auth/login", data={"username": "gina", "password": PASSWORD})
    assert form.status_code == 200
    assert form.get_json()["token_type"] == "bearer"


def test_unknown_user_and_wrong_password_answer_identically(client, actor, monkeypatch):
    actor.register("hank")
    calls = []
    import auth.core

    real = auth.core.verify_password

    def counting(password, hashed, *, rounds):
        calls.append(hashed is None)
        return real(password, hashed, rounds=rounds)

    monkeypatch.setattr(auth.core, "verify_password", counting)
    wrong = client.post("/auth/login", json={"username": "hank", "password": "not his password"})
    unknown = client.post(
        "/auth/login", json={"username": "nobody", "password": "not his password"}
    )
    first, second = (assert_error(r, 401, "INVALID_CREDENTIALS") for r in (wrong, unknown))
    assert first["message"] == second["message"]
    assert first["details"] == second["details"]
    # Both paths run exactly one bcrypt check: the unknown user's against a dummy hash.
    assert calls == [False, True]


def test_disabled_user_cannot_log_in(app, client, actor):
    user_id = actor.register("ivan")

    def disable(items):
        items[user_id]["is_active"] = False

    app.extensions["auth"].users.update(disable)
    response = client.post("/auth/login", json={"username": "ivan", "password": PASSWORD})
    assert_error(response, 401, "INVALID_CREDENTIALS")


def test_login_with_api_key(client, actor):
    headers = actor.user_headers("judy")
    key = actor.create_key(headers, scopes=["models:read", "user:read"])["key"]
    response = client.post("/auth/login", json={"api_key": key})
    assert response.status_code == 200
    token_headers = bearer(response.get_json()["access_token"])
    me = client.get("/auth/me", headers=token_headers).get_json()
    assert me["username"] == "judy"
    # A token obtained with a key carries no more than the key's scopes.
    assert me["scopes"] == ["models:read", "user:read"]
    assert_error(actor.predict(token_headers), 403, "INSUFFICIENT_PERMISSIONS")


def test_me_never_shows_a_hash(client, actor):
    headers = actor.user_headers("kim")
    body = client.get("/auth/me", headers=headers).get_json()
    assert body["username"] == "kim" and body["role"] == "user"
    assert "password_hash" not in body
    assert "$2b$" not in json.dumps(body)


# -- default admin ----------------------------------------------------------------------------


def test_default_admin_is_created_once_with_change_due(app, client):
    users = dict(app.extensions["auth"].users.records())
    assert [u["username"] for u in users.values()] == ["admin"]
    response = client.post("/auth/login", json={"username": "admin", "password": "admin123"})
    assert response.get_json()["password_change_required"] is True
    assert response.headers["X-Password-Change-Required"] == "true"
    headers = bearer(response.get_json()["access_token"])
    assert client.get("/auth/me", headers=headers).headers["X-Password-Change-Required"] == "true"


def test_default_admin_refused_from_non_loopback(client, actor):
    remote = {"REMOTE_ADDR": "203.0.113.9"}
    response = client.post(
        "/auth/login", json={"username": "admin", "password": "admin123"}, environ_base=remote
    )
    # The same answer as a wrong password: nothing says the default is still set.
    assert_error(response, 401, "INVALID_CREDENTIALS")
    # Nor by logging in with a key it made on loopback.
    key = actor.create_key(actor.admin_headers())["key"]
    by_key = client.post("/auth/login", json={"api_key": key}, environ_base=remote)
    assert_error(by_key, 403, "INSUFFICIENT_PERMISSIONS")
    # A token obtained on loopback does not work from elsewhere either.
    token = client.post("/auth/login", json={"username": "admin", "password": "admin123"})
    headers = bearer(token.get_json()["access_token"])
    assert_error(
        client.get("/auth/me", headers=headers, environ_base=remote),
        403,
        "INSUFFICIENT_PERMISSIONS",
    )


def test_default_admin_works_remotely_after_password_change(client, actor):
    headers = actor.admin_headers()
    response = client.post(
        "/auth/change-password",
        json={"current_password": "admin123", "new_password": "a much better admin passphrase"},
        headers=headers,
    )
    assert response.status_code == 200
    tokens = actor.login("admin", "a much better admin passphrase", REMOTE_ADDR="203.0.113.9")
    assert "password_change_required" not in tokens
    me = client.get(
        "/auth/me",
        headers=bearer(tokens["access_token"]),
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    assert me.status_code == 200
    assert "X-Password-Change-Required" not in me.headers


def test_no_default_admin_when_users_exist(make_app, app, actor):
    actor.register("lena", role="admin")
    state = app.extensions["auth"]
    admin_id = next(u for u, rec in state.users.records() if rec["username"] == "admin")
    state.users.update(lambda items: items.pop(admin_id))
    again = make_app()
    names = [u["username"] for u in dict(again.extensions["auth"].users.records()).values()]
    assert names == ["lena"]


def test_default_admin_can_be_switched_off(make_app):
    app = make_app(auth={"default_admin": None})
    assert dict(app.extensions["auth"].users.records()) == {}


# -- change password ------------------------------------------------------------------------


def test_change_password_checks_current_and_policy(client, actor):
    headers = actor.user_headers("mona")
    wrong = client.post(
        "/auth/change-password",
        json={"current_password": "nope nope nope", "new_password": "another good passphrase"},
        headers=headers,
    )
    assert assert_error(wrong, 400, "VALIDATION_ERROR")["details"]["field"] == "current_password"
    weak = client.post(
        "/auth/change-password",
        json={"current_password": PASSWORD, "new_password": "password1"},
        headers=headers,
    )
    assert assert_error(weak, 400, "VALIDATION_ERROR")["details"]["field"] == "new_password"
    actor.login("mona", PASSWORD)


# -- API keys -------------------------------------------------------------------------------


def test_api_key_format_and_storage(app, actor, data_dir):
    created = actor.create_key(actor.user_headers("nina"), name="batch job", expires_days=30)
    key = created["key"]
    assert key.startswith("sk_live_") and api_keys.well_formed(key)
    assert created["prefix"] == key[:12]
    assert created["expires_at"] is not None
    stored = disk_text(data_dir, "api_keys")
    assert key not in stored and key[12:] not in stored
    assert api_keys.hash_key(key) in stored
    record = dict(app.extensions["auth"].keys.records())[created["id"]]
    assert set(record) >= {"hash", "prefix"} and "key" not in record


def test_key_checksum_catches_typos():
    key = api_keys.generate_key()
    assert api_keys.well_formed(key)
    body = key[8:-6]
    flipped = body[:5] + ("A" if body[5] != "A" else "B") + body[6:]
    assert not api_keys.well_formed(key[:8] + flipped + key[-6:])
    assert not api_keys.well_formed(key[:-1])
    assert not api_keys.well_formed("sk_test_" + key[8:])


def test_keys_have_128_bits_or_more():
    keys = {api_keys.generate_key() for _ in range(200)}
    assert len(keys) == 200
    assert api_keys.BODY_LENGTH * 5.95 >= 128  # log2(62) bits per character


def test_api_key_predicts_and_lists(client, actor, clock):
    headers = actor.user_headers("omar")
    created = actor.create_key(headers, description="nightly")
    assert created["scopes"] == ["models:read", "predict"]
    assert actor.predict({"X-API-Key": created["key"]}).status_code == 200
    listed = client.get("/auth/api-keys", headers=headers).get_json()
    assert listed["total"] == 1
    (entry,) = listed["keys"]
    assert entry["id"] == created["id"] and entry["last_used"] is not None
    assert "hash" not in entry and "key" not in entry


def test_last_used_is_noted_on_the_request_and_written_in_batches(app, actor, clock):
    first = actor.create_key(actor.user_headers("pia"))
    second = actor.create_key(actor.user_headers("pia2"))
    usage = app.extensions["auth"].key_usage
    writes = []
    real_append = usage.store.put_unread

    def counting(puts):
        writes.append(1)
        return real_append(puts)

    usage.store.put_unread = counting
    for _ in range(5):
        for created in (first, second):
            assert actor.predict({"X-API-Key": created["key"]}).status_code == 200
    assert writes == []  # no request wrote anything
    assert usage.flush() == 2 and len(writes) == 1  # both keys in one write
    on_disk = dict(usage.store.records())
    assert on_disk[first["id"]]["last_used"] == on_disk[second["id"]]["last_used"]

    actor.predict({"X-API-Key": first["key"]})
    assert usage.flush() == 0 and len(writes) == 1  # used again within the minute: nothing new
    clock.advance(61)
    actor.predict({"X-API-Key": first["key"]})
    assert usage.flush() == 1 and len(writes) == 2
    assert dict(usage.store.records())[first["id"]]["last_used"] > on_disk[first["id"]]["last_used"]


def test_a_failed_usage_write_keeps_the_notes_for_the_next_flush(app, actor, data_dir):
    created = actor.create_key(actor.user_headers("pia3"))
    actor.predict({"X-API-Key": created["key"]})
    usage = app.extensions["auth"].key_usage
    snapshot = data_dir / "api_key_usage.json"
    good = snapshot.read_bytes()
    snapshot.write_text("broken by hand")
    assert usage.flush() == 0  # 503-class refusal: nothing lost, nothing overwritten
    assert snapshot.read_text() == "broken by hand"
    snapshot.write_bytes(good)  # the operator's repair
    assert usage.flush() == 1


def test_revoked_key_fails(client, actor):
    headers = actor.user_headers("quin")
    created = actor.create_key(headers)
    assert client.delete(f"/auth/api-keys/{created['id']}", headers=headers).status_code == 200
    assert_error(actor.predict({"X-API-Key": created["key"]}), 401, "INVALID_API_KEY")
    listed = client.get("/auth/api-keys", headers=headers).get_json()["keys"]
    assert listed[0]["is_active"] is False and listed[0]["revoked_at"]


def test_expired_key_fails(actor, clock):
    created = actor.create_key(actor.user_headers("rosa"), expires_days=1)
    assert actor.predict({"X-API-Key": created["key"]}).status_code == 200
    clock.advance(86400)
    assert_error(actor.predict({"X-API-Key": created["key"]}), 401, "INVALID_API_KEY")


def test_a_credential_is_worked_out_once_while_its_records_are_unchanged(app, actor):
    """The principal of a key or a session is kept while the stores it was read from hold
    (`auth/remembered.py`): any write there makes the next request read afresh, and its
    records are read-only, so no request can change them for the next."""
    state = app.extensions["auth"]
    headers = actor.user_headers("uma")
    key = actor.create_key(headers)["key"]

    def principal(authorization: str | None = None, key: str | None = None) -> Principal:
        found = state.authenticate(Credentials(authorization, key, "127.0.0.1"))
        assert found is not None
        return found

    by_key, by_token = principal(key=key), principal(headers["Authorization"])
    assert principal(key=key) is by_key
    assert principal(headers["Authorization"]) is by_token
    with pytest.raises(TypeError):
        by_key.user["role"] = "admin"  # type: ignore[index]
    with pytest.raises(TypeError):
        by_token.user.update(is_active=False)
    assert json.loads(json.dumps(by_key.user))["id"] == by_key.id  # still a dict to encoders
    copied = dict(by_key.user)
    copied["role"] = "admin"  # a copy is the caller's own
    assert by_key.user["role"] == "user"

    actor.register("vera")  # a write to the users store: of another user, yet read afresh
    again = principal(key=key)
    assert again is not by_key and again == by_key
    assert principal(headers["Authorization"]) is not by_token


def test_kept_principals_are_bounded_oldest_first_and_dropped_once_stale():
    kept: Remembered[str] = Remembered(most=2)
    kept.keep("a", 1, "A")
    kept.keep("b", 1, "B")
    kept.keep("c", 1, "C")  # past the bound: the oldest goes
    assert (kept.get("a", 1), kept.get("b", 1), kept.get("c", 1)) == (None, "B", "C")
    assert kept.get("b", 2) is None  # read at other versions: never again
    assert kept.get("b", 1) is None


def test_unknown_and_malformed_keys_fail(actor):
    assert_error(actor.predict({"X-API-Key": api_keys.generate_key()}), 401, "INVALID_API_KEY")
    assert_error(actor.predict({"X-API-Key": "sk_live_nonsense"}), 401, "INVALID_API_KEY")


def test_only_owner_or_admin_revokes(client, actor):
    owner = actor.user_headers("sam")
    created = actor.create_key(owner)
    stranger = actor.user_headers("tess")
    assert_error(
        client.delete(f"/auth/api-keys/{created['id']}", headers=stranger), 404, "NOT_FOUND"
    )
    assert actor.predict({"X-API-Key": created["key"]}).status_code == 200
    assert (
        client.delete(f"/auth/api-keys/{created['id']}", headers=actor.admin_headers()).status_code
        == 200
    )
    assert_error(actor.predict({"X-API-Key": created["key"]}), 401, "INVALID_API_KEY")


def test_key_scopes_no_wider_than_role(client, actor):
    headers = actor.user_headers("uma")
    response = client.post(
        "/auth/api-keys",
        json={"name": "x", "scopes": ["predict", "models:manage"]},
        headers=headers,
    )
    assert assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")["details"]["field"] == "scopes"
    response = client.post(
        "/auth/api-keys", json={"name": "x", "scopes": ["root"]}, headers=headers
    )
    assert_error(response, 400, "VALIDATION_ERROR")


def test_key_without_predict_scope_cannot_predict(actor):
    created = actor.create_key(actor.user_headers("vic"), scopes=["models:read"])
    assert_error(actor.predict({"X-API-Key": created["key"]}), 403, "INSUFFICIENT_PERMISSIONS")


def test_key_scopes_shrink_when_role_shrinks(app, actor):
    actor.register("walt", role="admin")
    headers = bearer(actor.login("walt", PASSWORD)["access_token"])
    created = actor.create_key(headers, scopes=["predict", "models:manage", "user:read"])
    state = app.extensions["auth"]
    user_id = next(u for u, rec in state.users.records() if rec["username"] == "walt")

    def demote(items):
        items[user_id]["role"] = "user"

    state.users.update(demote)
    me = actor.client.get("/auth/me", headers={"X-API-Key": created["key"]}).get_json()
    assert me["scopes"] == ["predict", "user:read"]


def test_key_lookup_does_not_scan(app, actor):
    """The hot path finds a key through the hash index, not by walking the records."""
    created = actor.create_key(actor.user_headers("xena"))
    keys = app.extensions["auth"].keys
    assert keys.find("hash", api_keys.hash_key(created["key"]))["id"] == created["id"]


# -- credentials in odd places ---------------------------------------------------------------


@pytest.mark.parametrize("param", ["api_key", "access_token", "token", "key"])
def test_credentials_in_query_string_are_refused(client, actor, param):
    created = actor.create_key(actor.user_headers("yara"))
    response = client.post(f"/predict?{param}={created['key']}", json={"data": [[1, 2, 3]]})
    assert_error(response, 401, "INVALID_TOKEN")


def test_both_headers_naming_different_users_are_refused(client, actor):
    alice = actor.user_headers("alice")
    bob_key = actor.create_key(actor.user_headers("bobby"))["key"]
    response = actor.predict({**alice, "X-API-Key": bob_key})
    assert_error(response, 401, "INVALID_CREDENTIALS")


def test_both_headers_for_the_same_user_are_fine(actor):
    alice = actor.user_headers("alice")
    key = actor.create_key(alice)["key"]
    assert actor.predict({**alice, "X-API-Key": key}).status_code == 200


def test_audit_log_records_events_without_secrets(client, actor, data_dir):
    headers = actor.user_headers("zed")
    key = actor.create_key(headers)
    client.post("/auth/login", json={"username": "zed", "password": "wrong password!"})
    client.delete(f"/auth/api-keys/{key['id']}", headers=headers)
    client.post(
        "/auth/change-password",
        json={"current_password": PASSWORD, "new_password": "zed has a new passphrase"},
        headers=headers,
    )
    client.post("/auth/logout", headers=headers)
    text = (data_dir / "audit.log").read_text()
    events = [json.loads(line) for line in text.splitlines()]
    names = {e["event"] for e in events}
    assert {
        "auth.login",
        "api_key.created",
        "api_key.revoked",
        "user.password_changed",
        "auth.logout",
        "user.registered",
    } <= names
    assert {e.get("outcome") for e in events if e["event"] == "auth.login"} == {"ok", "failed"}
    for secret in (
        PASSWORD,
        "wrong password!",
        "zed has a new passphrase",
        key["key"],
        headers["Authorization"].split()[1],
        ADMIN[1],
    ):
        assert secret not in text
    assert (data_dir / "audit.log").stat().st_mode & 0o777 == 0o600
