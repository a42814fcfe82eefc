"""The usage ledger and quotas: every prediction counted once; quotas in calendar windows.

Time is the test's frozen clock: a quota resets when the clock passes midnight UTC, with no job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date, datetime, timezone
from types import SimpleNamespace

import pytest
import requests

from auth.ledger import Ledger, Used
from auth.quotas import QuotaExceeded, quota_fields, quotas_of
from tests.conftest import DEMO_MODEL, REPO, Actor, assert_error
from tests.live import live_server, server_env


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
    refused = actor.predict(headers)
    error = assert_error(refused, 429, "QUOTA_EXCEEDED")
    assert refused.headers["RateLimit"] == '"requests_per_day";r=0;t=3600'
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


@pytest.fixture
def mixed(make_app, clock):
    """Two users, two models, a key and a session, one failing call: (app, actor, ids)."""
    registry = [{"name": name, "backend": "builtin", "path": DEMO_MODEL} for name in ("a", "b")]
    app = make_app(
        models={"registry": registry, "default": "a"},
        quotas={"tiers": {"free": {"requests_per_day": 100}}, "default_tier": "free"},
    )
    actor = Actor(app.test_client())
    alice, bob = actor.user_headers("alice"), actor.user_headers("bob")
    key = actor.create_key(alice)
    post = actor.client.post
    ak = {"X-API-Key": key["key"]}
    assert post("/a/predict", json={"data": [[1, 2, 3]] * 3}, headers=ak).status_code == 200
    assert post("/b/predict", json={"data": [[1, 2, 3]]}, headers=alice).status_code == 200
    assert post("/b/predict", json={"data": [[1, 2]]}, headers=ak).status_code == 400
    assert post("/a/predict", json={"data": [[1, 2, 3]]}, headers=bob).status_code == 200
    me = actor.client.get("/auth/me", headers=alice).get_json()
    return app, actor, {"alice": alice, "bob": bob, "key": key["id"], "alice_id": me["id"]}


def test_the_usage_api_reports_what_was_counted_by_each_grouping(mixed):
    app, actor, ids = mixed
    get = actor.client.get
    by_model = get("/auth/usage?group_by=model", headers=ids["alice"]).get_json()
    figures = [(r["model"], r["requests"], r["failed"], r["samples"]) for r in by_model["rows"]]
    assert figures == [("a", 1, 0, 3), ("b", 2, 1, 1)]
    assert all(r["inference_ms"] > 0 for r in by_model["rows"])
    assert by_model["totals"]["requests"] == 3 and by_model["totals"]["samples"] == 4
    assert by_model["user_id"] == ids["alice_id"]
    [quota] = by_model["quotas"]
    assert (quota["quota"], quota["limit"], quota["used"], quota["remaining"]) == (
        "requests_per_day",
        100,
        2,
        98,
    )
    by_key = get("/auth/usage?group_by=key", headers=ids["alice"]).get_json()["rows"]
    assert [(r["key"], r["requests"]) for r in by_key] == sorted([(ids["key"], 2), ("session", 1)])
    admin = actor.admin_headers()
    everyone = get("/admin/usage?group_by=user", headers=admin).get_json()
    assert everyone["user_id"] is None and everyone["totals"]["requests"] == 4
    assert len(everyone["rows"]) == 2
    one = get("/admin/usage?user=bob&group_by=model", headers=admin).get_json()
    assert [(r["model"], r["requests"]) for r in one["rows"]] == [("a", 1)]
    # The profile and the login answer show today's usage and the quota beside it.
    me = get("/auth/me", headers=ids["alice"]).get_json()["usage"]
    assert me["today"] == {"requests": 2, "samples": 4} and me["quotas"][0]["remaining"] == 98
    login = actor.login("bob", "correct horse battery staple")["usage"]
    assert login["today"] == {"requests": 1, "samples": 1}


@pytest.mark.parametrize(
    "query, field",
    [
        ("group_by=week", "group_by"),
        ("from=2026-13-01", "from"),
        ("to=yesterday", "to"),
        ("from=2026-12-02&to=2026-12-01", "from"),
        ("from=2024-01-01&to=2026-01-01", "from"),
    ],
)
def test_a_bad_usage_query_is_a_400_naming_the_field(mixed, query, field):
    _, actor, ids = mixed
    response = actor.client.get(f"/auth/usage?{query}", headers=ids["alice"])
    assert assert_error(response, 400, "VALIDATION_ERROR")["details"]["field"] == field


def test_the_cli_report_reads_what_the_workers_wrote_after_a_restart(mixed, run):
    app, actor, ids = mixed
    api = actor.client.get("/admin/usage?group_by=model", headers=actor.admin_headers())
    app.extensions["auth"].ledger.flush()
    result = run("usage", "report", "--by", "model", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"] == api.get_json()["rows"]
    tiers = {"INFERENCE_QUOTAS__TIERS": "{free: {requests_per_day: 100}}"}
    tiers["INFERENCE_QUOTAS__DEFAULT_TIER"] = "free"
    table = run("usage", "report", "--user", "alice", "--by", "key", **tiers)
    assert table.exit_code == 0, table.output
    assert f"{ids['key']}" in table.output and "total" in table.output
    assert "quota requests_per_day: 2 of 100 used, 98 left" in table.output
    csv_rows = run("usage", "report", "--by", "user", "--csv").output.splitlines()
    assert csv_rows[0] == "user,requests,failed,samples,inference_ms" and len(csv_rows) == 3


def _reported(data_dir, *, until: int | None = None) -> int:
    """The requests `usage report` finds written in `data_dir`; with `until`, asked again until
    it finds that many (the workers write every flush interval) or a deadline passes."""
    deadline = time.monotonic() + 60
    while True:
        done = subprocess.run(
            [sys.executable, "run.py", "usage", "report", "--by", "user", "--json"],
            cwd=REPO,
            env=server_env(data_dir),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        total = json.loads(done.stdout)["totals"]["requests"]
        if until is None or total >= until or time.monotonic() > deadline:
            return total


@pytest.mark.slow
def test_usage_across_two_workers_survives_a_restart_and_a_sigkill_loses_no_written_count(
    tmp_path,
):
    data_dir = tmp_path / "data"
    env = {"INFERENCE_USAGE__FLUSH_SECONDS": "0.5"}
    with live_server(data_dir, workers=2, env=env) as server:
        headers = server.admin_credentials()["api-key"]
        for _ in range(20):  # a connection each: both workers serve some
            answer = requests.post(
                server.url("/predict"), json={"data": [[1, 2, 3]]}, headers=headers, timeout=30
            )
            assert answer.status_code == 200
    assert _reported(data_dir) == 20  # every worker wrote its counts when it stopped

    with live_server(data_dir, workers=2, env=env) as server:
        for _ in range(10):
            answer = requests.post(
                server.url("/predict"), json={"data": [[1, 2, 3]]}, headers=headers, timeout=30
            )
            assert answer.status_code == 200
        assert _reported(data_dir, until=30) == 30  # written within the flush interval
        for pid in server.worker_pids():
            os.kill(pid, signal.SIGKILL)  # no exit hook runs
    # What was written stays, once: a SIGKILL loses only counts not yet written.
    assert _reported(data_dir) == 30


class _FailingOnce:
    """A store whose first write raises what no store should (a bug, say); then it works."""

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}
        self.calls = 0

    def get(self, record_id: str):
        return self.records.get(record_id)

    def version(self) -> int:
        return self.calls

    def update(self, change):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("unexpected")
        change(self.records)


def test_counts_survive_a_write_that_raises(clock):
    store = _FailingOnce()
    ledger = Ledger(store, flush_seconds=3600)
    ledger.add(
        "usr_1",
        credential="session",
        model="a",
        status=200,
        samples=2,
        inference_ms=1.0,
        now=clock.now,
    )
    with pytest.raises(RuntimeError):
        ledger.flush()
    assert ledger.used("usr_1", clock.now).requests_per_day == 1  # still pending, not lost
    assert ledger.flush() == 1
    [record] = store.records.values()
    assert (record["requests"], record["samples"]) == (1, 2)


def test_an_admin_moves_a_user_to_another_tier_or_gives_them_quotas_of_their_own(
    make_app, run, clock
):
    tiers = {"free": {"requests_per_day": 2}, "pro": {"requests_per_day": 4}}
    actor = Actor(make_app(quotas={"tiers": tiers, "default_tier": "free"}).test_client())
    alice = actor.user_headers("alice")
    alice_id = actor.client.get("/auth/me", headers=alice).get_json()["id"]
    admin = actor.admin_headers()

    def patch(**changes):
        return actor.client.patch(f"/admin/users/{alice_id}", json=changes, headers=admin)

    assert [actor.predict(alice).status_code for _ in range(3)] == [200, 200, 429]
    assert patch(tier="pro").get_json()["tier"] == "pro"
    response = actor.predict(alice)
    assert response.headers["RateLimit-Policy"] == '"requests_per_day";q=4;w=86400'
    assert [response.status_code, actor.predict(alice).status_code] == [200, 200]
    assert_error(actor.predict(alice), 429, "QUOTA_EXCEEDED")
    assert patch(quota={"requests_per_day": 5}).get_json()["quota"] == {"requests_per_day": 5}
    assert actor.predict(alice).status_code == 200  # her own quota, over the tier's
    assert_error(actor.predict(alice), 429, "QUOTA_EXCEEDED")
    for field, bad in (("tier", "gold"), ("quota", {"requests_per_hour": 1})):
        error = assert_error(patch(**{field: bad}), 400, "VALIDATION_ERROR")
        assert error["details"]["field"] == field

    result = run("users", "set-quota", "alice", "none")
    assert result.exit_code == 0 and "their tier's" in result.output, result.output
    result = run("users", "set-tier", "alice", "none")
    assert result.exit_code == 0 and "default tier" in result.output, result.output
    profile = actor.client.get(f"/admin/users/{alice_id}", headers=admin).get_json()
    assert (profile["tier"], profile["quota"]) == (None, None)
    refused = actor.predict(alice)
    assert refused.headers["RateLimit-Policy"] == '"requests_per_day";q=2;w=86400'
    assert run("users", "set-tier", "alice", "gold").exit_code != 0
    assert run("users", "set-quota", "alice", "requests_per_day=many").exit_code != 0
    assert run("users", "set-quota", "alice", "samples_per_day=10").exit_code == 0
    me = actor.client.get("/auth/me", headers=alice).get_json()
    assert {q["quota"] for q in me["usage"]["quotas"]} == {"requests_per_day", "samples_per_day"}


def test_a_days_written_usage_is_read_again_when_another_process_writes(make_app, clock):
    """Quota checks keep a user's written day totals until the store changes: a write by
    another process (a ledger of its own on the same data dir) is seen at the next check."""
    app = make_app()
    here = app.extensions["auth"]
    elsewhere = Ledger(make_app().extensions["auth"].ledger.store, flush_seconds=3600)
    for ledger, samples, total in ((here.ledger, 2, 2), (elsewhere, 5, 7)):
        ledger.add(
            "usr_1",
            credential="session",
            model="a",
            status=200,
            samples=samples,
            inference_ms=1.0,
            now=clock.now,
        )
        ledger.flush()
        here.storage.sync()
        assert here.ledger.used("usr_1", clock.now).samples_per_day == total
        here.storage.end_request()


def test_each_quota_is_checked_against_its_own_count(clock):
    # quota_fields reads the counts by each quota's place in QUOTAS: a mix-up would show here.
    tier = {"requests_per_day": 10, "samples_per_day": 20, "requests_per_month": 30}
    state = SimpleNamespace(quotas=SimpleNamespace(tiers={"t": tier}, default_tier="t"))
    user = {"quota": {"samples_per_month": 40}}
    quotas = quotas_of(state, user, clock.now)
    fields = dict(quota_fields(quotas, Used(1, 2, 3, 4), 5, clock.now))
    left = dict(item.split(";")[:2] for item in fields["RateLimit"].split(", "))
    assert left == {
        '"requests_per_day"': "r=8",
        '"samples_per_day"': "r=13",
        '"requests_per_month"': "r=26",
        '"samples_per_month"': "r=31",
    }
    with pytest.raises(QuotaExceeded) as refused:
        quota_fields(quotas, Used(1, 2, 3, 36), 5, clock.now)
    assert refused.value.details["quota"] == "samples_per_month"
