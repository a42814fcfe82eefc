"""One suite for every storage backend: the JSON files and a real redis-server on 127.0.0.1.

Two `Storage` objects on the same data stand for two processes (or hosts): each keeps its own
copy. Real processes are in `test_multi_host.py` and `test_concurrency.py`; what only one
backend does (journals, compaction; Redis's log and epoch) is in `test_store.py` and below.
"""

from __future__ import annotations

import multiprocessing
import shutil
import threading
import uuid

import pytest
import redis as redis_client

from auth.audit import AuditLog
from auth.errors import StorageBusy, StorageUnavailable
from auth.storage import UNCHANGED, StoreCorrupt, open_storage
from auth.storage import redis as redis_backend
from auth.storage.audit_file import AuditFile
from auth.storage.indexes import Index
from auth.storage.json import JsonStore
from auth.storage.shapes import Field
from tests.live import RedisProcess

SHAPE = {"name": Field((str,)), "n": Field((int,)), "team": Field((str,), required=False)}
INDEXES = {
    "name": Index(lambda r: (r["name"],)),
    "team": Index(lambda r: (r["team"],) if "team" in r else (), unique=False),
}
has_redis = shutil.which("redis-server") is not None


@pytest.fixture(params=["json", "redis"])
def backend(request, tmp_path):
    """A factory of storages on one data set (call it again for another process's view)."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    yield from _factory(request.param, tmp_path, url)


@pytest.fixture
def redis_backend_only(tmp_path, redis_url):
    yield from _factory("redis", tmp_path, redis_url)


@pytest.fixture
def json_backend_only(tmp_path):
    yield from _factory("json", tmp_path, None)


def _factory(name, tmp_path, url):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    made = []

    def make(**options):
        storage = open_storage(
            backend=name,
            data_dir=tmp_path / "data",
            lock_timeout=0.5,
            redis_url=url,
            redis_prefix=prefix,
            **options,
        )
        made.append(storage)
        store = storage.store("things", collection="things", shape=SHAPE, indexes=INDEXES)
        store.open()
        return storage, store

    make.name = name
    make.url = url
    make.prefix = prefix
    yield make
    for storage in made:
        storage.close()


def _put(record_id, name, n=1, **extra):
    def change(items):
        items[record_id] = {"name": name, "n": n, **extra}
        return record_id

    return change


def test_a_write_is_read_back_by_every_process(backend):
    _, writer = backend()
    _, reader = backend()
    assert reader.get("a") is None
    assert writer.update(_put("a", "alice")) == "a"
    assert reader.get("a") == {"name": "alice", "n": 1}
    assert reader.find("name", "alice")["n"] == 1
    assert len(reader) == 1 and dict(reader.records()) == {"a": {"name": "alice", "n": 1}}


def test_reads_are_fresh_copies(backend):
    _, store = backend()
    store.update(_put("a", "alice"))
    store.get("a")["n"] = 99
    assert store.get("a")["n"] == 1


def test_a_change_that_fails_or_finds_nothing_writes_nothing(backend):
    _, store = backend()
    store.update(_put("a", "alice"))
    version = store.version()

    def failing(items):
        items["b"] = {"name": "bob", "n": 2}
        raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError):
        store.update(failing)

    def nothing(items):
        items["a"]["n"] = 5
        return UNCHANGED

    assert store.update(nothing) is UNCHANGED
    assert store.version() == version
    assert dict(store.records()) == {"a": {"name": "alice", "n": 1}}


def test_a_change_may_modify_read_and_delete(backend):
    _, store = backend()
    store.update(_put("a", "alice"))
    store.update(_put("b", "bob", team="red"))

    def change(items):
        items["a"]["n"] += 1
        del items["b"]
        assert "b" not in items and len(items) == 1

    store.update(change)
    _, other = backend()
    assert dict(other.records()) == {"a": {"name": "alice", "n": 2}}
    assert other.ids("team", "red") == []


def test_indexes_follow_changes_made_elsewhere(backend):
    _, writer = backend()
    _, reader = backend()
    reader.warm()  # tables built: from now on kept up by each change applied
    writer.update(_put("a", "alice", team="red"))
    writer.update(_put("b", "bob", team="red"))
    assert sorted(reader.ids("team", "red")) == ["a", "b"]

    def rename(items):
        items["a"]["name"] = "alicia"
        items["a"]["team"] = "blue"

    writer.update(rename)
    assert reader.find("name", "alice") is None
    assert reader.find("name", "alicia")["team"] == "blue"
    assert reader.ids("team", "red") == ["b"] and reader.ids("team", "blue") == ["a"]


def test_a_record_that_does_not_fit_is_never_written(backend):
    _, store = backend()
    with pytest.raises(ValueError, match="'n'"):
        store.update(_put("a", "alice", n="many"))
    with pytest.raises(ValueError, match="colour"):
        store.put_unread({"a": {"name": "alice", "n": 1, "colour": "red"}})
    assert len(store) == 0


def test_put_unread_writes_without_reading_and_the_last_write_wins(backend):
    _, first = backend()
    _, second = backend()
    first.put_unread({"a": {"name": "alice", "n": 1}})
    second.put_unread({"a": {"name": "alice", "n": 2}, "b": {"name": "bob", "n": 3}})
    assert first.get("a") == {"name": "alice", "n": 2} and first.find("name", "bob")["n"] == 3


def test_the_version_moves_with_every_change(backend):
    _, store = backend()
    _, other = backend()
    before = store.version()
    other.update(_put("a", "alice"))
    assert store.version() != before
    assert store.version() == other.version()


def test_a_reader_never_sees_a_writes_version_before_its_records(json_backend_only, monkeypatch):
    """A thread reading while this process writes: at the version the write ends at, the
    records are the written ones (a principal kept beside a version must not outlive it)."""
    _, store = json_backend_only()
    store.update(_put("a", "alice", n=1))
    assert store.get("a")["n"] == 1  # read once since: the next read needs no look at the files
    seen = []
    reader = threading.Thread(target=lambda: seen.append((store.version(), store.get("a"))))
    commit = JsonStore._commit

    def commit_while_another_thread_reads(self, state, puts, deletes):
        reader.start()
        reader.join(2)  # it reads without the store's mutex, as a request thread does
        commit(self, state, puts, deletes)

    monkeypatch.setattr(JsonStore, "_commit", commit_while_another_thread_reads)
    store.update(_put("a", "alice", n=2))
    monkeypatch.undo()
    reader.join()
    version, record = seen[0]
    assert version != store.version() or record["n"] == 2


def test_a_version_never_comes_back_for_other_records(redis_backend_only):
    """Redis restored from a backup goes back to an earlier version; the next write brings
    the number back with other records, and a version seen before must not match them."""
    _, writer = redis_backend_only()
    _, reader = redis_backend_only()
    writer.update(_put("a", "alice"))
    with redis_client.Redis.from_url(redis_backend_only.url) as raw:
        keys = raw.keys(f"*{redis_backend_only.prefix}*")
        backup = {key: raw.dump(key) for key in keys}
        writer.update(_put("b", "bob"))
        assert reader.get("b") is not None
        seen = reader.version()
        raw.delete(*raw.keys(f"*{redis_backend_only.prefix}*"))
        for key, dumped in backup.items():
            raw.restore(key, 0, dumped)
    assert reader.get("b") is None  # went back: reloaded
    writer.update(_put("c", "carol"))  # the version number of `seen` again
    assert reader.get("c") is not None
    assert reader.version() != seen


def test_unique_names_hold_across_processes(backend):
    """Each process checks the name in its change: the second one sees the first's record."""
    _, first = backend()
    _, second = backend()

    def add(store, record_id):
        def change(items):
            if items.find("name", "alice") is not None:
                return "taken"
            items[record_id] = {"name": "alice", "n": 1}
            return "made"

        return store.update(change)

    second.get("x")  # both copies loaded before either writes
    assert add(first, "a") == "made"
    assert add(second, "b") == "taken"
    assert [i for i, _ in first.records()] == ["a"]


def _count_up(spec):
    backend_name, data_dir, url, prefix, times = spec
    storage = open_storage(
        backend=backend_name, data_dir=data_dir, redis_url=url, redis_prefix=prefix
    )
    store = storage.store("things", collection="things", shape=SHAPE, indexes=INDEXES)
    store.open()

    def bump(items):
        items["counter"]["n"] += 1

    for _ in range(times):
        store.update(bump)
    storage.close()


def test_concurrent_writers_in_real_processes_lose_no_change(backend, tmp_path):
    _, store = backend()
    store.update(_put("counter", "counter", n=0))
    spec = (backend.name, tmp_path / "data", backend.url, backend.prefix, 25)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_count_up, [spec] * 4)
    assert store.get("counter")["n"] == 100


# -- Redis only ------------------------------------------------------------------------------


def test_a_record_that_does_not_fit_in_redis_is_named_at_start(redis_backend_only):
    storage, store = redis_backend_only()
    store.update(_put("a", "alice"))
    with redis_client.Redis.from_url(redis_backend_only.url) as raw:
        raw.hset(store.keys[0], "b", b'{"name": "bob", "n": "two"}')
    with pytest.raises(StoreCorrupt) as refused:
        redis_backend_only()
    assert "record 'b'" in str(refused.value) and "'n'" in str(refused.value)
    assert store.keys[0] in str(refused.value)


def test_a_copy_far_behind_loads_whole(redis_backend_only, monkeypatch):
    _, writer = redis_backend_only()
    _, reader = redis_backend_only()
    reader.warm()
    monkeypatch.setattr(redis_backend, "MOST_CHANGES", 2)
    for i in range(5):
        writer.update(_put(f"k{i}", f"name{i}", team="red"))
    assert len(reader) == 5 and sorted(reader.ids("team", "red")) == [f"k{i}" for i in range(5)]


def test_an_emptied_redis_is_noticed_even_at_the_same_version(redis_backend_only):
    _, writer = redis_backend_only()
    _, reader = redis_backend_only()
    writer.update(_put("a", "alice"))
    assert reader.get("a") is not None
    with redis_client.Redis.from_url(redis_backend_only.url) as raw:
        raw.flushdb()
    _, other = redis_backend_only()
    other.update(_put("b", "bob"))  # version 1 again, in a new epoch
    assert reader.get("a") is None and reader.get("b") == {"name": "bob", "n": 1}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_audit_events_are_kept_whole_and_read_back_in_order(backend, tmp_path):
    storage, _ = backend()
    log = AuditLog(storage.audit)
    for n in range(3):
        log.record("thing.done", actor=f"cli:{n}", user_id="usr_1" if n != 1 else "usr_2")
    events = log.read(count=10, user=["usr_1"])
    assert [e["actor"] for e in events] == ["cli:0", "cli:2"]
    assert [e["actor"] for e in log.read(count=1)] == ["cli:2"]
    out = tmp_path / "copy"
    out.mkdir()
    assert storage.audit.copy_to(out) == ["audit.log"]
    assert [e["actor"] for e in AuditFile(out / "audit.log").entries()] == [
        "cli:0",
        "cli:1",
        "cli:2",
    ]


def test_redis_down_reads_stale_for_a_while_writes_503_then_recovery(tmp_path):
    if not has_redis:
        pytest.skip("redis-server not installed")
    server = RedisProcess(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    server.start()
    try:
        clock = Clock()
        storage = redis_backend.RedisStorage(server.url, prefix="down", stale_seconds=30)
        storage.clock = clock
        store = storage.store("things", collection="things", shape=SHAPE, indexes=INDEXES)
        store.open()
        store.update(_put("a", "alice"))
        storage.sync()
        server.stop()
        clock.now += 10
        storage.sync()  # within the window: the copy serves
        assert store.get("a") == {"name": "alice", "n": 1}
        storage.end_request()
        with pytest.raises(StorageUnavailable) as refused:
            store.update(_put("b", "bob"))
        assert "redis://127.0.0.1" in refused.value.description and refused.value.code == 503
        clock.now += 25
        with pytest.raises(StorageUnavailable):
            storage.sync()
        server.start()  # the same port, its data kept by the append-only file
        clock.now += 1  # while down, Redis is tried at most once a second
        storage.sync()
        storage.end_request()
        store.update(_put("b", "bob"))
        assert sorted(i for i, _ in store.records()) == ["a", "b"]
        storage.close()
    finally:
        server.stop()


def test_a_start_with_redis_unreachable_fails_with_one_clear_line():
    from tests.live import free_port

    storage = open_storage(
        backend="redis", data_dir=None, redis_url=f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    )
    with pytest.raises(StorageUnavailable) as refused:
        storage.store("things", collection="things", shape=SHAPE).open()
    storage.close()
    message = refused.value.description
    assert "cannot be reached" in message and "hunter2" not in message
    assert "\n" not in message


def test_too_many_lost_races_answer_busy(redis_backend_only, monkeypatch):
    _, store = redis_backend_only()
    _, other = redis_backend_only()
    monkeypatch.setattr(redis_backend, "COMMIT_ATTEMPTS", 3)
    runs = []

    def change(items):
        runs.append(1)
        other.put_unread({f"x{len(runs)}": {"name": f"x{len(runs)}", "n": 1}})  # always first
        items["a"] = {"name": "alice", "n": 1}

    with pytest.raises(StorageBusy):
        store.update(change)
    assert len(runs) == 3 and store.get("a") is None


# -- moving between backends ---------------------------------------------------------------


def _records(storage) -> dict[str, dict]:
    return {store.name: dict(store.records()) for store in storage.stores()}


def test_migrate_json_to_redis_and_back_keeps_every_record(tmp_path, redis_url):
    from click.testing import CliRunner

    from inference_server.app import open_auth_state
    from inference_server.cli import cli
    from inference_server.settings import load_settings

    runner = CliRunner()
    prefix = f"m{uuid.uuid4().hex[:8]}"
    base = {
        "INFERENCE_STORAGE__DATA_DIR": str(tmp_path / "data"),
        "INFERENCE_AUTH__BCRYPT_ROUNDS": "4",
        "INFERENCE_STORAGE__REDIS_URL": redis_url,
        "INFERENCE_STORAGE__REDIS_PREFIX": prefix,
    }
    on_redis = {**base, "INFERENCE_STORAGE__BACKEND": "redis"}

    def invoke(env, *args):
        result = runner.invoke(cli, list(args), env=env)
        return result.exit_code, result.output

    code, _ = invoke(
        base,
        "create-admin",
        "--username",
        "root",
        "--email",
        "r@x.io",
        "--password",
        "a-long-password-1",
        "--with-key",
        "svc",
    )
    assert code == 0
    settings = load_settings(
        environ={}, overrides={"storage": {"data_dir": str(tmp_path / "data")}}
    )
    state = open_auth_state(settings)
    before, secret = _records(state.storage), state.storage.kept_secret()
    state.storage.close()
    assert before["users"] and before["api_keys"]

    code, output = invoke(base, "storage", "migrate", "--to", "redis")
    assert code == 0, output
    assert "users: 1 records copied and checked" in output
    code, output = invoke(base, "storage", "migrate", "--to", "redis")
    assert code == 1 and "pass --force" in output  # a non-empty target is never overwritten
    code, output = invoke(on_redis, "users", "list")
    assert code == 0 and "root" in output

    back = tmp_path / "back"
    code, output = invoke(on_redis, "storage", "migrate", "--to", "json", "--data-dir", str(back))
    assert code == 0, output
    settings = load_settings(environ={}, overrides={"storage": {"data_dir": str(back)}})
    state = open_auth_state(settings)
    assert _records(state.storage) == before and state.storage.kept_secret() == secret
    events = [e["event"] for e in state.storage.audit.entries()]
    assert "user.created" in events or "api_key.created" in events
    assert events == [e["event"] for e in AuditFile(tmp_path / "data" / "audit.log").entries()]
    state.storage.close()


def test_a_sync_trusts_the_copies_until_redis_says_the_data_moved(redis_backend_only, monkeypatch):
    clock = Clock()  # frozen: no recheck comes due, only Redis's message can move the copy
    reader_storage, reader = redis_backend_only()
    reader_storage.clock = clock
    _, writer = redis_backend_only()
    reader_storage.sync()
    reader_storage.sync()  # the subscription is up: nothing moved
    asked = []
    real_mget = reader_storage.client.mget
    monkeypatch.setattr(reader_storage.client, "mget", lambda *a: asked.append(a) or real_mget(*a))
    reader_storage.sync()
    assert asked == []  # no round trip while nothing changed
    writer.update(_put("a", "alice"))
    subscribed = reader_storage._invalidations._subscribed
    assert subscribed.can_read(timeout=5)  # Redis's word that the counter moved
    reader_storage.sync()
    assert len(asked) == 1 and reader.get("a") == {"name": "alice", "n": 1}
    reader_storage.end_request()


def test_a_bad_record_arriving_at_run_time_keeps_the_last_good_copy(
    redis_backend_only, monkeypatch
):
    storage, reader = redis_backend_only()
    _, writer = redis_backend_only()
    writer.update(_put("a", "alice"))
    assert reader.get("a") is not None
    with redis_client.Redis.from_url(redis_backend_only.url) as raw:
        raw.hset(reader.keys[0], "a", b'{"name": 7, "n": 1}')  # by hand, beside the server
    writer.update(_put("b", "bob"))  # the log names b only: a's bad value is not read
    monkeypatch.setattr(redis_backend, "MOST_CHANGES", 0)  # a whole load meets the bad record
    assert reader.get("a") == {"name": "alice", "n": 1}  # the last good copy serves
    assert "record 'a'" in reader.problem()
    with pytest.raises(StorageBusy):
        reader.update(_put("c", "carol"))


def test_a_sealed_store_loads_unchecked_and_a_hand_edit_is_checked(redis_backend_only, monkeypatch):
    _, writer = redis_backend_only()
    for n in range(3):
        writer.update(_put(f"k{n}", f"name{n}", n=n))
    writer.update(lambda items: items.pop("k1"))
    checked = []
    real = redis_backend.RedisStore._check
    monkeypatch.setattr(
        redis_backend.RedisStore, "_check", lambda self, *a: checked.append(a) or real(self, *a)
    )
    with redis_client.Redis.from_url(redis_backend_only.url) as raw:
        stored = raw.hgetall(writer.keys[0])
        assert raw.get(writer.seal_key) == redis_backend.seal_of(stored.items())
        redis_backend_only()  # sealed: loaded without checking a record
        assert checked == []
        raw.hset(writer.keys[0], "k2", b'{"name": "by hand", "n": 2}')  # the seal breaks
    _, edited = redis_backend_only()
    assert len(checked) == 2 and edited.get("k2")["name"] == "by hand"
