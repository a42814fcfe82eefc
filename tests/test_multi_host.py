"""Two servers (two "hosts": each its own data dir and workers) sharing one real redis-server.

Everything a user does on one host holds on the other at its next request: accounts, keys,
logouts, disabled users; of concurrent refreshes of one token across hosts exactly one wins;
concurrent registrations never make two users of one name; and Redis going away and coming
back is answered with 503s and served again without restarting anything.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from multiprocessing import get_context

import pytest
import requests

from tests.conftest import assert_error
from tests.live import REPO, RedisProcess, live_server, server_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]
NEW_ADMIN_PASSWORD = "a-new-admin-password-7"


@contextmanager
def two_hosts(tmp_path, *, workers=1, **env):
    """A redis-server (its data kept in an append-only file) and two servers on it."""
    (tmp_path / "redis").mkdir()
    redis = RedisProcess(tmp_path / "redis")
    redis.start()
    shared = {
        "INFERENCE_STORAGE__BACKEND": "redis",
        "INFERENCE_STORAGE__REDIS_URL": redis.url,
        **env,
    }
    try:
        with ExitStack() as stack:
            hosts = [
                stack.enter_context(live_server(tmp_path / name, workers=workers, env=shared))
                for name in ("host-a", "host-b")
            ]
            for host in hosts:
                host.env = shared
            yield redis, *hosts
    finally:
        redis.stop()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _login(host, username, password) -> requests.Response:
    return requests.post(
        host.url("/auth/login"), json={"username": username, "password": password}, timeout=60
    )


def _admin(host) -> dict[str, str]:
    """Bearer headers of the admin, its default password changed (once, on any host)."""
    response = _login(host, "admin", NEW_ADMIN_PASSWORD)
    if response.status_code != 200:
        token = host.login_admin()["access_token"]
        changed = requests.post(
            host.url("/auth/change-password"),
            json={"current_password": "admin123", "new_password": NEW_ADMIN_PASSWORD},
            headers=_bearer(token),
            timeout=60,
        )
        assert changed.status_code == 200, changed.text
        response = _login(host, "admin", NEW_ADMIN_PASSWORD)
    assert response.status_code == 200, response.text
    return _bearer(response.json()["access_token"])


def _register(host, username, headers=None) -> requests.Response:
    return requests.post(
        host.url("/auth/register"),
        json={"username": username, "password": "a-long-password-1", "email": f"{username}@x.io"},
        headers=headers or {},
        timeout=60,
    )


def _models(host, headers) -> requests.Response:
    return requests.get(host.url("/models"), headers=headers, timeout=60)


def _me(host, headers) -> requests.Response:
    return requests.get(host.url("/auth/me"), headers=headers, timeout=60)


def test_what_happens_on_one_host_holds_on_the_other(tmp_path):
    with two_hosts(tmp_path) as (_, a, b):
        admin_a = _admin(a)
        assert _register(a, "dana", admin_a).status_code == 201
        login = _login(b, "dana", "a-long-password-1")
        assert login.status_code == 200
        on_b = _bearer(login.json()["access_token"])

        made = requests.post(
            b.url("/auth/api-keys"), json={"name": "svc"}, headers=on_b, timeout=60
        )
        key = {"X-API-Key": made.json()["key"]}
        predicted = requests.post(
            a.url("/predict"), json={"data": [[1, 2, 3]]}, headers=key, timeout=60
        )
        assert predicted.status_code == 200

        on_a = _bearer(_login(a, "dana", "a-long-password-1").json()["access_token"])
        assert _me(b, on_a).status_code == 200
        assert requests.post(a.url("/auth/logout"), headers=on_a, timeout=60).status_code == 200
        assert_error(_me(b, on_a), 401, "INVALID_TOKEN")  # ended on B at its next request
        assert _me(b, on_b).status_code == 200  # the other session lives on

        user_id = _me(b, on_b).json()["id"]
        admin_b = _admin(b)
        disabled = requests.patch(
            b.url(f"/admin/users/{user_id}"), json={"is_active": False}, headers=admin_b, timeout=60
        )
        assert disabled.status_code == 200, disabled.text
        assert_error(_me(a, on_b), 401, "INVALID_TOKEN")
        refused = requests.post(
            a.url("/predict"), json={"data": [[1, 2, 3]]}, headers=key, timeout=60
        )
        assert_error(refused, 401, "INVALID_API_KEY")
        tail = subprocess.run(
            [sys.executable, "run.py", "audit", "tail", "-n", "100"],
            env=server_env(tmp_path / "cli", **a.env),
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    events = [json.loads(line)["event"] for line in tail.stdout.splitlines()]
    # One trail for both hosts: the registration on A, the key made on B, the disabling on B.
    assert {"user.registered", "api_key.created", "user.updated"} <= set(events), events


def test_concurrent_refreshes_of_one_token_across_hosts_exactly_one_wins(tmp_path):
    with two_hosts(tmp_path, workers=2) as (_, a, b):
        refresh = a.login_admin()["refresh_token"]
        targets = [a, b] * 25

        def attempt(host) -> int:
            return requests.post(
                host.url("/auth/refresh"), json={"refresh_token": refresh}, timeout=60
            ).status_code

        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(attempt, targets))
    assert codes.count(200) == 1, codes
    assert set(codes) == {200, 401}, codes


def _register_many(spec) -> dict[str, int]:
    """25 registrations of names of this process's own, then 5 names every process tries."""
    urls, process = spec
    names = [f"user-{process}-{n:02d}" for n in range(25)] + [f"shared-{n}" for n in range(5)]
    codes = {}
    for n, name in enumerate(names):
        response = requests.post(
            urls[n % 2] + "/auth/register",
            json={"username": name, "password": "a-long-password-1", "email": f"{name}@x.io"},
            timeout=60,
        )
        codes[name] = response.status_code
    return codes


def test_concurrent_registrations_over_two_hosts_make_each_name_once(tmp_path):
    env = {
        "INFERENCE_AUTH__REGISTRATION": "open",
        "INFERENCE_AUTH__RATE_LIMIT_PER_MINUTE": "10000",
        "INFERENCE_AUTH__PASSWORD_HASH_SLOTS": "4",
    }  # 4 clients at once: no 429 for a busy slot
    with two_hosts(tmp_path, workers=2, **env) as (_, a, b):
        with get_context("spawn").Pool(4) as pool:
            results = pool.map(_register_many, [([a.base, b.base], p) for p in range(4)])
        listed = requests.get(a.url("/admin/users?limit=500"), headers=_admin(a), timeout=60)
    own = [code for codes in results for name, code in codes.items() if name.startswith("user")]
    assert own == [201] * 100
    for n in range(5):
        tries = [codes[f"shared-{n}"] for codes in results]
        assert sorted(tries) == [201, 409, 409, 409], tries
    names = [user["username"] for user in listed.json()["users"]]
    assert len(names) == len(set(names)) == 1 + 100 + 5


def test_redis_stopped_mid_run_writes_503_reads_served_then_back_without_restart(tmp_path):
    env = {"INFERENCE_STORAGE__REDIS_STALE_SECONDS": "3600"}
    with two_hosts(tmp_path, **env) as (redis, a, b):
        admin = _admin(a)
        key = requests.post(a.url("/auth/api-keys"), json={"name": "k"}, headers=admin, timeout=60)
        key_headers = {"X-API-Key": key.json()["key"]}
        assert _models(b, key_headers).status_code == 200
        redis.stop()
        write = requests.post(
            b.url("/auth/api-keys"), json={"name": "k2"}, headers=admin, timeout=60
        )
        assert_error(write, 503, "STORAGE_UNAVAILABLE")
        assert "Retry-After" in write.headers
        for host in (a, b):  # reads: served from each process's copy
            assert _models(host, key_headers).status_code == 200
            predicted = requests.post(
                host.url("/predict"), json={"data": [[1, 2, 3]]}, headers=key_headers, timeout=60
            )
            assert predicted.status_code == 200
        assert requests.get(a.url("/ready"), timeout=60).status_code == 503
        redis.start()
        again = requests.post(
            b.url("/auth/api-keys"), json={"name": "k2"}, headers=admin, timeout=60
        )
        assert again.status_code == 201, again.text
        assert requests.get(a.url("/ready"), timeout=60).status_code == 200
        logs = "".join(a.log + b.log)
    assert "Traceback" not in logs


def test_a_job_submitted_on_one_host_is_run_by_a_consumer_and_read_on_the_other(tmp_path):
    """Each host starts its own consumer on the shared queue: whichever takes the job runs it,
    and the record, the result and the listing are the same on both hosts."""
    polling = {"INFERENCE_RATE_LIMITS__ROLES": "{admin: 100000000/minute}"}
    with two_hosts(tmp_path, **polling) as (_, host_a, host_b):
        headers = _admin(host_a)
        inputs = [[[i, i + 1, i + 2]] for i in range(60)] + [[[1, 2]]]
        submitted = requests.post(
            host_a.url("/jobs"),
            json={"inputs": inputs, "project": "x"},
            headers=headers,
            timeout=60,
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = requests.get(host_b.url(f"/jobs/{job_id}"), headers=headers, timeout=60).json()
            if job["status"] == "completed":
                break
        assert job["request_counts"] == {"total": 61, "completed": 60, "failed": 1}
        result = requests.get(host_b.url(f"/jobs/{job_id}/result"), headers=headers, timeout=60)
        batch = requests.post(
            host_b.url("/predict/batch"), json={"inputs": inputs}, headers=headers, timeout=60
        ).json()
        for ours, theirs in zip(result.json()["results"], batch["results"], strict=True):
            assert ours.get("predictions") == theirs.get("predictions")
            assert ("error" in ours) == ("error" in theirs)
        listed = requests.get(host_a.url("/jobs?project=x"), headers=headers, timeout=60).json()
        assert [j["id"] for j in listed["jobs"]] == [job_id]
        deleted = requests.delete(host_a.url(f"/jobs/{job_id}"), headers=headers, timeout=60)
        assert deleted.status_code == 200
        gone = requests.get(host_b.url(f"/jobs/{job_id}/result"), headers=headers, timeout=60)
        assert_error(gone, 404, "NOT_FOUND")
