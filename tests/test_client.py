"""The Python client (`inference_server.client`) against a real HTTP server.

Most tests serve an in-process app over real HTTP (`serving_app`) so that they hold its clock:
a token expires by moving the clock, not by waiting. The README's example runs against
`python run.py`, its job run by the server's own consumer.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import pytest
from flask import request, request_finished

from inference_server.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    NotFound,
    PermissionDenied,
    RateLimited,
    ValidationError,
)
from tests.conftest import PASSWORD, Actor
from tests.live import REPO, live_server, serving_app
from tests.test_readme import _python_block


class Pauses:
    """The client's sleep: records each pause (and takes it for real only if told to)."""

    def __init__(self, *, real: bool = False) -> None:
        self.taken: list[float] = []
        self._real = real

    def __call__(self, seconds: float) -> None:
        self.taken.append(seconds)
        if self._real:
            time.sleep(seconds)


def refreshes_of(app) -> list[int]:
    """The statuses of the /auth/refresh calls `app` answers from now on."""
    statuses: list[int] = []

    def note(sender, response, **extra):
        if request.path == "/auth/refresh":
            statuses.append(response.status_code)

    request_finished.connect(note, app, weak=False)  # held by the signal, not by a caller
    return statuses


@pytest.fixture
def served(make_app):
    def serve(**sections):
        app = make_app(**sections)
        actor = Actor(app.test_client())
        actor.register("alice")
        return app, actor, serving_app(app)

    return serve


def test_login_predict_keys_and_typed_errors(served):
    app, actor, serving = served()
    with serving as base, Client.login(base, "alice", PASSWORD) as alice:
        answer = alice.predict([[1.0, 2.0, 3.0]])
        same = actor.predict(actor.user_headers("bobby")).get_json()
        assert answer["predictions"] == same["predictions"] and answer["model"] == "demo"
        assert [m["name"] for m in alice.models()] == ["demo"]
        assert alice.me()["username"] == "alice"
        made = alice.keys.create("svc", scopes=["predict"])
        with Client(base, api_key=made["key"]) as service:
            assert service.predict_batch([[[1, 2, 3]], [[1, 2]]])["results"][1]["error"]
            with pytest.raises(PermissionDenied) as denied:
                service.keys.list()  # a prediction key cannot manage keys
            assert denied.value.code == "INSUFFICIENT_PERMISSIONS"
            assert [k["id"] for k in alice.keys.list()] == [made["id"]]
            alice.keys.revoke(made["id"])
            with pytest.raises(AuthenticationError) as refused:
                service.predict([[1, 2, 3]])
        error = refused.value
        assert (error.status, error.code) == (401, "INVALID_API_KEY")
        assert error.request_id and error.message
        with pytest.raises(NotFound) as missing:
            alice.predict([[1, 2, 3]], model="nope")
        assert missing.value.code == "NOT_FOUND"
        with pytest.raises(ValidationError) as invalid:
            alice.predict("not samples")
        assert invalid.value.details["field"] == "data"
        with pytest.raises(AuthenticationError) as wrong:
            Client.login(base, "alice", "not her password")
        assert wrong.value.code == "INVALID_CREDENTIALS"


def test_an_expired_token_is_renewed_once_for_eight_threads_and_the_session_lives(served, clock):
    app, _, serving = served()
    refreshes = refreshes_of(app)

    with serving as base, Client.login(base, "alice", PASSWORD) as alice:
        assert alice.predict([[1, 2, 3]])["predictions"]
        clock.advance(31 * 60)  # the access token (30 minutes) has expired
        start = threading.Barrier(8)
        answers, errors = [], []

        def predict() -> None:
            start.wait()
            try:
                answers.append(alice.predict([[1, 2, 3]]))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=predict) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == [] and len(answers) == 8
        assert refreshes == [200]  # one renewal: a second use of a refresh token ends it all
        assert alice.me()["username"] == "alice"  # the session is alive


def test_429_is_retried_after_retry_after_within_the_deadline(served):
    pauses = Pauses(real=True)  # the server's window is real time: the retry waits for it
    app, actor, serving = served(rate_limits={"roles": {"user": "2/second"}})
    with serving as base, Client.login(base, "alice", PASSWORD, sleep=pauses) as alice:
        for _ in range(3):
            assert alice.predict([[1, 2, 3]])["predictions"]
    assert pauses.taken and all(0 < pause <= 1 for pause in pauses.taken)


def test_a_quota_beyond_the_deadline_is_raised_at_once(served):
    pauses = Pauses()
    quotas = {"tiers": {"t": {"requests_per_day": 1}}, "default_tier": "t"}
    app, _, serving = served(quotas=quotas)
    with serving as base, Client.login(base, "alice", PASSWORD, sleep=pauses) as alice:
        alice.predict([[1, 2, 3]])
        with pytest.raises(RateLimited) as spent:
            alice.predict([[1, 2, 3]])
    assert spent.value.code == "QUOTA_EXCEEDED" and spent.value.retry_after > 30
    assert pauses.taken == []  # waiting until tomorrow is not a retry


def test_a_job_is_submitted_waited_for_and_its_result_read(served):
    app, _, serving = served()
    seen = []

    def progress(job):
        seen.append(job["status"])
        app.extensions["jobs"].drain()  # the consumer runs it (in this process)

    with serving as base, Client.login(base, "alice", PASSWORD, sleep=Pauses()) as alice:
        job = alice.jobs.submit([[[1, 2, 3]], [[1, 2]]], project="p")
        done = alice.jobs.wait(job["id"], progress=progress, poll_seconds=0.5)
        assert done["status"] == "completed" and seen == ["queued", "completed"]
        result = alice.jobs.result(job["id"])
        assert (result["succeeded"], result["failed"]) == (1, 1)
        assert [j["id"] for j in alice.jobs.list(project="p")] == [job["id"]]
        alice.jobs.delete(job["id"])
        with pytest.raises(NotFound):
            alice.jobs.get(job["id"])


def test_the_client_imports_nothing_of_the_server():
    code = (
        "import sys, inference_server.client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('flask', 'auth', 'numpy', 'huey', 'gunicorn')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.slow
def test_the_readme_example_runs_against_a_server(tmp_path, monkeypatch):
    with live_server(tmp_path / "data") as server:
        key = server.admin_credentials()["api-key"]["X-API-Key"]
        monkeypatch.setitem(os.environ, "BASE", server.base)
        monkeypatch.setitem(os.environ, "KEY", key)
        example: dict = {"__name__": "__main__"}
        exec(_python_block("## Python client"), example)
        assert example["done"]["status"] == "completed"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_the_async_twin_renews_once_for_eight_tasks_and_waits_for_a_job(served, clock):
    app, _, serving = served()
    refreshes = refreshes_of(app)

    async def no_pause(seconds: float) -> None:
        app.extensions["jobs"].drain()  # the consumer runs the job while the client waits

    with serving as base:
        alice = await AsyncClient.login(base, "alice", PASSWORD, sleep=no_pause)
        async with alice:
            assert (await alice.predict([[1, 2, 3]]))["predictions"]
            clock.advance(31 * 60)
            answers = await asyncio.gather(*(alice.predict([[1, 2, 3]]) for _ in range(8)))
            assert len(answers) == 8 and refreshes == [200]
            made = await alice.keys.create("svc", scopes=["predict"])
            assert [k["id"] for k in await alice.keys.list()] == [made["id"]]
            job = await alice.jobs.submit(data=[[1, 2, 3], [4, 5, 6]])
            done = await alice.jobs.wait(job["id"], poll_seconds=0.5)
            assert done["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
            assert [j["id"] for j in await alice.jobs.list()] == [job["id"]]
            with pytest.raises(NotFound):
                await alice.jobs.get("job_missing")
            await alice.logout()


def test_an_expired_session_is_raised_not_renewed_forever(served, clock):
    app, _, serving = served()
    with serving as base, Client.login(base, "alice", PASSWORD) as alice:
        clock.advance(8 * 24 * 3600)  # the refresh token (7 days) has expired too
        raised = []

        def me() -> None:
            try:
                alice.me()
            except AuthenticationError as exc:
                raised.append(exc)

        thread = threading.Thread(target=me, daemon=True)
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the client hangs renewing inside a renewal"
        assert [exc.code for exc in raised] == ["TOKEN_EXPIRED"]
