"""The stores under real processes: no lost update, every process sees every acknowledged write,
compactions included, and a writer killed at any point leaves a committed state."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
from pathlib import Path

from auth.storage.indexes import Index
from auth.storage.json import JsonStore
from inference_server.app import create_app
from inference_server.settings import load_settings
from tests.conftest import PASSWORD, base_overrides, on_disk

PROCESSES = 4
CTX = multiprocessing.get_context("spawn")
OWNER = {"owner": Index(lambda r: (r["owner"],) if "owner" in r else (), unique=False)}


def _register_and_make_keys(data_dir: str, worker: int, start) -> None:
    app = create_app(load_settings(overrides=base_overrides(data_dir), environ={}))
    client = app.test_client()
    start.wait()
    token = client.post("/auth/login", json={"username": "admin", "password": "admin123"})
    admin = {"Authorization": "Bearer " + token.get_json()["access_token"]}
    for i in range(25):
        name = f"w{worker}_user{i}"
        body = {"username": name, "password": PASSWORD, "email": f"{name}@example.org"}
        assert client.post("/auth/register", json=body, headers=admin).status_code == 201
        key = client.post("/auth/api-keys", json={"name": name}, headers=admin)
        assert key.status_code == 201


def _run_all(target, args_of) -> None:
    workers = [CTX.Process(target=target, args=args_of(w)) for w in range(PROCESSES)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=300)
        assert p.exitcode == 0


def test_four_processes_lose_no_registration_or_key(tmp_path):
    data_dir = tmp_path / "data"
    start = CTX.Event()
    start.set()
    _run_all(_register_and_make_keys, lambda w: (str(data_dir), w, start))
    users, keys = on_disk(data_dir, "users"), on_disk(data_dir, "api_keys")
    names = {u["username"] for u in users.values()}
    expected = {f"w{w}_user{i}" for w in range(PROCESSES) for i in range(25)}
    assert expected <= names and len(users) == PROCESSES * 25 + 1  # plus the default admin
    assert len(keys) == PROCESSES * 25
    assert {k["name"] for k in keys.values()} == expected
    assert len({k["hash"] for k in keys.values()}) == len(keys)
    assert all(uid == u["id"] for uid, u in users.items())


def _expected_of(worker: int) -> dict[str, dict]:
    """What worker `worker`'s 50 mixed writes leave behind (see `_step`)."""
    records: dict[str, dict] = {}
    for i in range(50):
        _step(records, worker, i)
    return records


def _step(items, worker: int, i: int) -> None:
    """Write i of worker `worker`: three puts, then a change and a delete of the first put."""
    if i % 5 in (0, 1, 2):
        items[f"w{worker}-{i}"] = {"owner": f"w{worker}", "value": i, "pad": "x" * 300}
    elif i % 5 == 3:
        items[f"w{worker}-{i - 3}"]["value"] += 1000
    else:
        del items[f"w{worker}-{i - 3}"]


def _count(items) -> None:
    items["counter"] = {"n": items.get("counter", {"n": 0})["n"] + 1}


def _mixed_writes(path: str, worker: int, done, views) -> None:
    # A tiny compaction floor: compactions by every process interleave with everyone's writes.
    store = JsonStore(Path(path), collection="things", indexes=OWNER, compact_floor=2_000)
    store.open()
    for i in range(50):
        store.update(lambda items, i=i: _step(items, worker, i))
        store.update(_count)  # one counter for all: a lost update would show in its total
    done.wait()  # every process has finished writing: its view must now hold everything
    owners = {f"w{w}": sorted(store.ids("owner", f"w{w}")) for w in range(PROCESSES)}
    views.put((worker, dict(store.records()), owners))


def test_four_processes_of_mixed_writes_and_compactions_agree(tmp_path):
    path = tmp_path / "things.json"
    done, views = CTX.Barrier(PROCESSES), CTX.Queue()
    workers = [
        CTX.Process(target=_mixed_writes, args=(str(path), w, done, views))
        for w in range(PROCESSES)
    ]
    for p in workers:
        p.start()
    reported = [views.get(timeout=300) for _ in workers]
    for p in workers:
        p.join(timeout=60)
        assert p.exitcode == 0
    expected = {"counter": {"n": PROCESSES * 50}}
    for w in range(PROCESSES):
        expected |= _expected_of(w)
    assert json.loads(path.read_text())["generation"] >= 2  # compactions happened meanwhile
    for _worker, view, owners in reported:
        assert view == expected
        for w in range(PROCESSES):
            assert owners[f"w{w}"] == sorted(_expected_of(w))
    assert dict(JsonStore(path, collection="things").records()) == expected


def _write_until_killed(path: str, first: int, committed, reached, kill_after: int) -> None:
    # Compacting after nearly every write: a kill lands in an append or in a compaction.
    store = JsonStore(Path(path), collection="items", compact_floor=1)
    i = first
    while True:
        store.update(lambda items, i=i: items.put(str(i), {"n": i, "pad": "x" * 4096}))
        committed.value = i + 1
        i += 1
        if i == first + kill_after:
            reached.set()


def test_writers_killed_at_random_points_leave_a_committed_state(tmp_path):
    path = tmp_path / "items.json"
    rng = random.Random(20261123)
    acknowledged = 0
    for _round in range(8):
        committed, reached = CTX.Value("i", acknowledged), CTX.Event()
        writer = CTX.Process(
            target=_write_until_killed,
            args=(str(path), acknowledged, committed, reached, rng.randint(3, 25)),
        )
        writer.start()
        try:
            assert reached.wait(timeout=120)
            os.kill(writer.pid, signal.SIGKILL)
            writer.join()
        finally:
            if writer.is_alive():
                writer.kill()
        acknowledged = committed.value
        store = JsonStore(path, collection="items")
        store.open()
        items = dict(store.records())
        # Exactly the first n items, for an n the writer had committed (or was committing).
        n = len(items)
        assert set(items) == {str(i) for i in range(n)}
        assert all(items[str(i)]["n"] == i for i in range(n))
        assert acknowledged <= n <= acknowledged + 1
        acknowledged = n
    store.update(lambda items: items.put("after", {}))  # the lock was not left held
    assert len(JsonStore(path, collection="items").records()) == acknowledged + 1
