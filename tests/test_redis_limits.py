"""Limits shared across gunicorn workers through a real redis-server, and Redis going away."""

from __future__ import annotations

import os
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from redis.connection import Connection

from auth import limits as limits_module
from auth.core import Credentials
from auth.counting import ADMITTED, admit_on_redis
from auth.limits import PREFIX
from auth.users import find_user
from tests.conftest import Actor, assert_error
from tests.live import RedisProcess, free_port, live_server, redis_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]


def _env(uri: str, **extra: str) -> dict[str, str]:
    return {
        "INFERENCE_RATE_LIMITS__STORAGE_URI": uri,
        "INFERENCE_RATE_LIMITS__ROLES": "{admin: 10/minute}",
        "INFERENCE_RATE_LIMITS__STRATEGY": "moving-window",  # exact, whatever the clock says
        **extra,
    }


def _admin_headers(server) -> dict[str, str]:
    return {"Authorization": "Bearer " + server.login_admin()["access_token"]}


def _predict(server, headers) -> requests.Response:
    return requests.post(
        server.url("/predict"), json={"data": [[1, 2, 3]]}, headers=headers, timeout=30
    )


def test_two_workers_share_one_budget(tmp_path):
    with redis_server() as uri, live_server(tmp_path / "data", workers=2, env=_env(uri)) as server:
        assert requests.get(server.url("/ready"), timeout=30).status_code == 200
        headers = _admin_headers(server)
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda _: _predict(server, headers).status_code, range(30)))
    assert codes.count(200) == 10, codes
    assert codes.count(429) == 20


def test_redis_down_fails_closed_by_default(tmp_path):
    with redis_server() as uri:
        server_cm = live_server(tmp_path / "data", workers=1, env=_env(uri))
        server = server_cm.__enter__()
    try:  # redis is gone now
        response = _predict(server, {"Authorization": "Bearer whatever"})
        assert response.status_code == 401  # bad credentials are still refused first
        login = requests.post(
            server.url("/auth/login"),
            json={"username": "admin", "password": "admin123"},
            timeout=30,
        )
        assert login.status_code == 503
        body = login.json()["error"]
        assert body["code"] == "STORAGE_BUSY" and "rate limit" in body["message"]
        not_ready = assert_error(
            requests.get(server.url("/ready"), timeout=30), 503, "SERVICE_UNAVAILABLE"
        )
        assert not_ready["details"]["checks"]["rate_limits"] == "failing"
        assert "redis" not in not_ready["message"]  # the URI may hold a password
        assert "Traceback" not in "".join(server.log)
    finally:
        server_cm.__exit__(None, None, None)


def test_a_redis_that_stops_answering_costs_a_bounded_wait_then_503(make_app, monkeypatch):
    """A hung Redis (here stopped with SIGSTOP) holds a prediction, and the worker's others
    that share its trip, no longer than the limit storage's timeout."""
    monkeypatch.setattr(limits_module, "REDIS_TIMEOUT_SECONDS", 0.5)
    redis = RedisProcess()
    redis.start()
    try:
        app = make_app(rate_limits={"storage_uri": redis.url})
        actor = Actor(app.test_client())
        headers = actor.user_headers("hana")
        assert actor.predict(headers).status_code == 200
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            assert_error(actor.predict(headers), 503, "STORAGE_BUSY")
        finally:
            os.kill(redis.pid, signal.SIGCONT)
        assert actor.predict(headers).status_code == 200
        app.extensions["auth"].limiter.storage.get_connection().close()
    finally:
        redis.stop()


def test_an_app_made_while_redis_is_down_starts_and_fails_open(make_app):
    """A worker (or the job consumer) started while Redis is down still starts: nothing
    connects to the limit storage before a request needs it."""
    app = make_app(
        rate_limits={
            "storage_uri": f"redis://127.0.0.1:{free_port()}/0",
            "on_storage_error": "open",
        }
    )
    actor = Actor(app.test_client())
    assert actor.predict(actor.admin_headers()).status_code == 200


def test_redis_down_can_fail_open(tmp_path):
    with redis_server() as uri:
        env = _env(uri, INFERENCE_RATE_LIMITS__ON_STORAGE_ERROR="open")
        server_cm = live_server(tmp_path / "data", workers=1, env=env)
        server = server_cm.__enter__()
    try:
        headers = _admin_headers(server)
        assert [_predict(server, headers).status_code for _ in range(12)] == [200] * 12
        marker = {"X-Request-ID": "after-the-twelve"}
        requests.get(server.url("/health"), headers=marker, timeout=30)
        server.wait_for_log("request=after-the-twelve", 1)  # every line before it is in
        assert "Traceback" not in "".join(server.log)
        # Said once (a minute), not once a request.
        assert sum("serving without limits" in line for line in server.log) == 1
    finally:
        server_cm.__exit__(None, None, None)


def test_a_prediction_costs_one_round_trip_on_redis_and_counts_as_the_strategy_does(
    make_app, monkeypatch
):
    """The default strategy (sliding window counter) on Redis: a prediction's budgets (the key's
    and its user's), quotas and slot are checked and counted by one script call, whose counts
    flask-limiter's strategy reads; the slot is freed when the prediction ends."""
    with redis_server() as uri:
        app = make_app(
            auth={"rate_limit_per_minute": 6},
            rate_limits={"storage_uri": uri, "strategy": "sliding-window-counter"},
            quotas={"tiers": {"t": {"requests_per_day": 100}}, "default_tier": "t"},
        )
        actor = Actor(app.test_client())
        limits = {"rate_limit": "4/minute", "max_concurrent": 2, "models": ["demo"]}
        rita = actor.user_headers("rita")
        key = actor.create_key(rita, **limits)
        headers = {"X-API-Key": key["key"]}
        assert actor.predict(headers).status_code == 200  # the scripts are loaded by now
        limiter = app.extensions["auth"].limiter
        sent = []
        real = Connection.send_command
        monkeypatch.setattr(  # every command any client of this process sends
            Connection,
            "send_command",
            lambda self, *a, **k: sent.append(a[0]) or real(self, *a, **k),
        )
        answers = [actor.predict(headers) for _ in range(3)]
        assert sent == ["EVALSHA"] * 6  # one trip in, one to free the slot, one script
        assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]
        assert [a.headers["RateLimit"].split(";")[1] for a in answers] == ["r=98", "r=97", "r=96"]
        user_id = find_user(app.extensions["auth"].users, "rita")["id"]
        strategy = limiter.limiter
        user = strategy.get_window_stats(parse("6/minute"), PREFIX, "user", f"user:{user_id}")
        own = strategy.get_window_stats(parse("4/minute"), PREFIX, "user", f"key:{key['id']}")
        assert (user.remaining, own.remaining) == (1, 0)  # the login, the key, 4 predictions
        refused = actor.predict(headers)
        error = assert_error(refused, 429, "RATE_LIMIT_EXCEEDED")
        assert error["details"]["limit"] == "key"
        assert int(refused.headers["Retry-After"]) >= 1
        me = actor.client.get("/auth/me", headers=rita).get_json()  # read from the counters
        assert me["usage"]["quotas"][0]["used"] == 4


def test_the_script_counts_as_the_strategy_does_as_windows_slide():
    """`ADMIT` against limits' own sliding window counter on one Redis, hit for hit: counts,
    refusals and remaining, also when a window has passed and the current one becomes the
    previous (time moved on by cutting the keys' ttls, as its passing does)."""
    with redis_server() as uri:
        storage = storage_from_string(uri)
        strategy = SlidingWindowCounterRateLimiter(storage)
        connection = storage.get_connection()
        item = parse("3/minute")

        def keys(name: str) -> list[str]:
            current = storage.prefixed_key(f"{{{item.key_for(name)}}}")
            return [current, f"{current}/-1"]

        def theirs() -> tuple[bool, int, float]:
            hit = strategy.hit(item, "theirs")
            return hit, *strategy.get_window_stats(item, "theirs")[::-1]

        def ours() -> tuple[bool, int, float]:
            verdict = admit_on_redis(storage, [(item, ("ours",))])
            return verdict.verdict == ADMITTED, *verdict.windows[0][::-1]

        def pass_time(ms_left: int) -> None:  # the current windows now end in `ms_left`
            for key in (*keys("theirs")[:1], *keys("ours")[:1]):
                connection.pexpire(key, ms_left)

        answers = []
        for moment in ("hit", "hit", "hit", "hit", 45_000, "hit", "hit", 20_000, "hit", "hit"):
            if isinstance(moment, int):
                pass_time(moment)
                continue
            expected, found = theirs(), ours()
            assert found[:2] == expected[:2], answers
            # Read a moment apart; and limits' formula answers a window whose ttl is read in the
            # millisecond its counter was made (a ttl of exactly two windows) as resetting now,
            # a millisecond later as resetting in a whole window.
            apart = (found[2] - expected[2]) % 60
            assert min(apart, 60 - apart) < 1.0, (found, expected)
            answers.append(expected)
        assert [hit for hit, *_ in answers] == [True, True, True, False, True, False, True, True]
        assert [connection.get(key) for key in keys("ours")] == [
            connection.get(key) for key in keys("theirs")
        ]


def test_quotas_and_slots_hold_exactly_across_servers_sharing_redis(make_app):
    """Two apps over one data dir and one Redis, as two hosts (or workers) are: a quota spent
    on one is spent on the other at once (no wait for the usage ledger's writes), a key's slot
    held on one is held for both, and a failed prediction spends no quota."""
    with redis_server() as uri:
        sections = {
            "rate_limits": {"storage_uri": uri, "strategy": "sliding-window-counter"},
            "quotas": {"tiers": {"t": {"requests_per_day": 3}}, "default_tier": "t"},
            "usage": {"flush_seconds": 3600},  # nothing reaches the store while the test runs
        }
        one, two = Actor(make_app(**sections).test_client()), None
        key = one.create_key(one.user_headers("quinn"), max_concurrent=1)
        two = Actor(make_app(**sections).test_client())
        headers = {"X-API-Key": key["key"]}
        wrong_shape = two.client.post("/predict", json={"data": [[1, 2]]}, headers=headers)
        assert wrong_shape.status_code == 400  # admitted, then failed: its count is given back
        state = two.client.application.extensions["auth"]
        principal = state.identify(Credentials(None, key["key"], "127.0.0.1"))
        grant = state.admissions.admit(principal, "127.0.0.1", 1, state.clock(), budget=False)
        # A prediction in flight on the second server holds the key's only slot...
        refused = one.client.post("/predict/batch", json={"inputs": [[[1, 2, 3]]]}, headers=headers)
        assert_error(refused, 429, "CONCURRENCY_LIMIT_EXCEEDED")
        grant.slot.release()  # ...until it ends; it spent one of the three a day
        assert [a.predict(headers).status_code for a in (one, two)] == [200, 200]
        error = assert_error(one.predict(headers), 429, "QUOTA_EXCEEDED")
        assert error["details"]["used"] == 3
