"""SPEC 4, JWT and refresh rules: each test fails if its rule is broken."""

from __future__ import annotations

import base64
import json
import string

import jwt
import pytest

from auth.storage.json import JsonStorage
from auth.tokens import _PLACEHOLDER, SecretError, TokenSigner, load_secret, secret_problem
from inference_server.settings import ConfigError
from tests.conftest import ADMIN, PASSWORD, assert_error, bearer


def _secret(app) -> str:
    return app.extensions["auth"].signer.secret


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def _forge(app, claims: dict, *, key: str | None = None, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key or _secret(app), algorithm=algorithm)


@pytest.fixture
def tokens(actor):
    return actor.login(*ADMIN)


def test_access_token_works(actor, tokens):
    assert actor.predict(bearer(tokens["access_token"])).status_code == 200


def test_alg_none_is_refused(app, actor, tokens):
    claims = _claims(tokens["access_token"])
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert_error(actor.predict(bearer(f"{header}.{body}.")), 401, "INVALID_TOKEN")


def test_other_hmac_algorithm_is_refused(app, actor, tokens):
    forged = _forge(app, _claims(tokens["access_token"]), algorithm="HS512")
    assert_error(actor.predict(bearer(forged)), 401, "INVALID_TOKEN")


def test_tampered_payload_is_refused(actor, tokens):
    header, payload, signature = tokens["access_token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "usr_someoneelse"
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert_error(actor.predict(bearer(f"{header}.{payload}.{signature}")), 401, "INVALID_TOKEN")


@pytest.mark.parametrize(
    ("claim", "ahead", "accepted"),
    [("iat", 3600, False), ("nbf", 3600, False), ("iat", 5, True), ("nbf", 5, True)],
)
def test_tokens_from_the_future_are_refused(app, actor, tokens, clock, claim, ahead, accepted):
    """A signed token whose iat or nbf is ahead of our clock (beyond a few seconds of skew)."""
    claims = {**_claims(tokens["access_token"]), claim: int(clock()) + ahead}
    response = actor.predict(bearer(_forge(app, claims)))
    if accepted:
        assert response.status_code == 200
    else:
        assert_error(response, 401, "INVALID_TOKEN")


def test_wrong_key_is_refused(app, actor, tokens):
    forged = _forge(app, _claims(tokens["access_token"]), key="x" * 64)
    assert_error(actor.predict(bearer(forged)), 401, "INVALID_TOKEN")


def test_expired_access_token(actor, tokens, clock):
    clock.advance(30 * 60 + 1)
    assert_error(actor.predict(bearer(tokens["access_token"])), 401, "TOKEN_EXPIRED")


def test_token_valid_until_just_before_expiry(actor, tokens, clock):
    clock.advance(30 * 60 - 1)
    assert actor.predict(bearer(tokens["access_token"])).status_code == 200


@pytest.mark.parametrize("claim", ["sub", "sid", "exp", "iat", "jti", "type", "iss", "aud"])
def test_missing_claim_is_refused(app, actor, tokens, claim):
    claims = _claims(tokens["access_token"])
    del claims[claim]
    assert_error(actor.predict(bearer(_forge(app, claims))), 401, "INVALID_TOKEN")


@pytest.mark.parametrize(("claim", "value"), [("iss", "someone-else"), ("aud", "other-api")])
def test_wrong_issuer_or_audience_is_refused(app, actor, tokens, claim, value):
    claims = {**_claims(tokens["access_token"]), claim: value}
    assert_error(actor.predict(bearer(_forge(app, claims))), 401, "INVALID_TOKEN")


def test_refresh_token_is_not_an_access_token(actor, tokens):
    assert_error(actor.predict(bearer(tokens["refresh_token"])), 401, "INVALID_TOKEN")


def test_access_token_cannot_refresh(client, tokens):
    response = client.post("/auth/refresh", json={"refresh_token": tokens["access_token"]})
    assert_error(response, 401, "INVALID_TOKEN")


def test_refresh_rotates_and_old_refresh_token_dies(client, actor, tokens):
    response = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 200
    fresh = response.get_json()
    assert fresh["refresh_token"] != tokens["refresh_token"]
    assert fresh["token_type"] == "bearer" and fresh["expires_in"] == 1800
    assert actor.predict(bearer(fresh["access_token"])).status_code == 200
    again = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert_error(again, 401, "INVALID_TOKEN")


def test_refresh_reuse_revokes_the_family(client, actor, tokens, data_dir):
    fresh = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).get_json()
    reuse = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert_error(reuse, 401, "INVALID_TOKEN")
    # The thief replayed an old token: the legitimate newer tokens die with the family.
    assert_error(actor.predict(bearer(fresh["access_token"])), 401, "INVALID_TOKEN")
    assert_error(
        client.post("/auth/refresh", json={"refresh_token": fresh["refresh_token"]}),
        401,
        "INVALID_TOKEN",
    )
    events = [
        json.loads(line)["event"]
        for line in (data_dir / "audit.log").read_text().split("\n")
        if line
    ]
    assert "auth.refresh_reuse" in events


def test_refresh_reuse_leaves_other_sessions_alone(client, actor, tokens):
    other = actor.login(*ADMIN)
    client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert actor.predict(bearer(other["access_token"])).status_code == 200


def test_expired_refresh_token(client, tokens, clock):
    clock.advance(7 * 86400 + 1)
    response = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert_error(response, 401, "TOKEN_EXPIRED")


def test_logout_ends_access_and_refresh_at_once(client, actor, tokens):
    headers = bearer(tokens["access_token"])
    assert client.post("/auth/logout", headers=headers).status_code == 200
    assert_error(actor.predict(headers), 401, "INVALID_TOKEN")
    response = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert_error(response, 401, "INVALID_TOKEN")


def test_logout_ends_only_this_session(client, actor, tokens):
    other = actor.login(*ADMIN)
    client.post("/auth/logout", headers=bearer(tokens["access_token"]))
    assert actor.predict(bearer(other["access_token"])).status_code == 200


def test_password_change_ends_other_sessions(client, actor):
    actor.register("carol")
    first = actor.login("carol", PASSWORD)
    second = actor.login("carol", PASSWORD)
    response = client.post(
        "/auth/change-password",
        json={"current_password": PASSWORD, "new_password": "a brand new passphrase"},
        headers=bearer(first["access_token"]),
    )
    assert response.status_code == 200
    assert actor.predict(bearer(first["access_token"])).status_code == 200
    assert_error(actor.predict(bearer(second["access_token"])), 401, "INVALID_TOKEN")
    refresh = client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert_error(refresh, 401, "INVALID_TOKEN")
    assert actor.login("carol", "a brand new passphrase")["access_token"]


def test_revocation_reaches_another_worker(make_app, actor, tokens):
    """A second app over the same data dir stands for a second worker process with its own cache."""
    other_worker = make_app().test_client()
    headers = bearer(tokens["access_token"])
    assert (
        other_worker.post("/predict", json={"data": [[1, 2, 3]]}, headers=headers).status_code
        == 200
    )
    actor.client.post("/auth/logout", headers=headers)
    response = other_worker.post("/predict", json={"data": [[1, 2, 3]]}, headers=headers)
    assert_error(response, 401, "INVALID_TOKEN")


def test_user_disabled_or_deleted_fails_at_once(app, actor):
    headers = actor.user_headers("dave")
    key = actor.create_key(headers)["key"]
    state = app.extensions["auth"]
    user_id = next(u for u, rec in state.users.records() if rec["username"] == "dave")

    def disable(items):
        items[user_id]["is_active"] = False

    state.users.update(disable)
    assert_error(actor.predict(headers), 401, "INVALID_TOKEN")
    assert_error(actor.predict({"X-API-Key": key}), 401, "INVALID_API_KEY")
    state.users.update(lambda items: items.pop(user_id))
    assert_error(actor.predict(headers), 401, "INVALID_TOKEN")


# -- the signing secret ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        "short",
        "change-me-change-me-change-me-change-me",
        "your-secret-key-goes-here-0123456789",
        "a" * 64,
    ],
)
def test_weak_or_placeholder_secret_is_refused(make_app, secret, tmp_path):
    # Refused with the rest of the configuration (so `config check` refuses it too), never
    # echoed: the message names the key, not the value.
    with pytest.raises(ConfigError, match="auth.jwt_secret") as refused:
        make_app(auth={"jwt_secret": secret})
    assert secret not in str(refused.value)
    assert secret_problem(secret)
    with pytest.raises(SecretError):  # and by the extension itself, for any app that uses it
        load_secret(secret, JsonStorage(tmp_path))


def test_strong_configured_secret_is_used(make_app):
    secret = "q8VxN2rTz5LmW7yB4cK9dF3hJ6pS1gA0"
    app = make_app(auth={"jwt_secret": secret})
    assert app.extensions["auth"].signer.secret == secret


def test_generated_secret_is_private_and_stable(tmp_path):
    first = load_secret(None, JsonStorage(tmp_path))
    assert len(first) >= 32
    assert (tmp_path / "jwt_secret").stat().st_mode & 0o777 == 0o600
    assert load_secret(None, JsonStorage(tmp_path)) == first


def test_signer_rejects_wrong_type_claims():
    signer = TokenSigner(secret="k" * 40, algorithm="HS256", issuer="i", audience="a")
    token, _ = signer.encode(sub="u", sid="s", token_type="access", now=1000, ttl=60)
    assert signer.decode(token, token_type="access", now=1000)["sub"] == "u"
    bad = jwt.encode(
        {
            "sub": 5,
            "sid": "s",
            "jti": "j",
            "type": "access",
            "iat": 1,
            "exp": 2000,
            "iss": "i",
            "aud": "a",
        },
        "k" * 40,
    )
    with pytest.raises(Exception) as info:
        signer.decode(bad, token_type="access", now=1000)
    assert getattr(info.value, "error_code", None) == "INVALID_TOKEN"


def test_a_secret_the_server_makes_can_never_look_like_a_placeholder(tmp_path):
    made = load_secret(None, JsonStorage(tmp_path))
    assert len(made) >= 64 and set(made) <= set(string.hexdigits.lower())
    words = _PLACEHOLDER.pattern.replace("[-_ ]", "_").split("|")
    assert not any(set(word) <= set(string.hexdigits.lower()) for word in words)
