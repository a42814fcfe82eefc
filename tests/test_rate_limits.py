"""Per-user budgets, login protection and client addresses (SPEC 4 and issue 4)."""

from __future__ import annotations

import pytest
from filelock import FileLock

from auth.limits import resolve_client_address
from inference_server.serve import startup_warnings
from inference_server.settings import load_settings
from tests.conftest import PASSWORD, Actor, assert_error, bearer

LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


@pytest.fixture
def limited(make_app):
    """An app where users get 5 requests a minute and admins plenty."""
    app = make_app(auth={"rate_limit_per_minute": 5})
    return app, Actor(app.test_client())


def _spend(actor, headers, n):
    return [actor.predict(headers).status_code for _ in range(n)]


def _bad_login(client, **request):
    """One wrong-password login for the default admin; `request` adds headers or environ."""
    return client.post("/auth/login", json={"username": "admin", "password": "wrong!!!"}, **request)


def _user_id(app, name):
    users = dict(app.extensions["auth"].users.records())
    return next(uid for uid, u in users.items() if u["username"] == name)


def test_user_budget_is_shared_by_tokens_and_keys_and_not_by_others(limited):
    app, actor = limited
    alice = actor.user_headers("alice")
    alice_key = {"X-API-Key": actor.create_key(alice)["key"]}  # spends 1 of alice's 5
    bob = actor.user_headers("bobby")
    assert _spend(actor, alice, 2) == [200, 200]
    assert _spend(actor, alice_key, 1) == [200]
    served = actor.predict(alice_key)
    assert served.status_code == 200 and "X-RateLimit-Remaining" in served.headers
    assert "Retry-After" not in served.headers  # only on answers that ask the client to wait
    response = actor.predict(alice_key)
    error = assert_error(response, 429, "RATE_LIMIT_EXCEEDED")
    assert "5/minute" in error["message"]
    assert int(response.headers["Retry-After"]) > 0
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert_error(actor.predict(alice), 429, "RATE_LIMIT_EXCEEDED")
    # A second login of the same user is the same budget.
    relogin = actor.client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    assert_error(
        actor.predict(bearer(relogin.get_json()["access_token"])), 429, "RATE_LIMIT_EXCEEDED"
    )
    assert _spend(actor, bob, 4) == [200] * 4


def test_every_limited_response_carries_the_headers(limited):
    _, actor = limited
    headers = actor.user_headers("carla")
    response = actor.predict(headers)
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "5"
    assert response.headers["X-RateLimit-Remaining"] == "4"
    assert int(response.headers["X-RateLimit-Reset"]) > 0


def test_a_prediction_refused_before_it_runs_still_costs_budget(limited):
    """A prediction's budget is counted when it is admitted (with its quotas and slot), or
    when it ends if the view refused it first: a bad body is no way around the limit."""
    _, actor = limited
    headers = actor.user_headers("dora")
    for remaining in ("4", "3", "2", "1", "0"):
        response = actor.client.post("/predict", json={"data": [[1, 2]]}, headers=headers)
        assert response.status_code == 400
        assert response.headers["X-RateLimit-Remaining"] == remaining
        assert "Retry-After" not in response.headers
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert_error(actor.predict(headers), 429, "RATE_LIMIT_EXCEEDED")


def test_health_is_exempt(limited):
    _, actor = limited
    for _ in range(20):
        response = actor.client.get("/health")
        assert response.status_code == 200
        assert not any(h in response.headers for h in LIMIT_HEADERS)


@pytest.mark.parametrize("user_limit", ["2/minute", 2])  # an integer is per minute
def test_role_limit_replaces_the_default(make_app, user_limit):
    app = make_app(
        auth={"rate_limit_per_minute": 100},
        rate_limits={"roles": {"admin": "1000000/minute", "user": user_limit}},
    )
    actor = Actor(app.test_client())
    headers = actor.user_headers("dora")
    assert _spend(actor, headers, 3) == [200, 200, 429]


def test_per_user_limit_wins_over_role(limited):
    app, actor = limited
    headers = actor.user_headers("emil")
    uid = _user_id(app, "emil")

    def set_limit(items):
        items[uid]["rate_limit"] = "2/minute"

    app.extensions["auth"].users.update(set_limit)
    assert _spend(actor, headers, 3) == [200, 200, 429]


def test_simple_mode_limits_per_client_address(make_app):
    app = make_app(auth={"enabled": False, "rate_limit_per_minute": 2})
    client = app.test_client()

    def call(address):
        return client.post(
            "/predict", json={"data": [[1, 2, 3]]}, environ_base={"REMOTE_ADDR": address}
        ).status_code

    assert [call("10.0.0.1") for _ in range(3)] == [200, 200, 429]
    assert call("10.0.0.2") == 200


def test_login_is_limited_per_address(make_app):
    app = make_app(rate_limits={"login": "3/minute"})
    client = app.test_client()

    def attempt(address):
        return _bad_login(client, environ_base={"REMOTE_ADDR": address})

    assert [attempt("198.51.100.7").status_code for _ in range(3)] == [401] * 3
    blocked = attempt("198.51.100.7")
    assert_error(blocked, 429, "RATE_LIMIT_EXCEEDED")
    assert "Retry-After" in blocked.headers
    assert attempt("198.51.100.8").status_code == 401


def test_rotating_forwarded_for_does_not_buy_a_new_budget(make_app):
    app = make_app(rate_limits={"login": "3/minute"})
    client = app.test_client()
    codes = [
        _bad_login(client, headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
        for i in range(6)
    ]
    assert codes == [401, 401, 401, 429, 429, 429]


def test_behind_a_trusted_proxy_only_the_proxys_hop_counts(make_app):
    app = make_app(rate_limits={"login": "3/minute"}, server={"trusted_proxies": ["127.0.0.1"]})
    client = app.test_client()

    def attempt(forwarded):
        return _bad_login(client, headers={"X-Forwarded-For": forwarded}).status_code

    # The client forges a left-most entry each time; the proxy appends the real address.
    assert [attempt(f"10.9.9.{i}, 198.51.100.20") for i in range(4)] == [401, 401, 401, 429]
    assert attempt("198.51.100.21") == 401  # another real client


@pytest.mark.parametrize(
    ("remote", "forwarded", "proxies", "expected"),
    [
        ("198.51.100.1", "1.2.3.4", [], "198.51.100.1"),
        ("198.51.100.1", "1.2.3.4", ["10.0.0.0/8"], "198.51.100.1"),
        ("10.0.0.5", "1.2.3.4", ["10.0.0.0/8"], "1.2.3.4"),
        ("10.0.0.5", "6.6.6.6, 1.2.3.4", ["10.0.0.0/8"], "1.2.3.4"),
        ("10.0.0.5", "1.2.3.4, 10.0.0.9", ["10.0.0.0/8"], "1.2.3.4"),
        ("10.0.0.5", None, ["10.0.0.0/8"], "10.0.0.5"),
        ("10.0.0.5", "garbage, 1.2.3.4", ["10.0.0.0/8"], "1.2.3.4"),
    ],
)
def test_resolve_client_address(remote, forwarded, proxies, expected):
    assert resolve_client_address(remote, forwarded, proxies) == expected


def test_default_admin_loopback_rule_uses_the_real_client(make_app):
    app = make_app(server={"trusted_proxies": ["127.0.0.1"]})
    response = app.test_client().post(
        "/auth/login",
        json={"username": "admin", "password": "admin123"},
        headers={"X-Forwarded-For": "203.0.113.50"},
    )
    assert_error(response, 401, "INVALID_CREDENTIALS")


def test_failed_logins_block_the_account_not_others(make_app):
    app = make_app(rate_limits={"login_failures": "100/hour"})
    actor = Actor(app.test_client())
    actor.register("frida")
    actor.register("gerd")

    def login(name, password):
        return actor.client.post("/auth/login", json={"username": name, "password": password})

    assert all(login("frida", "not her password").status_code == 401 for _ in range(100))
    blocked = login("frida", PASSWORD)  # the 101st attempt, even with the right password
    assert_error(blocked, 429, "RATE_LIMIT_EXCEEDED")
    assert blocked.headers.getlist("X-RateLimit-Limit") == ["100"]
    assert blocked.headers.getlist("X-RateLimit-Remaining") == ["0"]
    assert int(blocked.headers["Retry-After"]) > 60
    assert login("gerd", PASSWORD).status_code == 200


def test_unknown_accounts_are_blocked_the_same_way(make_app):
    app = make_app(rate_limits={"login_failures": "3/hour"})
    client = app.test_client()
    answers = [
        client.post("/auth/login", json={"username": "ghost", "password": "whatever1"})
        for _ in range(4)
    ]
    assert [a.status_code for a in answers] == [401, 401, 401, 429]
    real = Actor(client)
    real.register("hilde")
    for _ in range(3):
        client.post("/auth/login", json={"username": "hilde", "password": "whatever1"})
    blocked = client.post("/auth/login", json={"username": "hilde", "password": "whatever1"})
    assert blocked.get_json()["error"]["message"] == answers[3].get_json()["error"]["message"]


def test_password_hashing_is_bounded(make_app, data_dir):
    app = make_app(auth={"password_hash_slots": 1})
    client = app.test_client()
    with FileLock(str(data_dir / "slots" / "password-hash-0.lock")):  # another worker is hashing
        response = client.post("/auth/login", json={"username": "admin", "password": "admin123"})
    assert_error(response, 429, "RATE_LIMIT_EXCEEDED")
    assert response.headers["Retry-After"] == "1"
    assert (
        client.post("/auth/login", json={"username": "admin", "password": "admin123"}).status_code
        == 200
    )


def test_memory_storage_with_workers_warns():
    settings = load_settings(environ={}, overrides={"server": {"workers": 2}})
    assert any("per worker" in w or "on its own" in w for w in startup_warnings(settings))
    shared = load_settings(
        environ={},
        overrides={
            "server": {"workers": 2},
            "rate_limits": {"storage_uri": "redis://127.0.0.1:6379/0"},
        },
    )
    assert startup_warnings(shared) == []


@pytest.fixture
def delayed(make_app, clock):
    """An app that holds failed logins 1.5 s (the frozen clock records each sleep)."""
    return make_app(
        auth={"failed_login_delay_seconds": 1.5},
        rate_limits={"login": "2/minute"},
    ).test_client()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"username": "admin", "password": "wrong!!!"}, 401),  # wrong password
        ({"username": "nobody", "password": "wrong!!!"}, 401),  # unknown account
        ({"username": "admin"}, 400),  # malformed
        ({"api_key": "sk_live_not-a-key"}, 401),  # bad key
    ],
)
def test_failed_login_is_answered_after_the_delay(delayed, clock, body, status):
    assert delayed.post("/auth/login", json=body).status_code == status
    assert clock.slept == [1.5]


def test_login_refused_by_the_address_limit_is_held_too(delayed, clock):
    for _ in range(2):
        _bad_login(delayed)
    assert_error(_bad_login(delayed), 429, "RATE_LIMIT_EXCEEDED")
    assert clock.slept == [1.5] * 3


def test_successful_login_and_other_failures_are_not_held(delayed, clock):
    response = delayed.post("/auth/login", json={"username": "admin", "password": "admin123"})
    assert response.status_code == 200
    token = bearer(response.get_json()["access_token"])
    assert delayed.post("/auth/refresh", json={"refresh_token": "nope"}).status_code == 401
    assert delayed.post("/predict", json={"data": [[1]]}).status_code == 401
    assert delayed.get("/auth/me", headers=token).status_code == 200
    assert clock.slept == []


def test_no_delay_when_turned_off_or_in_simple_mode(make_app, clock):
    for sections in ({}, {"auth": {"enabled": False, "failed_login_delay_seconds": 1}}):
        client = make_app(**sections).test_client()
        assert _bad_login(client).status_code in (401, 404)
    assert clock.slept == []
