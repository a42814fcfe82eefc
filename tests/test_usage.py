"""The usage ledger and quotas: every prediction counted once; quotas in calendar windows.

Time is the test's frozen clock: a quota resets when the clock passes midnight UTC, with no job.
"""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from tests.conftest import DEMO_MODEL, Actor, assert_error


def seconds_to_midnight(now: float) -> int:
    moment = datetime.fromtimestamp(int(now), timezone.utc)
    midnight = datetime(moment.year, moment.month, moment.day, tzinfo=timezone.utc)
    return int(midnight.timestamp()) + 86400 - int(now)


@pytest.fixture
def app(make_app):
    registry = [{"name": name, "backend": "builtin", "path": DEMO_MODEL} for name in ("a", "b")]
    return make_app(
        models={"registry": registry, "default": "a"},
        quotas={"tiers": {"free": {"requests_per_day": 5}}, "default_tier": "free"},
    )


def test_the_sixth_prediction_of_a_day_is_refused_until_midnight_utc(app, clock):
    clock.now = int(clock.now) // 86400 * 86400 + 23 * 3600  # 23:00 UTC
    actor = Actor(app.test_client())
    headers = {"X-API-Key": actor.create_key(actor.user_headers("alice"))["key"]}
    for remaining in (4, 3, 2, 1, 0):
        response = actor.predict(headers)
        assert response.status_code == 200
        assert response.headers["RateLimit-Policy"] == '"requests_per_day";q=5;w=86400'
        assert response.headers["RateLimit"] == f'"requests_per_day";r={remaining};t=3600'
    error = assert_error(actor.predict(headers), 429, "QUOTA_EXCEEDED")
    assert error["details"]["quota"] == "requests_per_day"
    assert error["details"]["limit"] == 5 and error["details"]["used"] == 5
    assert error["details"]["resets_at"].endswith("T00:00:00Z")
    assert int(actor.predict(headers).headers["Retry-After"]) == seconds_to_midnight(clock.now)
    clock.advance(3600)  # midnight UTC: a new day, nothing to reset
    response = actor.predict(headers)
    assert response.status_code == 200
    assert response.headers["RateLimit"] == '"requests_per_day";r=4;t=86400'


def test_a_quota_is_spent_only_by_answered_predictions_and_counts_across_credentials(app, clock):
    actor = Actor(app.test_client())
    alice = actor.user_headers("alice")
    key = {"X-API-Key": actor.create_key(alice)["key"]}
    bad = actor.client.post("/predict", json={"data": [[1, 2]]}, headers=key)  # wrong shape
    assert bad.status_code == 400
    for headers in (alice, key, alice, key, alice):
        assert actor.predict(headers).status_code == 200
    assert_error(actor.predict(key), 429, "QUOTA_EXCEEDED")
    assert_error(actor.predict(alice), 429, "QUOTA_EXCEEDED")


def test_the_ledger_counts_each_request_once_by_user_credential_model_and_status(
    make_app, clock, data_dir
):
    registry = [{"name": name, "backend": "builtin", "path": DEMO_MODEL} for name in ("a", "b")]
    app = make_app(models={"registry": registry, "default": "a"})
    actor = Actor(app.test_client())
    alice, bob = actor.user_headers("alice"), actor.user_headers("bob")
    alice_key = actor.create_key(alice)
    ak = {"X-API-Key": alice_key["key"]}
    post = actor.client.post
    assert post("/a/predict", json={"data": [[1, 2, 3]] * 3}, headers=ak).status_code == 200
    assert post("/b/predict", json={"data": [[1, 2, 3]]}, headers=ak).status_code == 200
    assert post("/b/predict", json={"data": [[1, 2]]}, headers=ak).status_code == 400
    batch = {"inputs": [[[1, 2, 3]], [[1, 2, 3]] * 2], "model": "b"}
    assert post("/predict/batch", json=batch, headers=bob).status_code == 200
    state = app.extensions["auth"]
    today = date.fromtimestamp(int(clock.now))
    pending = sorted(state.ledger.rows(None, today, today))
    assert state.ledger.flush() == 2  # one record per user and day
    written = sorted(state.ledger.rows(None, today, today))
    assert written == pending
    alice_id = actor.client.get("/auth/me", headers=alice).get_json()["id"]
    bob_id = actor.client.get("/auth/me", headers=bob).get_json()["id"]
    counted = {
        (user, credential, model, status, requests, samples)
        for user, _, _, credential, model, status, requests, samples, _ in written
    }
    assert counted == {
        (alice_id, alice_key["id"], "a", "2xx", 1, 3),
        (alice_id, alice_key["id"], "b", "2xx", 1, 1),
        (alice_id, alice_key["id"], "b", "4xx", 1, 1),
        (bob_id, "session", "b", "2xx", 1, 3),
    }
    # A second app on the same data (a restart, or another worker) reads what was written.
    again = make_app(models={"registry": registry, "default": "a"}).extensions["auth"]
    assert sorted(again.ledger.rows(None, today, today)) == written
    used = again.ledger.used(alice_id, clock.now)
    assert (used.requests_per_day, used.samples_per_day) == (2, 4)  # the 400 spends nothing
