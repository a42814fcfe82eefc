"""The stores under real processes: no lost update, no torn file, even when a writer is killed."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

from auth.store import JsonStore
from inference_server import create_app
from inference_server.settings import load_settings
from tests.conftest import PASSWORD, base_overrides

PROCESSES, EACH = 4, 25
CTX = multiprocessing.get_context("spawn")


def _register_and_make_keys(data_dir: str, worker: int, start) -> None:
    app = create_app(load_settings(overrides=base_overrides(data_dir), environ={}))
    client = app.test_client()
    start.wait()
    token = client.post("/auth/login", json={"username": "admin", "password": "admin123"})
    admin = {"Authorization": "Bearer " + token.get_json()["access_token"]}
    for i in range(EACH):
        name = f"w{worker}_user{i}"
        body = {"username": name, "password": PASSWORD, "email": f"{name}@example.org"}
        assert client.post("/auth/register", json=body, headers=admin).status_code == 201
        key = client.post("/auth/api-keys", json={"name": name}, headers=admin)
        assert key.status_code == 201


def test_four_processes_lose_no_registration_or_key(tmp_path):
    data_dir = tmp_path / "data"
    start = CTX.Event()
    workers = [
        CTX.Process(target=_register_and_make_keys, args=(str(data_dir), w, start))
        for w in range(PROCESSES)
    ]
    for p in workers:
        p.start()
    start.set()
    for p in workers:
        p.join(timeout=300)
        assert p.exitcode == 0
    users = json.loads((data_dir / "users.json").read_text())["users"]
    keys = json.loads((data_dir / "api_keys.json").read_text())["keys"]
    names = {u["username"] for u in users.values()}
    expected = {f"w{w}_user{i}" for w in range(PROCESSES) for i in range(EACH)}
    assert expected <= names and len(users) == PROCESSES * EACH + 1  # plus the default admin
    assert len(keys) == PROCESSES * EACH
    assert {k["name"] for k in keys.values()} == expected
    assert len({k["hash"] for k in keys.values()}) == len(keys)
    assert all(uid == u["id"] for uid, u in users.items())


def _write_forever(path: str, committed, well_under_way) -> None:
    store = JsonStore(Path(path), collection="items")
    i = 0
    while True:
        store.update(lambda items, i=i: items.__setitem__(str(i), {"n": i, "pad": "x" * 512}))
        committed.value = i + 1
        i += 1
        if i == 50:
            well_under_way.set()


def test_writer_killed_mid_loop_leaves_a_committed_version(tmp_path):
    path = tmp_path / "items.json"
    committed, well_under_way = CTX.Value("i", 0), CTX.Event()
    writer = CTX.Process(target=_write_forever, args=(str(path), committed, well_under_way))
    writer.start()
    try:
        assert well_under_way.wait(timeout=120)
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
    finally:
        if writer.is_alive():
            writer.kill()
    acknowledged = committed.value
    items = json.loads(path.read_text())["items"]
    # Exactly the first n items, for an n the writer had committed (or was committing).
    n = len(items)
    assert set(items) == {str(i) for i in range(n)}
    assert acknowledged <= n <= acknowledged + 1
    store = JsonStore(path, collection="items")
    assert store.open().items == items
    store.update(lambda items: items.__setitem__("after", {}))  # the lock was not left held
