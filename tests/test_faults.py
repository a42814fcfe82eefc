"""Faults an operator meets: files deleted under a running server, a lost secret, dead writers.

Each test reproduces one row of the fault campaign through the HTTP API (or a restart) and
checks that access never widens, nothing committed is silently dropped, and the answer is the
JSON error shape, never a 500.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from auth import SecretError, StoreCorrupt
from inference_server.app import create_app
from inference_server.settings import load_settings
from tests.conftest import (
    PASSWORD,
    REPO,
    Actor,
    assert_error,
    base_overrides,
    compacted,
    on_disk,
)
from tests.live import live_server


def _restart(data_dir):
    return create_app(load_settings(overrides=base_overrides(data_dir), environ={}))


def _register(actor, admin, name: str):
    body = {"username": name, "password": PASSWORD, "email": f"{name}@example.org"}
    return actor.client.post("/auth/register", json=body, headers=admin)


@pytest.mark.parametrize("file", ["users.json", "users.journal.jsonl"])
def test_a_store_file_deleted_while_serving_is_an_error_never_an_empty_restart(
    app, actor, data_dir, file
):
    admin = actor.admin_headers()
    actor.register("erin")
    compacted(data_dir, "users")  # both files exist: the snapshot and a fresh journal
    actor.register("fred")
    (data_dir / file).unlink()
    # Writes are refused, naming the file; nothing is written from an empty store.
    error = assert_error(_register(actor, admin, "gina"), 503, "STORAGE_BUSY")
    assert "users.json" in error["message"]
    assert not (data_dir / file).exists()
    # Reads go on from what was committed: nobody vanished, the admin included.
    listed = actor.client.get("/admin/users", headers=admin).get_json()
    assert {u["username"] for u in listed["users"]} == {"admin", "erin", "fred"}
    # A journal without the snapshot it continues, or a snapshot without its journal, stops
    # a restart: neither is ever taken for a new store.
    with pytest.raises(StoreCorrupt, match=file):
        _restart(data_dir)


def test_a_data_dir_deleted_while_serving_comes_back_private_and_refuses_writes(
    app, actor, data_dir
):
    headers = actor.user_headers("hana")
    key = actor.create_key(headers)["key"]
    shutil.rmtree(data_dir)
    response = actor.client.post("/auth/api-keys", json={"name": "again"}, headers=headers)
    assert_error(response, 503, "STORAGE_BUSY")
    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert actor.predict({"X-API-Key": key}).status_code == 200  # the last good copy serves


def test_a_lost_secret_beside_issued_tokens_stops_the_start(app, actor, data_dir):
    actor.login("admin", "admin123")  # a token was signed: sessions exist
    (data_dir / "jwt_secret").unlink()
    with pytest.raises(SecretError, match="jwt_secret is missing, but tokens were signed"):
        _restart(data_dir)
    assert not (data_dir / "jwt_secret").exists()  # no new secret that would split the workers


def test_a_secret_is_made_for_a_data_dir_whose_users_came_from_the_cli(tmp_path):
    data_dir = tmp_path / "data"
    app = _restart(data_dir)  # users, no tokens yet: as after `create-admin` on a new machine
    (data_dir / "jwt_secret").unlink()
    assert _restart(data_dir) and (data_dir / "jwt_secret").exists()
    assert app


def test_temp_files_of_dead_writers_are_removed_at_start(app, actor, data_dir):
    actor.register("iris")
    leftovers = [
        data_dir / ".api_keys.json.k3j2.tmp",
        data_dir / ".users.journal.jsonl.x9z1.tmp",
        data_dir / ".sessions.json.abcd.tmp",
    ]
    for leftover in leftovers:
        leftover.write_text("half a snapshot")
    _restart(data_dir)
    assert [f for f in leftovers if f.exists()] == []
    assert (data_dir / "users.journal.jsonl").exists()  # the real files are untouched


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MB file system (tmpfs) for the data dir, unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:  # .ci/run runs as root, where this works
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    apps: list = []
    try:
        yield mount_point, apps
    finally:
        for app in apps:  # let go of the files, or the file system stays busy
            app.extensions["auth"].close()
        subprocess.run(["umount", str(mount_point)], check=True)


def served_on(small_disk, make_app) -> tuple[Path, Any, Actor]:
    """An app whose data dir is on the small disk (let go of with the disk): the data dir,
    the app and an Actor calling it."""
    disk, apps = small_disk
    data_dir = disk / "data"
    app = make_app(storage={"data_dir": str(data_dir)})
    apps.append(app)
    return data_dir, app, Actor(app.test_client())


def _fill(directory) -> None:
    """Write until the file system answers ENOSPC."""
    with open(directory / "filler", "wb", buffering=0) as fh:  # nothing left to flush at close
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def _until_refused(write, tries: int = 60):
    """Call `write(i)` until it is refused; a change may still fit in the last page of a
    journal. Returns the refusal and how many were acknowledged before it."""
    for i in range(tries):
        answer = write(i)
        if answer.status_code >= 400:
            return answer, i
    raise AssertionError("the full disk never refused a write")


def test_a_full_disk_refuses_writes_with_503_and_service_resumes_by_itself(
    small_disk, make_app, clock
):
    disk, _ = small_disk
    data_dir, app, actor = served_on(small_disk, make_app)
    admin = actor.admin_headers()
    key = actor.create_key(admin)["key"]
    refresh = [actor.login("admin", "admin123")["refresh_token"]]
    _fill(disk)

    def refreshed(i):
        answer = actor.client.post("/auth/refresh", json={"refresh_token": refresh[-1]})
        if answer.status_code == 200:
            refresh.append(answer.get_json()["refresh_token"])
        return answer

    writes = {
        "users.json": lambda i: _register(actor, admin, f"full{i}"),
        "api_keys.json": lambda i: actor.client.post(
            "/auth/api-keys", json={"name": f"k{i}"}, headers=admin
        ),
        "sessions.json": refreshed,
    }
    registered = 0
    for file, write in writes.items():
        refused, acknowledged = _until_refused(write)
        error = assert_error(refused, 503, "STORAGE_UNAVAILABLE")
        assert file in error["message"] and "No space left" in error["message"]
        registered = acknowledged if file == "users.json" else registered
    login = {"username": "admin", "password": "admin123"}
    assert_error(actor.client.post("/auth/login", json=login), 503, "STORAGE_UNAVAILABLE")
    # Reads and predictions go on; a key's first use in a minute is only noted, and a flush
    # that the disk refuses keeps the notes for the next one.
    usage = app.extensions["auth"].key_usage
    for _ in range(60):  # a few lines may still fit in the journal's last page
        clock.advance(120)
        assert actor.predict({"X-API-Key": key}).status_code == 200
        assert actor.client.get("/models", headers={"X-API-Key": key}).status_code == 200
        if usage.flush() == 0:
            break
    else:
        raise AssertionError("the full disk never refused the key use")

    (disk / "filler").unlink()  # the operator makes room
    assert _register(actor, actor.admin_headers(), "after").status_code == 201
    assert refreshed(0).status_code == 200
    assert usage.flush() == 1
    names = {u["username"] for u in on_disk(data_dir, "users").values()}
    expected = {"admin", "after", *(f"full{i}" for i in range(registered))}
    assert names == expected  # nothing acknowledged lost, no half change left behind


def test_the_cli_on_a_full_disk_prints_one_line_and_exits_1(small_disk):
    disk, _ = small_disk
    data_dir = disk / "data"
    env = {**os.environ, "INFERENCE_STORAGE__DATA_DIR": str(data_dir)}
    make = [sys.executable, str(REPO / "run.py"), "create-admin", "--username", "root"]
    make += ["--email", "r@example.org", "--password-stdin"]
    made = subprocess.run(make, input=PASSWORD + "\n", env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    _fill(disk)
    create = [sys.executable, str(REPO / "run.py"), "keys", "create", "--user", "root"]
    for i in range(40):  # a few keys may still fit in the journal's last page
        result = subprocess.run(
            [*create, "--name", f"k{i}"], env=env, capture_output=True, text=True
        )
        if result.returncode != 0:
            break
    else:
        raise AssertionError("the full disk never refused a key")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "No space left on device" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def two_workers(make_app):
    """Two apps on one data dir, as two worker processes, both past their first request."""
    first, second = make_app(), make_app()
    for app in (first, second):
        app.extensions["auth"].warm()  # as each gunicorn worker does before serving
    return Actor(first.test_client()), Actor(second.test_client())


def test_a_key_made_just_before_its_journal_was_deleted_works_in_every_worker(
    two_workers, data_dir
):
    one, other = two_workers
    admin = one.admin_headers()
    key = one.create_key(admin)["key"]
    compacted(data_dir, "api_keys")
    assert other.predict({"X-API-Key": key}).status_code == 200  # each request follows the files
    second_key = one.create_key(admin)["key"]
    (data_dir / "api_keys.journal.jsonl").unlink()
    for credential in (key, second_key):
        answers = [w.predict({"X-API-Key": credential}).status_code for w in (one, other)]
        assert answers == [200, 200]
    for worker in (one, other):
        refused = worker.client.post("/auth/api-keys", json={"name": "k"}, headers=admin)
        assert_error(refused, 503, "STORAGE_BUSY")
    with pytest.raises(StoreCorrupt, match="api_keys.journal.jsonl is missing"):
        _restart(data_dir)  # a restart would lose the second key: it refuses instead


def test_a_disable_committed_before_the_file_broke_holds_in_every_worker(two_workers, data_dir):
    one, other = two_workers
    admin = one.admin_headers()
    june = other.user_headers("june")
    key = {"X-API-Key": other.create_key(june)["key"]}
    june_id = other.client.get("/auth/me", headers=june).get_json()["id"]
    assert [w.predict(key).status_code for w in (one, other)] == [200, 200]
    disabled = one.client.patch(f"/admin/users/{june_id}", json={"is_active": False}, headers=admin)
    assert disabled.status_code == 200
    compacted(data_dir, "users").write_text("{broken by hand")
    # The key's own record is untouched: only the users store can say June is disabled.
    assert [w.predict(key).status_code for w in (one, other) * 2] == [401, 401, 401, 401]


def _predict(server, headers):
    body = {"data": [[1.0, 2.0, 3.0]]}
    return requests.post(server.url("/predict"), json=body, headers=headers, timeout=60)


@pytest.mark.slow
def test_workers_that_start_while_a_store_is_broken_stand_by_and_the_server_stays_up(tmp_path):
    data_dir = tmp_path / "data"
    with live_server(data_dir, workers=2) as server:
        key = server.admin_credentials()["api-key"]
        assert _predict(server, key).status_code == 200
        users = compacted(data_dir, "users")
        good = users.read_bytes()
        users.write_text("{broken by hand")
        for pid in server.worker_pids():  # gunicorn starts new ones: they meet the broken file
            os.kill(pid, signal.SIGKILL)
        server.wait_for_log("this worker cannot serve", 2)
        assert server.process.poll() is None  # the master did not halt
        assert requests.get(server.url("/health"), timeout=60).status_code == 200
        not_ready = assert_error(
            requests.get(server.url("/ready"), timeout=60), 503, "SERVICE_UNAVAILABLE"
        )
        assert "users.json" in not_ready["message"]
        assert str(data_dir) not in not_ready["message"]  # no server paths
        # Nothing is served from a partial copy: the key is neither let in nor called invalid.
        assert_error(_predict(server, key), 503, "SERVICE_UNAVAILABLE")

        users.write_bytes(good)  # the operator repairs the file: each worker takes it up
        assert [_predict(server, key).status_code for _ in range(4)] == [200] * 4
        assert requests.get(server.url("/ready"), timeout=60).status_code == 200


@pytest.mark.slow
def test_requests_gunicorn_refuses_answer_in_the_error_shape(tmp_path):
    with live_server(tmp_path / "data") as server:
        huge = requests.get(server.url("/health"), headers={"X-Big": "x" * 9000}, timeout=60)
        error = assert_error(huge, 431, "HEADERS_TOO_LARGE")
        assert error["details"] == {"refused_by": "gunicorn"}
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(b"GET /health HTTP/1.1 extra\r\nHost: x\r\n\r\n")
            raw = b"".join(iter(lambda: sock.recv(65536), b""))
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ")
        assert b"Content-Type: application/json" in head
        assert json.loads(body)["error"]["code"] == "VALIDATION_ERROR"


@pytest.mark.slow
def test_a_disable_before_the_users_file_broke_holds_in_a_real_two_worker_server(tmp_path):
    data_dir = tmp_path / "data"
    with live_server(data_dir, workers=2) as server:
        admin = server.admin_credentials()["jwt"]
        body = {"username": "june", "password": PASSWORD, "email": "june@example.org"}
        june = requests.post(server.url("/auth/register"), json=body, headers=admin, timeout=60)
        login = requests.post(server.url("/auth/login"), json=body, timeout=60).json()
        made = requests.post(
            server.url("/auth/api-keys"),
            json={"name": "svc"},
            headers={"Authorization": f"Bearer {login['access_token']}"},
            timeout=60,
        )
        key = {"X-API-Key": made.json()["key"]}
        assert [_predict(server, key).status_code for _ in range(6)] == [200] * 6
        user = server.url(f"/admin/users/{june.json()['user_id']}")
        assert requests.patch(user, json={"is_active": False}, headers=admin).status_code == 200
        compacted(data_dir, "users").write_text("{broken by hand")
        answers = [_predict(server, key) for _ in range(8)]
        assert [a.status_code for a in answers] == [401] * 8, [a.text for a in answers]


@pytest.mark.slow
def test_a_key_made_before_its_journal_was_deleted_works_in_a_real_two_worker_server(tmp_path):
    data_dir = tmp_path / "data"
    with live_server(data_dir, workers=2) as server:
        admin = server.admin_credentials()["jwt"]
        keys = server.url("/auth/api-keys")
        key = {"X-API-Key": requests.post(keys, json={"name": "k"}, headers=admin).json()["key"]}
        (data_dir / "api_keys.journal.jsonl").unlink()
        assert [_predict(server, key).status_code for _ in range(8)] == [200] * 8
        refused = requests.post(keys, json={"name": "k2"}, headers=admin, timeout=60)
        assert_error(refused, 503, "STORAGE_BUSY")


def test_a_worker_that_met_its_storage_unreachable_tries_again_on_its_own(tmp_path):
    """Redis down when a worker starts is no file an operator repairs: the worker tries again
    every few seconds and serves once it can, without a restart."""
    from flask import Flask
    from werkzeug.test import Client

    from auth import StorageUnavailable
    from inference_server import standby

    now = [100.0]
    builds = []

    def build():
        builds.append(now[0])
        if len(builds) == 1:
            raise StorageUnavailable("the storage (Redis at redis://h:6379/0) cannot be reached")
        app = Flask("served")
        app.get("/x")(lambda: "served")
        return app

    worker = standby.start(build, tmp_path, clock=lambda: now[0])
    assert isinstance(worker, standby.Standby)
    client = Client(worker)
    refused = client.get("/x")
    assert refused.status_code == 503 and "tried again shortly" in refused.get_data(as_text=True)
    assert len(builds) == 1  # not yet due, and no file changed
    now[0] += standby.RETRY_SECONDS
    assert client.get("/x").get_data(as_text=True) == "served"
    assert len(builds) == 2
