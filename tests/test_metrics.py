"""GET /metrics: who may read it, that its counters move with the traffic, that its labels stay
bounded, and, under gunicorn, that it sums every worker and keeps a dead worker's counts.

In one test process the counters are the process's own (the library's default registry), shared
by every app a test builds: the tests compare a scrape before and after what they do.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from auth import this_pid
from tests.conftest import Actor, assert_error, bearer
from tests.live import live_server

TOKEN = "c2NyYXBlci1zZWNyZXQtdGhhdC1pcy1sb25nLWVub3VnaC0xMjM0NTY3OA"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(client, headers: dict[str, str]) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return parse(response.get_data(as_text=True))


def test_metrics_need_the_admin_scope_or_the_metrics_token(make_app):
    actor = Actor(make_app(metrics={"token": TOKEN}).test_client())
    client, admin = actor.client, actor.admin_headers()
    assert_error(client.get("/metrics"), 401, "AUTHENTICATION_REQUIRED")
    assert_error(client.get("/metrics", headers=bearer("not-the-token")), 401, "INVALID_TOKEN")
    assert_error(
        client.get("/metrics", headers=actor.user_headers()), 403, "INSUFFICIENT_PERMISSIONS"
    )
    plain_key = actor.create_key(admin)["key"]  # an admin's key without the admin scope
    refused = client.get("/metrics", headers={"X-API-Key": plain_key})
    assert_error(refused, 403, "INSUFFICIENT_PERMISSIONS")
    admin_key = actor.create_key(admin, scopes=["admin"])["key"]
    for headers in (admin, {"X-API-Key": admin_key}, bearer(TOKEN)):
        scrape(client, headers)
    # The token opens /metrics and nothing else.
    assert_error(client.get("/auth/me", headers=bearer(TOKEN)), 401, "INVALID_TOKEN")


def test_with_authentication_off_metrics_are_open_unless_a_token_is_set(make_app):
    scrape(make_app(auth={"enabled": False}).test_client(), {})
    closed = make_app(auth={"enabled": False}, metrics={"token": TOKEN}).test_client()
    assert_error(closed.get("/metrics"), 401, "AUTHENTICATION_REQUIRED")
    scrape(closed, bearer(TOKEN))


def test_metrics_can_be_turned_off(make_app):
    client = make_app(metrics={"enabled": False}).test_client()
    assert_error(client.get("/metrics", headers=bearer(TOKEN)), 404, "NOT_FOUND")


def test_counters_move_with_predictions_failures_and_writes(app, actor):
    admin = actor.admin_headers()
    before = scrape(actor.client, admin)
    key = actor.create_key(admin, scopes=["predict"])["key"]
    for _ in range(3):
        assert actor.predict({"X-API-Key": key}, data=[[1, 2, 3], [4, 5, 6]]).status_code == 200
    bad = actor.predict({"X-API-Key": key[:-4] + "AAAA"})
    assert bad.status_code == 401
    assert actor.client.get("/no-such-page", headers=admin).status_code == 404
    after = scrape(actor.client, admin)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests_total = "inference_http_requests_total"
    assert moved(requests_total, method="POST", route="/predict", status="200") == 3
    assert moved(requests_total, method="POST", route="/predict", status="401") == 1
    assert moved(requests_total, method="GET", route="<unmatched>", status="404") == 1
    assert moved("inference_prediction_samples_total", model="demo") == 6
    assert moved("inference_prediction_seconds_count", model="demo") == 3
    assert moved("inference_auth_failures_total", reason="INVALID_API_KEY") == 1
    assert moved("inference_store_write_seconds_count", store="api_keys") >= 1
    assert value(after, "inference_predictions_in_flight") == 0
    assert value(after, "inference_model_load_seconds", model="demo") > 0


@pytest.mark.parametrize(
    ("sections", "code"),
    [
        ({"auth": {"rate_limit_per_minute": 2}}, "RATE_LIMIT_EXCEEDED"),
        (
            {"quotas": {"tiers": {"free": {"requests_per_day": 2}}, "default_tier": "free"}},
            "QUOTA_EXCEEDED",
        ),
    ],
)
def test_each_limit_rejection_is_counted_by_its_code(make_app, sections, code):
    actor = Actor(make_app(**sections).test_client())
    alice = actor.user_headers("alice")
    before = scrape(actor.client, actor.admin_headers())
    answers = [actor.predict(alice).status_code for _ in range(3)]
    assert answers == [200, 200, 429]
    after = scrape(actor.client, actor.admin_headers())
    name = "inference_limit_rejections_total"
    assert value(after, name, reason=code) - value(before, name, reason=code) == 1


def test_labels_come_from_bounded_sets_never_from_the_client_or_the_caller(app, actor):
    admin = actor.admin_headers()
    alice_id = actor.register("alice")
    key = actor.create_key(admin, scopes=["predict"])
    actor.client.open("/predict", method="BREW", headers=admin)
    for path in ("/x%0Ay", "/users/alice-secret-path", "/models/no-such-model"):
        actor.client.get(path, headers=admin)
    text = actor.client.get("/metrics", headers=admin).get_data(as_text=True)
    samples = parse(text)
    routes = {dict(labels).get("route") for _name, labels in samples}
    assert "/models/<name>" in routes and "<unmatched>" in routes
    assert not any(route and ("alice" in route or "\n" in route) for route in routes)
    brewed = {"method": "OTHER", "route": "<unmatched>", "status": "405"}
    assert value(samples, "inference_http_requests_total", **brewed) >= 1
    for private in (alice_id, key["id"], key["prefix"], "no-such-model"):
        assert private not in text


@pytest.mark.slow
def test_two_workers_are_summed_and_a_killed_workers_counts_are_kept_in_a_few_files(tmp_path):
    data_dir = tmp_path / "data"
    metrics_dir = data_dir / "metrics"
    metrics_dir.mkdir(parents=True)
    (metrics_dir / "counter_1.db").write_bytes(b"a previous run's counts")
    with live_server(data_dir, workers=2) as server:
        assert not (metrics_dir / "counter_1.db").exists()  # made fresh at start
        admin = server.admin_credentials()["jwt"]
        predicted = 0

        def predict(times: int) -> None:
            nonlocal predicted
            for _ in range(times):  # a connection each: every worker serves some
                answer = requests.post(
                    server.url("/predict"), json={"data": [[1, 2, 3]]}, headers=admin, timeout=30
                )
                assert answer.status_code == 200
            predicted += times

        def served() -> float:
            text = requests.get(server.url("/metrics"), headers=admin, timeout=30).text
            samples = parse(text)
            return value(
                samples,
                "inference_http_requests_total",
                method="POST",
                route="/predict",
                status="200",
            )

        def counting() -> set[str]:
            return {path.name for path in metrics_dir.glob("counter_*.db")}

        while len(counting()) < 2 and predicted < 300:  # until both workers served some
            predict(10)
        assert len(counting()) == 2, counting()  # both workers counted...
        assert served() == predicted  # ...and a scrape sums them
        serving = 2
        for _ in range(3):
            os.kill(server.worker_pids()[0], signal.SIGKILL)
            serving += 1
            server.wait_for_log("this worker is serving", serving)
            predict(10)
            assert served() == predicted  # the dead worker's counts are kept
        live = {*server.worker_pids(), *server.consumer_pids()}  # the consumer counts too
        files = sorted(path.name for path in metrics_dir.glob("*.db"))
        pids = {int(name.split("_")[-1][:-3]) for name in files if name[-4].isdigit()}
        assert pids <= live, files  # no file of a dead worker is read by a scrape
        assert {"counter_archive.db", "histogram_archive.db"} <= set(files)
        assert not list(metrics_dir.glob("*.dead"))


def test_the_metrics_directory_is_named_to_the_workers_only_when_metrics_are_on(tmp_path):
    from inference_server.serve import metrics_dir, worker_environment
    from inference_server.settings import load_settings

    on = load_settings(overrides={"storage": {"data_dir": str(tmp_path)}}, environ={})
    off = load_settings(
        overrides={"storage": {"data_dir": str(tmp_path)}, "metrics": {"enabled": False}},
        environ={},
    )
    assert worker_environment(on, None)["PROMETHEUS_MULTIPROC_DIR"] == str(metrics_dir(on))
    assert metrics_dir(on) == Path(tmp_path).resolve() / "metrics"
    assert "PROMETHEUS_MULTIPROC_DIR" not in worker_environment(off, None)


def _report_identifier(found) -> None:
    found.put((this_pid(), os.getpid()))


def test_the_process_identifier_of_the_metric_files_moves_on_in_a_forked_child():
    # Multiprocess values ask it on every write to notice a fork and open the child's own files.
    assert this_pid() == os.getpid()
    fork = multiprocessing.get_context("fork")
    found = fork.Queue()
    child = fork.Process(target=_report_identifier, args=(found,))
    child.start()
    seen, pid = found.get(timeout=60)
    child.join(60)
    assert seen == pid == child.pid != os.getpid()
