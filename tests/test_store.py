"""The JSON store: atomic writes, the stat-validated cache, corrupt files, locks, permissions."""

from __future__ import annotations

import json
import os

import pytest

from auth.errors import StorageBusy
from auth.store import JsonStore, StoreCorrupt
from inference_server import create_app
from inference_server.settings import load_settings
from tests.conftest import assert_error, base_overrides


@pytest.fixture
def store(tmp_path):
    s = JsonStore(
        tmp_path / "data" / "things.json",
        collection="things",
        lock_timeout=0.2,
        index=lambda items: sorted(items),
    )
    s.open()
    return s


def _add(key, value=1):
    def change(items):
        items[key] = {"value": value}
        return key

    return change


def test_write_then_read(store):
    assert store.update(_add("a")) == "a"
    document = json.loads(store.path.read_text())
    assert document == {"schema_version": 1, "things": {"a": {"value": 1}}}
    assert store.read().items == {"a": {"value": 1}}
    assert store.read().index == ["a"]


def test_permissions(store):
    store.update(_add("a"))
    assert store.path.parent.stat().st_mode & 0o777 == 0o700
    assert store.path.stat().st_mode & 0o777 == 0o600
    assert store.lock_path.stat().st_mode & 0o777 == 0o600
    assert store.lock_path != store.path


def test_cache_is_reused_until_the_file_changes(store, tmp_path, monkeypatch):
    store.update(_add("a"))
    first = store.read()
    opened = []
    real_open = open

    def spy(path, *args, **kw):
        opened.append(path)
        return real_open(path, *args, **kw)

    monkeypatch.setattr("builtins.open", spy)
    assert store.read() is first
    assert store.read() is first
    assert opened == []  # no disk read when nothing changed: a stat only
    other = JsonStore(store.path, collection="things")
    other.update(_add("b"))  # another process's write
    opened.clear()
    assert store.read().items.keys() == {"a", "b"}
    assert opened == [store.path]


def test_mtime_strictly_increases_even_for_same_size_writes(store):
    stamps = set()
    for i in range(20):
        store.update(_add("a", i % 2))
        stamps.add(store.read().stamp)
    assert len(stamps) == 20


def test_a_failed_change_writes_nothing(store):
    store.update(_add("a"))
    before = store.path.read_bytes()

    def boom(items):
        items["b"] = {"value": 2}
        raise ValueError("no")

    with pytest.raises(ValueError):
        store.update(boom)
    assert store.path.read_bytes() == before
    assert store.read().items == {"a": {"value": 1}}
    assert [p.name for p in store.path.parent.iterdir() if p.suffix == ".tmp"] == []


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"schema_version": 99, "things": {}}',
        b'{"schema_version": 1}',
        b'{"schema_version": 1, "things": {"a": 5}}',
    ],
)
def test_corrupt_file_at_start_up_names_the_file_and_is_kept(tmp_path, content):
    path = tmp_path / "things.json"
    path.write_bytes(content)
    with pytest.raises(StoreCorrupt, match="things.json"):
        JsonStore(path, collection="things").open()
    assert path.read_bytes() == content


def test_corrupt_file_while_running_serves_last_good_and_refuses_writes(store):
    store.update(_add("a"))
    store.path.write_text("{broken by hand")
    assert store.read().items == {"a": {"value": 1}}
    with pytest.raises(StorageBusy):
        store.update(_add("b"))
    assert store.path.read_text() == "{broken by hand"
    store.path.write_text(json.dumps({"schema_version": 1, "things": {"z": {}}}))
    assert store.read().items == {"z": {}}
    store.update(_add("b"))


def test_lock_timeout_is_storage_busy(store):
    from filelock import FileLock

    holder = FileLock(str(store.lock_path))
    with holder:
        with pytest.raises(StorageBusy) as info:
            store.update(_add("a"))
    assert info.value.code == 503
    assert store.update(_add("a")) == "a"


def test_lock_timeout_over_http_is_503_storage_busy(make_app, data_dir):
    from filelock import FileLock

    app = make_app(storage={"lock_timeout_seconds": 0.05})
    client = app.test_client()
    token = client.post("/auth/login", json={"username": "admin", "password": "admin123"})
    headers = {"Authorization": "Bearer " + token.get_json()["access_token"]}
    with FileLock(str(data_dir / "api_keys.json.lock")):
        response = client.post("/auth/api-keys", json={"name": "x"}, headers=headers)
    assert_error(response, 503, "STORAGE_BUSY")


def test_corrupt_users_file_stops_the_app(data_dir):
    os.makedirs(data_dir)
    (data_dir / "users.json").write_text('{"schema_version": 1, "users": ')
    with pytest.raises(StoreCorrupt, match="users.json"):
        create_app(load_settings(overrides=base_overrides(data_dir), environ={}))
    assert (data_dir / "users.json").read_text() == '{"schema_version": 1, "users": '


def test_hand_broken_file_while_serving_answers_503_and_is_not_overwritten(app, actor, data_dir):
    headers = actor.user_headers("olga")
    path = data_dir / "api_keys.json"
    actor.create_key(headers)
    path.write_text("oops")
    assert actor.client.get("/auth/api-keys", headers=headers).status_code == 200
    response = actor.client.post("/auth/api-keys", json={"name": "again"}, headers=headers)
    assert_error(response, 503, "STORAGE_BUSY")
    assert path.read_text() == "oops"
