"""Prediction jobs: submit, run, poll, fetch; each user sees only their own; cancel; recovery.

In-process tests run the queue here (`Jobs.drain` takes each queued job and runs it, as the
consumer does), so every step is in the test's hands; a live test runs a real server, whose
master starts the consumer process itself.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time

import pytest
import requests

from tests import test_faults
from tests.conftest import Actor, assert_error, on_redis
from tests.live import RedisProcess, live_server
from tests.test_faults import _fill, served_on

INPUTS = [[[1, 2, 3]], [[1, 2]], [[4, 5, 6], [7, 8, 9]], [[0, 0, 0]]]
small_disk = test_faults.small_disk  # a real 4 MB tmpfs, skipped where it cannot be mounted
# The live tests poll a job as fast as they can: the admin's budget must not run out first.
POLLING = {"INFERENCE_RATE_LIMITS__ROLES": "{admin: 100000000/minute}"}
JOB_LIMITS = {"chunk_inputs": 2, "max_queued_per_user": 3, "max_inputs": 10}


def poll(server, job_id: str, headers: dict[str, str]) -> dict:
    answer = requests.get(server.url(f"/jobs/{job_id}"), headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture(params=["json", "redis"])
def backend(request) -> dict:
    """The config sections of each storage backend: jobs behave the same on both."""
    if request.param == "json":
        return {}
    return on_redis(request.getfixturevalue("redis_url"))


@pytest.fixture
def app(make_app, backend):
    return make_app(jobs=JOB_LIMITS, **backend)


@pytest.fixture
def actor(app):
    return Actor(app.test_client())


def submit(actor, headers, **body):
    sent = {key: value for key, value in ({"inputs": INPUTS} | body).items() if value is not None}
    response = actor.client.post("/jobs", json=sent, headers=headers)
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()


def drain(app) -> int:
    return app.extensions["jobs"].drain()


def test_a_job_answers_what_the_batch_route_answers_for_the_same_inputs(app, actor):
    alice = actor.user_headers("alice")
    job = submit(actor, alice, project="churn", metadata={"run": 7})
    assert job["status"] == "queued" and job["request_counts"]["total"] == 4
    assert (job["project"], job["metadata"], job["samples"]) == ("churn", {"run": 7}, 5)
    assert drain(app) == 1
    done = actor.client.get(f"/jobs/{job['id']}", headers=alice).get_json()
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    assert done["started_at"] and done["finished_at"]
    result = actor.client.get(f"/jobs/{job['id']}/result", headers=alice).get_json()
    batch = actor.client.post("/predict/batch", json={"inputs": INPUTS}, headers=alice).get_json()
    assert [r["index"] for r in result["results"]] == [0, 1, 2, 3]
    for ours, theirs in zip(result["results"], batch["results"], strict=True):
        if "error" in theirs:  # a bad input fails alone, with the batch route's error
            assert ours["error"]["code"] == theirs["error"]["code"] == "VALIDATION_ERROR"
            assert ours["error"]["details"] == theirs["error"]["details"]
        else:
            assert ours["predictions"] == theirs["predictions"]
    assert (result["succeeded"], result["failed"], result["partial"]) == (3, 1, False)
    lines = actor.client.get(f"/jobs/{job['id']}/result?format=jsonl", headers=alice)
    assert lines.content_type == "application/x-ndjson"
    assert [json.loads(line) for line in lines.get_data(as_text=True).splitlines()] == (
        result["results"]
    )
    me = actor.client.get("/auth/usage?group_by=model", headers=alice).get_json()
    # The job counts each input as a prediction (samples of the answered ones); the batch is
    # one request of five samples.
    assert (me["totals"]["requests"], me["totals"]["samples"]) == (4 + 1, 4 + 5)


def test_another_users_job_is_not_found_and_an_admin_sees_everyones(app, actor):
    alice, bob = actor.user_headers("alice"), actor.user_headers("bobby")
    mine, theirs = submit(actor, alice, project="a"), submit(actor, bob)
    client = actor.client
    for method, path in (
        ("get", ""),
        ("get", "/result"),
        ("post", "/cancel"),
        ("delete", ""),
    ):
        response = getattr(client, method)(f"/jobs/{theirs['id']}{path}", headers=alice)
        assert_error(response, 404, "NOT_FOUND")
    assert_error(client.get("/jobs/job_nonexistent", headers=alice), 404, "NOT_FOUND")
    listed = client.get("/jobs", headers=alice).get_json()
    assert [j["id"] for j in listed["jobs"]] == [mine["id"]]
    admin = actor.admin_headers()
    everyone = client.get("/jobs", headers=admin).get_json()
    assert {j["id"] for j in everyone["jobs"]} == {mine["id"], theirs["id"]}
    only_bob = client.get(f"/jobs?user={theirs['user_id']}", headers=admin).get_json()
    assert [j["id"] for j in only_bob["jobs"]] == [theirs["id"]]
    assert client.get(f"/jobs/{theirs['id']}", headers=admin).status_code == 200
    by_project = client.get("/jobs?project=a&status=queued", headers=alice).get_json()
    assert by_project["total"] == 1


def test_a_queued_job_is_cancelled_at_once_and_a_running_one_between_chunks(app, actor):
    alice = actor.user_headers("alice")
    queued = submit(actor, alice)
    cancelled = actor.client.post(f"/jobs/{queued['id']}/cancel", headers=alice).get_json()
    assert cancelled["status"] == "cancelled"
    service = app.extensions["jobs"]
    running = submit(actor, alice)
    real = service._answer_each

    def cancel_after_the_first_chunk(model, checked):
        answered = real(model, checked)
        if len(answered[0]) == 2:  # the client cancels while the job runs
            response = actor.client.post(f"/jobs/{running['id']}/cancel", headers=alice)
            assert response.get_json()["status"] == "cancelling"
        return answered

    service._answer_each = cancel_after_the_first_chunk
    assert drain(app) == 2  # the cancelled job's id comes off the queue and runs nothing
    job = actor.client.get(f"/jobs/{running['id']}", headers=alice).get_json()
    assert job["status"] == "cancelled"
    assert job["request_counts"] == {"total": 4, "completed": 1, "failed": 1}  # one chunk
    result = actor.client.get(f"/jobs/{running['id']}/result", headers=alice).get_json()
    assert result["partial"] is True and [r["index"] for r in result["results"]] == [0, 1]
    assert (
        actor.client.get(f"/jobs/{queued['id']}/result", headers=alice).get_json()["results"] == []
    )
    again = actor.client.post(f"/jobs/{running['id']}/cancel", headers=alice)
    assert_error(again, 409, "CONFLICT")
    assert actor.client.delete(f"/jobs/{running['id']}", headers=alice).status_code == 200
    assert_error(actor.client.get(f"/jobs/{running['id']}", headers=alice), 404, "NOT_FOUND")


def test_a_job_interrupted_by_a_crash_resumes_after_its_last_chunk_once(app, actor):
    alice = actor.user_headers("alice")
    job = submit(actor, alice)
    service = app.extensions["jobs"]
    real = service._answer_each
    calls = []

    def crash_in_the_second_chunk(model, checked):
        calls.append(len(checked))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the consumer dies: nothing of this chunk is kept
        return real(model, checked)

    service._answer_each = crash_in_the_second_chunk
    drain(app)  # Huey notes the interrupted task; the job's record stays in progress
    state = actor.client.get(f"/jobs/{job['id']}", headers=alice).get_json()
    assert state["status"] == "in_progress"
    assert state["request_counts"] == {"total": 4, "completed": 1, "failed": 1}
    assert service.recover() == [job["id"]]  # a consumer starting finds it and puts it back
    assert drain(app) == 1
    result = actor.client.get(f"/jobs/{job['id']}/result", headers=alice).get_json()
    assert [r["index"] for r in result["results"]] == [0, 1, 2, 3]  # nothing answered twice
    assert calls == [2, 2, 2]

    twice = submit(actor, alice)
    service._answer_each = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt())
    for _ in range(2):
        drain(app)
        service.recover()
    failed = actor.client.get(f"/jobs/{twice['id']}", headers=alice).get_json()
    assert failed["status"] == "failed" and "interrupted twice" in failed["error"]


def test_job_limits_and_refusals(app, actor):
    alice = actor.user_headers("alice")
    client = actor.client
    too_many = client.post("/jobs", json={"inputs": [[[1, 2, 3]]] * 11}, headers=alice)
    assert_error(too_many, 413, "PAYLOAD_TOO_LARGE")
    assert_error(
        client.post("/jobs", json={"inputs": INPUTS, "model": "nope"}, headers=alice),
        404,
        "NOT_FOUND",
    )
    for body, field in (
        ({"inputs": []}, "inputs"),
        ({"inputs": INPUTS, "data": [[1, 2, 3]]}, "inputs"),
        ({"inputs": INPUTS, "metadata": {"x": "y" * 5000}}, "metadata"),
        ({"inputs": INPUTS, "projekt": "typo"}, "projekt"),
    ):
        error = assert_error(
            client.post("/jobs", json=body, headers=alice), 400, "VALIDATION_ERROR"
        )
        assert field in json.dumps(error["details"])
    key = actor.create_key(alice, models=["other-*"], scopes=["predict"])["key"]
    refused = client.post("/jobs", json={"inputs": INPUTS}, headers={"X-API-Key": key})
    assert_error(refused, 403, "INSUFFICIENT_PERMISSIONS")
    for _ in range(3):
        submit(actor, alice)
    assert_error(
        client.post("/jobs", json={"inputs": INPUTS}, headers=alice), 429, "RATE_LIMIT_EXCEEDED"
    )
    rows = client.post(
        "/jobs", json={"data": [[1, 2, 3], [4, 5, 6]]}, headers=actor.admin_headers()
    )
    assert rows.status_code == 202 and rows.get_json()["request_counts"]["total"] == 2


def test_the_cli_lists_shows_and_cancels_jobs_and_the_audit_log_has_them(make_app, run, data_dir):
    actor = Actor(make_app(jobs=JOB_LIMITS).test_client())
    alice = actor.user_headers("alice")
    job = submit(actor, alice)
    listed = run("jobs", "list", "--user", "alice")
    assert listed.exit_code == 0 and job["id"] in listed.output and "queued" in listed.output
    shown = run("jobs", "show", job["id"])
    assert json.loads(shown.output)["request_counts"]["total"] == 4
    cancelled = run("jobs", "cancel", job["id"])
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.output
    assert run("jobs", "show", "job_missing").exit_code != 0
    events = [
        json.loads(line)["event"] for line in (data_dir / "audit.log").read_text().splitlines()
    ]
    assert "job.submitted" in events and "job.cancelled" in events


@pytest.mark.slow
def test_the_server_runs_jobs_with_no_other_command(tmp_path):
    with live_server(tmp_path / "data", workers=2, env=POLLING) as server:
        headers = server.admin_credentials()["api-key"]
        submitted = requests.post(
            server.url("/jobs"), json={"inputs": [[[1, 2, 3]]] * 500}, headers=headers, timeout=30
        )
        assert submitted.status_code == 202
        job_id = submitted.json()["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the consumer process runs it
            job = poll(server, job_id, headers)
            if job["status"] == "completed":
                break
        assert job["request_counts"] == {"total": 500, "completed": 500, "failed": 0}


def test_a_disabled_users_jobs_are_cancelled_and_metrics_count_jobs(app, actor):
    from tests.test_metrics import parse, value

    alice = actor.user_headers("alice")
    admin = actor.admin_headers()
    before = parse(actor.client.get("/metrics", headers=admin).get_data(as_text=True))
    kept, stopped = submit(actor, actor.user_headers("bobby")), submit(actor, alice)
    samples = parse(actor.client.get("/metrics", headers=admin).get_data(as_text=True))
    assert value(samples, "inference_jobs", status="queued") == 2
    alice_id = stopped["user_id"]
    disabled = actor.client.patch(
        f"/admin/users/{alice_id}", json={"is_active": False}, headers=admin
    )
    assert disabled.status_code == 200
    assert drain(app) == 2
    job = actor.client.get(f"/jobs/{stopped['id']}", headers=admin).get_json()
    assert job["status"] == "cancelled" and "disabled or deleted" in job["error"]
    assert job["request_counts"]["completed"] == 0
    ran = actor.client.get(f"/jobs/{kept['id']}", headers=admin).get_json()
    assert ran["status"] == "completed"
    after = parse(actor.client.get("/metrics", headers=admin).get_data(as_text=True))
    assert value(after, "inference_jobs", status="completed") == 1
    assert value(after, "inference_jobs", status="cancelled") == 1
    finished = "inference_job_seconds_count"
    assert (
        value(after, finished, status="completed") - value(before, finished, status="completed")
        == 1
    )


@pytest.mark.slow
def test_a_restart_finishes_a_running_and_a_queued_job_answering_each_input_once(tmp_path):
    data_dir = tmp_path / "data"
    env = {"INFERENCE_JOBS__CHUNK_INPUTS": "10", **POLLING}
    inputs = [[[float(i), 2.0, 3.0]] for i in range(20_000)]
    with live_server(data_dir, workers=1, env=env) as server:
        headers = server.admin_credentials()["api-key"]

        def submitted(count: int) -> str:
            body = {"inputs": inputs[:count]}
            answer = requests.post(server.url("/jobs"), json=body, headers=headers, timeout=60)
            assert answer.status_code == 202
            return answer.json()["id"]

        running = submitted(20_000)  # 2,000 chunks, each made durable: seconds of work
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if poll(server, running, headers)["request_counts"]["completed"] > 0:
                break
        queued = submitted(100)  # waits: the one consumer thread runs the other
        assert poll(server, running, headers)["status"] == "in_progress"  # stopped mid-way
    # The consumer stopped with the server: the running job paused after its chunk.
    with live_server(data_dir, workers=1, env=env) as server:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = [poll(server, job_id, headers) for job_id in (running, queued)]
            if all(state["status"] == "completed" for state in states):
                break
        assert [state["status"] for state in states] == ["completed", "completed"]
        lines = requests.get(
            server.url(f"/jobs/{running}/result?format=jsonl"), headers=headers, timeout=60
        ).text.splitlines()
        assert [json.loads(line)["index"] for line in lines] == list(range(20_000))


def test_a_job_beyond_the_quota_is_refused_and_a_result_beyond_its_limit_fails(make_app):
    quotas = {"tiers": {"t": {"samples_per_day": 50}}, "default_tier": "t"}
    app = make_app(quotas=quotas, jobs={"chunk_inputs": 10, "max_result_mb": 0.001})
    actor = Actor(app.test_client())
    alice = actor.user_headers("alice")
    too_many = {"inputs": [[[1, 2, 3]]] * 51}
    error = assert_error(
        actor.client.post("/jobs", json=too_many, headers=alice), 429, "QUOTA_EXCEEDED"
    )
    assert error["details"]["quota"] == "samples_per_day"
    job = submit(actor, alice, inputs=[[[1, 2, 3]]] * 50)  # about 1.5 KB of answers
    assert drain(app) == 1
    failed = actor.client.get(f"/jobs/{job['id']}", headers=alice).get_json()
    assert failed["status"] == "failed" and "max_result_mb" in failed["error"]
    result = actor.client.get(f"/jobs/{job['id']}/result", headers=alice).get_json()
    assert 0 < len(result["results"]) < 50 and result["partial"] is True


def test_a_full_disk_refuses_a_job_with_503_and_leaves_nothing_behind(small_disk, make_app):
    data_dir, app, actor = served_on(small_disk, make_app)
    alice = actor.user_headers("alice")
    _fill(data_dir)
    refused = actor.client.post("/jobs", json={"inputs": INPUTS * 200}, headers=alice)
    assert_error(refused, 503, "STORAGE_UNAVAILABLE")
    (data_dir / "filler").unlink()
    assert actor.client.get("/jobs", headers=alice).get_json()["total"] == 0
    assert not [p for p in (data_dir / "jobs").iterdir() if p.name.startswith("job_")]
    assert submit(actor, alice)["status"] == "queued"  # room again: it takes jobs
    app.extensions["jobs"].huey.storage.close()  # let go of the queue's file, and of the disk


def test_a_job_of_samples_answers_each_and_a_bad_one_fails_alone(app, actor):
    alice = actor.user_headers("alice")
    for data, failing in (
        ([[1, 2, 3], [4, 5, 6], [7, 8, 9]], []),
        ([[1, 2, 3], [1, 2], [4, 5, 6]], [1]),
    ):
        job = submit(actor, alice, inputs=None, data=data)
        assert job["request_counts"]["total"] == 3
        drain(app)
        result = actor.client.get(f"/jobs/{job['id']}/result", headers=alice).get_json()
        errors = [r["index"] for r in result["results"] if "error" in r]
        assert errors == failing
        predicted = actor.predict(alice, data=[data[i] for i in range(3) if i not in failing])
        answers = [r["predictions"][0] for r in result["results"] if "predictions" in r]
        assert answers == predicted.get_json()["predictions"]


def test_a_jobs_samples_count_against_the_quotas_of_every_backend(make_app, backend):
    quotas = {"tiers": {"t": {"samples_per_day": 10}}, "default_tier": "t"}
    limits = {}
    if backend:  # on Redis the quota counters live beside the limits, apart from the ledger
        limits = {
            "storage_uri": backend["storage"]["redis_url"],
            "strategy": "sliding-window-counter",
        }
    app = make_app(quotas=quotas, rate_limits=limits, jobs=JOB_LIMITS, **backend)
    actor = Actor(app.test_client())
    alice = actor.user_headers("alice")
    assert actor.predict(alice).status_code == 200  # her counters exist before the job runs
    submit(actor, alice, inputs=[[[1, 2, 3]]] * 4 + [[[1, 2]], [[4, 5, 6], [7, 8, 9]]])
    assert drain(app) == 1  # 6 samples answered, the bad input's none
    me = actor.client.get("/auth/usage", headers=alice).get_json()
    assert [(q["quota"], q["used"]) for q in me["quotas"]] == [("samples_per_day", 7)]
    assert actor.predict(alice, data=[[1, 2, 3]] * 3).status_code == 200  # 10 of 10
    error = assert_error(actor.predict(alice), 429, "QUOTA_EXCEEDED")
    assert error["details"]["quota"] == "samples_per_day"


def test_the_queue_holds_json_and_never_loads_a_pickle(app, tmp_path):
    """Whoever can write to the queue (a shared Redis) must not be able to run code in every
    consumer: a pickle put on it is refused, never loaded."""
    service = app.extensions["jobs"]
    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (ran.write_text, ("pwned",))

    service.huey.storage.enqueue(pickle.dumps(Payload()))
    with pytest.raises(ValueError):
        drain(app)
    assert not ran.exists()


def test_a_job_whose_consumer_on_another_host_stops_beating_is_taken_over(app, actor, clock):
    alice = actor.user_headers("alice")
    job = submit(actor, alice)
    service = app.extensions["jobs"]
    elsewhere = "another-host:4242"

    def running_elsewhere(items):
        items[job["id"]] = {**items[job["id"]], "status": "in_progress", "runner": elsewhere}
        items[job["id"]]["attempts"] = 1

    service.store.update(running_elsewhere)
    service.huey.storage.flush_queue()  # its id was taken off the queue by that consumer
    service.huey.storage.put_data(f"consumer:{elsewhere}", str(clock()).encode())
    clock.advance(30)
    assert service.recover() == []  # it beat half a minute ago: it runs the job
    assert drain(app) == 0
    clock.advance(60)
    assert service.recover() == [job["id"]]  # silent for 90 s: dead, the job is run here
    assert drain(app) == 1
    done = actor.client.get(f"/jobs/{job['id']}", headers=alice).get_json()
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 3


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_a_redis_outage_refuses_a_job_with_503_and_stores_none_of_it(make_app, tmp_path):
    (tmp_path / "redis").mkdir()
    redis = RedisProcess(tmp_path / "redis")  # its own, kept on disk: stopped and started here
    redis.start()
    try:
        app = make_app(jobs=JOB_LIMITS, **on_redis(redis.url))
        actor = Actor(app.test_client())
        alice = actor.user_headers("alice")
        kept = submit(actor, alice)
        redis.stop()
        refused = actor.client.post("/jobs", json={"inputs": INPUTS}, headers=alice)
        error = assert_error(refused, 503, "STORAGE_UNAVAILABLE")
        assert "Redis" in error["message"] and "Retry-After" in refused.headers
        redis.start()
        listed = actor.client.get("/jobs", headers=alice).get_json()
        assert [job["id"] for job in listed["jobs"]] == [kept["id"]]
        client = app.extensions["jobs"].payloads._client
        assert {key.decode().split(":")[2] for key in client.keys("*:job:*")} == {kept["id"]}
        assert drain(app) == 1  # the queue holds the one job stored
    finally:
        redis.stop()


def test_a_consumer_whose_job_was_taken_over_stops_without_writing_over_it(app, actor):
    alice = actor.user_headers("alice")
    job = submit(actor, alice)
    service = app.extensions["jobs"]
    real = service._answer_each
    elsewhere = "another-host/1:7:beef"

    def taken_over_after_the_first_chunk(model, checked):
        answered = real(model, checked)

        def taken(items):  # this consumer was thought dead: another one took the job
            items[job["id"]] = {**items[job["id"]], "runner": elsewhere}

        service.store.update(taken)
        return answered

    service._answer_each = taken_over_after_the_first_chunk
    assert drain(app) == 1
    state = service.store.get(job["id"])
    assert (state["status"], state["runner"]) == ("in_progress", elsewhere)
    assert state["completed"] + state["failed"] == 0  # its chunk is the new consumer's to do


def test_a_runner_is_alive_only_while_it_beats_even_with_a_pid_of_this_host(app, clock):
    from inference_server.jobs.queue import PLACE, runner_alive

    huey = app.extensions["jobs"].huey
    same_pid = f"{PLACE}:{os.getpid()}:another-process"  # a pid used again, or a container's
    assert not runner_alive(huey, same_pid, clock)
    huey.storage.put_data(f"consumer:{same_pid}", str(clock()).encode())
    assert runner_alive(huey, same_pid, clock)
    gone = f"{PLACE}:999999999:cafe"  # no such process here: dead at once, beat or not
    huey.storage.put_data(f"consumer:{gone}", str(clock()).encode())
    assert not runner_alive(huey, gone, clock)
