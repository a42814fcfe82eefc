"""The journal store: O(change) writes and reads, compaction, torn tails, corrupt files, locks.

Two `JsonStore` objects on one path stand for two processes: each keeps its own state, file
descriptors and lock (tests of real processes are in test_concurrency.py).
"""

from __future__ import annotations

import json
import os

import pytest
from filelock import FileLock

from auth.errors import StorageBusy
from auth.storage import UNCHANGED, StoreCorrupt
from auth.storage import json as store_module
from auth.storage.indexes import Index
from auth.storage.json import JsonStore
from auth.storage.shapes import Field, iso, one_of
from auth.users import USER_INDEXES, USER_SHAPE, add_user, fold_name, new_user
from inference_server.app import create_app
from inference_server.settings import load_settings
from tests.conftest import FrozenClock, assert_error, base_overrides

SHAPE = {"value": Field((int,)), "colour": Field((str,), required=False, check=one_of(["red"]))}
INDEXES = {
    "value": Index(lambda r: (str(r["value"]),)),
    "colour": Index(lambda r: (r["colour"],) if "colour" in r else (), unique=False),
}


def _store(path, **options) -> JsonStore:
    s = JsonStore(
        path, collection="things", lock_timeout=0.2, shape=SHAPE, indexes=INDEXES, **options
    )
    s.open()
    return s


@pytest.fixture
def path(tmp_path):
    return tmp_path / "data" / "things.json"


@pytest.fixture
def store(path):
    return _store(path)


def _add(key, value=1, **extra):
    def change(items):
        items[key] = {"value": value, **extra}
        return key

    return change


def _journal_lines(store) -> list[dict]:
    return [json.loads(line) for line in store.journal_path.read_text().splitlines()]


def test_a_write_appends_one_line_and_reads_back(store):
    empty = store.path.read_bytes()  # a new store starts with an empty snapshot of generation 1
    assert store.update(_add("a")) == "a"
    assert store.update(_add("b", 2)) == "b"
    assert store.path.read_bytes() == empty  # nothing rewritten: the journal holds the changes
    header, *changes = _journal_lines(store)
    assert header["generation"] == 1
    assert changes == [
        {"put": {"a": {"value": 1}}},
        {"put": {"b": {"value": 2}}},
    ]
    assert dict(store.records()) == {"a": {"value": 1}, "b": {"value": 2}}
    assert store.get("a") == {"value": 1} and store.get("zz") is None


def test_permissions(store):
    store.update(_add("a"))
    store.compact()
    assert store.path.parent.stat().st_mode & 0o777 == 0o700
    for file in (store.path, store.journal_path, store.lock_path):
        assert file.stat().st_mode & 0o777 == 0o600
    assert store.lock_path not in (store.path, store.journal_path)


def test_only_what_a_change_touched_is_written(store):
    store.update(_add("a"))
    store.update(_add("b"))

    def touch(items):
        items["a"]["value"] = 5  # modified in place: written
        assert items["b"]["value"] == 1  # only read: not written

    store.update(touch)
    assert _journal_lines(store)[-1] == {"put": {"a": {"value": 5}}}
    size = store.journal_path.stat().st_size
    store.update(lambda items: items["b"])  # a read-only change appends nothing
    assert store.update(lambda items: UNCHANGED) is UNCHANGED
    assert store.journal_path.stat().st_size == size


def test_a_failed_change_writes_nothing(store):
    store.update(_add("a"))
    size = store.journal_path.stat().st_size

    def boom(items):
        items["b"] = {"value": 2}
        items["a"]["value"] = 9
        raise ValueError("no")

    with pytest.raises(ValueError):
        store.update(boom)
    assert store.journal_path.stat().st_size == size
    assert dict(store.records()) == {"a": {"value": 1}}


def test_a_record_that_does_not_fit_is_never_written(store):
    empty = store.journal_path.read_bytes()
    with pytest.raises(ValueError, match="record 'a': field 'colour'"):
        store.update(_add("a", colour="blue"))
    assert dict(store.records()) == {}
    assert store.journal_path.read_bytes() == empty  # not a line of it was written


def test_a_new_store_starts_with_both_files_so_a_lost_journal_is_never_a_new_store(path):
    _store(path)
    assert path.exists() and _store(path).journal_path.exists()
    writer = _store(path)
    writer.update(_add("a"))
    writer.journal_path.unlink()
    writer.close()
    with pytest.raises(StoreCorrupt, match="things.journal.jsonl is missing"):
        _store(path)


def test_another_process_reads_only_the_new_lines(path, monkeypatch):
    writer, reader = _store(path), _store(path)
    for i in range(50):
        writer.update(_add(f"k{i}", i))
    assert len(reader) == 50
    read = []
    real_pread = os.pread
    monkeypatch.setattr(
        store_module.os, "pread", lambda fd, n, at: read.append(n) or real_pread(fd, n, at)
    )
    assert reader.get("k3") == {"value": 3}
    assert read == []  # nothing changed: not a byte read
    writer.update(_add("new", 99))
    assert reader.get("new") == {"value": 99}
    assert sum(read) == len(b'{"put":{"new":{"value":99}}}\n')


def _count_stats(monkeypatch) -> list[str]:
    stats: list[str] = []
    real_stat = os.stat
    monkeypatch.setattr(
        store_module.os, "stat", lambda p, *a, **k: stats.append(p) or real_stat(p, *a, **k)
    )
    return stats


def test_reads_follow_other_processes_by_the_change_counter_without_a_syscall(path, monkeypatch):
    writer, reader = _store(path), _store(path)
    writer.update(_add("a"))
    assert reader.get("a") == {"value": 1}
    stats = _count_stats(monkeypatch)
    for _ in range(100):
        assert reader.get("a") == {"value": 1} and reader.find("value", "1") == {"value": 1}
    assert stats == []  # the counter did not move: no look at the files
    writer.update(_add("b", 2))
    assert reader.get("b") == {"value": 2}  # the very next read, in the other "process"
    assert stats  # it moved: the journal was looked at


def test_a_change_made_by_hand_is_seen_within_the_recheck_interval(path):
    clock = FrozenClock()
    writer, reader = _store(path), _store(path, clock=clock)
    writer.update(_add("a"))
    assert reader.get("a") == {"value": 1}
    with open(reader.journal_path, "ab") as fh:  # no writer of ours: the counter stays put
        fh.write(b'{"put":{"b":{"value":2}}}\n')
    clock.advance(store_module.RECHECK_SECONDS)
    assert reader.get("b") == {"value": 2}


def test_a_replaced_counter_file_is_followed(path):
    clock = FrozenClock()
    reader = _store(path, clock=clock)
    assert reader.get("a") is None
    reader.changes.path.unlink()  # the operator cleans the data dir while the server runs
    _store(path).update(_add("a"))  # a process started since counts in a new file
    clock.advance(store_module.RECHECK_SECONDS)
    assert reader.get("a") == {"value": 1}
    _store(path).update(_add("b", 2))
    assert reader.get("b") == {"value": 2}  # the reader now maps the new file: at once


def test_without_a_counter_reads_follow_the_files_by_stat(path, caplog):
    path.parent.mkdir(parents=True)
    (path.parent / "things.json.changes").mkdir()  # cannot be mapped
    writer, reader = _store(path), _store(path)
    assert reader.get("a") is None
    writer.update(_add("a"))
    assert reader.get("a") == {"value": 1}
    assert sum("cannot open things.json.changes" in r.message for r in caplog.records) == 2


def test_indexes_follow_every_change_in_every_process(path):
    writer, reader = _store(path), _store(path)
    writer.update(_add("a", 1, colour="red"))
    writer.update(_add("b", 2, colour="red"))
    for s in (writer, reader):
        assert s.find("value", "1") == {"value": 1, "colour": "red"}
        assert sorted(s.ids("colour", "red")) == ["a", "b"]

    def move(items):
        items["a"]["value"] = 3
        del items["b"]
        assert items.ids("colour", "red") == ["a"]

    writer.update(move)
    for s in (writer, reader):
        assert s.find("value", "1") is None and s.find("value", "3")["value"] == 3
        assert s.find("value", "2") is None
        assert s.ids("colour", "red") == ["a"]


def test_compaction_folds_the_journal_into_a_sealed_snapshot(path):
    writer, follower = _store(path), _store(path)
    for i in range(5):
        writer.update(_add(f"k{i}", i))
    writer.update(lambda items: items.pop("k0"))
    assert len(follower) == 4
    writer.compact()
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith('{"schema_version":2,"generation":2,"seal":"')
    assert json.loads(path.read_text())["things"] == {f"k{i}": {"value": i} for i in range(1, 5)}
    assert _journal_lines(writer)[0]["generation"] == 2 and len(_journal_lines(writer)) == 1
    writer.update(_add("after", 7))
    # The follower goes on from its own state: it never re-reads the snapshot.
    opened = []
    real_open = open

    def spy(file, *args, **kw):
        opened.append(str(file))
        return real_open(file, *args, **kw)

    with pytest.MonkeyPatch.context() as m:
        m.setattr("builtins.open", spy)
        assert follower.get("after") == {"value": 7} and len(follower) == 5
    assert str(path) not in opened
    assert dict(_store(path).records()) == dict(writer.records())  # a fresh process agrees


def test_a_long_journal_is_compacted_by_the_writer_that_notices(path):
    writer = _store(path, compact_floor=200)
    for i in range(20):
        writer.update(_add(f"k{i}", i))
    assert json.loads(path.read_text())["generation"] > 1
    assert len(_journal_lines(writer)) < 10 and len(writer) == 20


def test_a_maintained_store_compacts_when_asked_not_on_the_write(path):
    writer = _store(path, compact_floor=200, maintained=True)
    for i in range(20):
        writer.update(_add(f"k{i}", i))
    assert json.loads(path.read_text())["generation"] == 1  # the writes only noted it was due
    writer.maintain()
    assert json.loads(path.read_text())["generation"] == 2
    assert len(_journal_lines(writer)) == 1 and len(writer) == 20
    writer.maintain()  # nothing due: nothing done
    assert json.loads(path.read_text())["generation"] == 2


def test_a_torn_last_line_is_ignored_then_cut_by_the_next_writer(path):
    writer = _store(path)
    writer.update(_add("a"))
    with open(writer.journal_path, "ab") as fh:
        fh.write(b'{"put":{"b":{"val')  # a writer killed mid-append
    reader = _store(path)
    assert dict(reader.records()) == {"a": {"value": 1}}
    other = _store(path)
    other.update(_add("c", 3))
    assert _journal_lines(other)[1:] == [{"put": {"a": {"value": 1}}}, {"put": {"c": {"value": 3}}}]
    assert dict(reader.records()) == {"a": {"value": 1}, "c": {"value": 3}}


def test_a_crash_between_snapshot_and_journal_replace_loses_nothing(path, monkeypatch):
    writer = _store(path)
    writer.update(_add("a"))
    writer.update(_add("b", 2))
    real_replace = os.replace

    def crash_on_journal(src, dst):
        if str(dst).endswith(".journal.jsonl"):
            raise OSError("killed")
        real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", crash_on_journal)
    with pytest.raises(OSError, match="killed"):
        writer.compact()
    monkeypatch.setattr(store_module.os, "replace", real_replace)
    # Snapshot of generation 2 beside the journal of generation 1 that it already holds.
    assert json.loads(path.read_text())["generation"] == 2
    assert _journal_lines(writer)[0]["generation"] == 1
    fresh = _store(path)
    assert dict(fresh.records()) == {"a": {"value": 1}, "b": {"value": 2}}
    fresh.update(_add("c", 3))  # the stale journal is replaced, not appended to
    assert _journal_lines(fresh) == [{"generation": 2}, {"put": {"c": {"value": 3}}}]
    assert len(_store(path)) == 3


def test_a_snapshot_replaced_by_an_older_copy_is_named(path):
    writer = _store(path)
    writer.update(_add("a"))
    writer.compact()
    older = path.read_bytes()
    writer.update(_add("b"))
    writer.compact()
    path.write_bytes(older.replace(b'"generation":2', b'"generation":1'))
    with pytest.raises(StoreCorrupt, match="older copy"):
        _store(path)


def test_files_of_the_earlier_single_document_format_load_unchanged(path):
    path.parent.mkdir(parents=True)
    original = json.dumps({"schema_version": 1, "things": {"a": {"value": 1}}})
    path.write_text(original)
    s = _store(path)
    assert dict(s.records()) == {"a": {"value": 1}}
    s.update(_add("b", 2))
    assert path.read_text() == original  # untouched until the first compaction
    s.compact()
    assert json.loads(path.read_text())["schema_version"] == 2
    assert len(_store(path)) == 2


def test_a_hand_edited_snapshot_is_checked_record_by_record(path):
    s = _store(path)
    s.update(_add("a"))
    s.compact()
    path.write_text(path.read_text().replace('{"value":1}', '{"value":"one"}'))
    with pytest.raises(StoreCorrupt, match=r"things.json: record 'a': field 'value'"):
        _store(path)


@pytest.mark.parametrize(
    ("snapshot", "journal", "message"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[]", None, "expected a JSON object"),
        (b'{"schema_version": 99, "things": {}}', None, "schema_version 99"),
        (b'{"schema_version": 1}', None, "'things' must map ids to objects"),
        (b'{"schema_version": 1, "things": {"a": 5}}', None, "record 'a' must be an object"),
        (None, b"not a header\n", "bad first line"),
        (None, b'{"generation":0}\n{"put": [1]}\n', "bad line at byte 17"),
        (None, b'{"generation":0}\n{"put":{"a":{"value":true}}}\n', "record 'a': field 'value'"),
    ],
)
def test_corrupt_files_at_start_up_are_named_and_kept(path, snapshot, journal, message):
    path.parent.mkdir(parents=True)
    files = {path: snapshot, path.with_name("things.journal.jsonl"): journal}
    for file, content in files.items():
        if content is not None:
            file.write_bytes(content)
    with pytest.raises(StoreCorrupt, match=message):
        _store(path)
    for file, content in files.items():
        assert (file.read_bytes() if file.exists() else None) == content


def test_corrupt_while_running_serves_last_good_and_refuses_writes(store):
    store.update(_add("a"))
    with open(store.journal_path, "ab") as fh:
        fh.write(b'{"put":{"b":{"value":"two"}}}\n')  # a record that does not fit
    assert dict(store.records()) == {"a": {"value": 1}}
    with pytest.raises(StorageBusy):
        store.update(_add("c"))
    assert store.journal_path.read_bytes().endswith(b'{"value":"two"}}}\n')  # kept as it is
    store.path.write_text(json.dumps({"schema_version": 1, "things": {"z": {"value": 0}}}))
    store.journal_path.unlink()  # the operator repairs by hand
    assert dict(store.records()) == {"z": {"value": 0}}
    store.update(_add("b"))
    assert dict(_store(store.path).records()) == {"z": {"value": 0}, "b": {"value": 1}}


def test_lock_timeout_is_storage_busy(store):
    with FileLock(str(store.lock_path)):
        with pytest.raises(StorageBusy) as info:
            store.update(_add("a"))
    assert info.value.code == 503
    assert store.update(_add("a")) == "a"


def test_lock_timeout_over_http_is_503_storage_busy(make_app, data_dir):
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


def test_ids_with_quotes_and_backslashes_survive_a_compaction(path):
    s = _store(path)
    odd = ['say "hi"', "back\\slash", 'colon":{x', "naïve ✓"]
    for i, record_id in enumerate(odd):
        s.update(_add(record_id, i))
    s.compact()
    assert path.read_text().startswith('{"schema_version":2,')  # sealed: loaded by splitting
    assert dict(_store(path).records()) == {rid: {"value": i} for i, rid in enumerate(odd)}


def _user(name: str, email: str, role: str = "user") -> dict:
    return new_user(username=name, email=email, password_hash="h", role=role, now_iso=iso(0))


def test_user_lookups_agree_before_and_after_the_indexes_are_built(tmp_path):
    def users() -> JsonStore:
        s = JsonStore(
            tmp_path / "users.json", collection="users", shape=USER_SHAPE, indexes=USER_INDEXES
        )
        s.open()
        return s

    writer = users()
    people = [_user("Alice", "Alice@Example.org", "admin"), _user("bob", "ｂｏｂ@example.org")]
    for person in people:
        writer.update(lambda items, p=person: add_user(items, p))
    scanned, built = users(), users()  # one looks up without the tables, one builds them all
    built.warm()
    for s in (scanned, built):
        assert s.find("name", fold_name("ALICE"))["id"] == people[0]["id"]
        assert s.find("name", fold_name("alice@example.ORG"))["id"] == people[0]["id"]
        assert s.find("name", fold_name("bob@example.org"))["id"] == people[1]["id"]
        assert s.find("name", "nobody") is None
        assert s.ids("active_admin", "yes") == [people[0]["id"]]
    writer.update(lambda items: items[people[0]["id"]].update(is_active=False))
    assert built.ids("active_admin", "yes") == [] == users().ids("active_admin", "yes")


def test_append_writes_without_loading_and_cuts_a_torn_tail(path):
    reader = _store(path)
    reader.update(_add("a"))
    reader.compact()
    with open(reader.journal_path, "ab") as fh:
        fh.write(b'{"put":{"x":{"val')  # a writer killed mid-append
    blind = JsonStore(path, collection="things", shape=SHAPE)
    blind.put_unread({"b": {"value": 2}, "a": {"value": 3}})
    assert blind._state is None  # nothing was loaded to write
    assert _journal_lines(reader)[1:] == [{"put": {"b": {"value": 2}, "a": {"value": 3}}}]
    assert dict(reader.records()) == {"a": {"value": 3}, "b": {"value": 2}}
    with pytest.raises(ValueError, match="field 'value'"):
        blind.put_unread({"c": {"value": "three"}})
    assert len(_store(path)) == 2
