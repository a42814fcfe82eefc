"""The journal store: O(change) writes and reads, compaction, torn tails, corrupt files, locks.

Two `JsonStore` objects on one path stand for two processes: each keeps its own state, file
descriptors and lock (tests of real processes are in test_concurrency.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
from filelock import FileLock

from auth.errors import StorageBusy
from auth.storage import UNCHANGED, StoreCorrupt
from auth.storage import json as store_module
from auth.storage.indexes import Index
from auth.storage.json import JsonStorage, JsonStore
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


def _changes(store) -> list[dict]:
    """The journal's change lines without what each record was before (`was`)."""
    return [{k: v for k, v in line.items() if k != "was"} for line in _journal_lines(store)[1:]]


def _digest(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, separators=(",", ":")).encode()).hexdigest()[:16]


def test_a_write_appends_one_line_and_reads_back(store):
    empty = store.path.read_bytes()  # a new store starts with an empty snapshot of generation 1
    assert store.update(_add("a")) == "a"
    assert store.update(_add("b", 2)) == "b"
    assert store.path.read_bytes() == empty  # nothing rewritten: the journal holds the changes
    header, *changes = _journal_lines(store)
    assert header["generation"] == 1
    assert changes == [  # each line notes what its records were before: here, nothing
        {"put": {"a": {"value": 1}}, "was": {"a": None}},
        {"put": {"b": {"value": 2}}, "was": {"b": None}},
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
    assert _journal_lines(store)[-1] == {
        "put": {"a": {"value": 5}},
        "was": {"a": _digest({"value": 1})},
    }
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
    assert sum(read) == len(b'{"put":{"new":{"value":99}},"was":{"new":null}}\n')


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
    assert _changes(other) == [{"put": {"a": {"value": 1}}}, {"put": {"c": {"value": 3}}}]
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
    assert _journal_lines(fresh)[0] == {"generation": 2}
    assert _changes(fresh) == [{"put": {"c": {"value": 3}}}]
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


def _v1(path, records: dict, *, collection: str = "things") -> bytes:
    """A store file as the previous version wrote it: one document, sorted, no journal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"schema_version": 1, collection: records}
    path.write_text(json.dumps(document, separators=(",", ":"), sort_keys=True))
    return path.read_bytes()


SEALED_HEAD = re.compile(r'^\{"schema_version":2,"generation":(\d+),"seal":"[0-9a-f]{32}",')


def _sealed_generation(path) -> int | None:
    head = SEALED_HEAD.match(path.read_text())
    return int(head.group(1)) if head else None


def test_a_file_of_the_earlier_format_is_sealed_at_its_first_open(path, caplog, monkeypatch):
    records = {f"k{i}": {"value": i} for i in range(5)}
    _v1(path, records)
    caplog.set_level("INFO", logger=store_module.__name__)
    parse_whole = store_module.snapshot_file._parse_document
    parsed = []
    monkeypatch.setattr(
        store_module.snapshot_file,
        "_parse_document",
        lambda raw, **kw: parsed.append(kw["path"]) or parse_whole(raw, **kw),
    )
    s = _store(path)
    assert parsed == [path]  # checked and converted in one read (seconds at 100,000 records)
    assert "converted things.json to the sealed format" in caplog.text
    assert _sealed_generation(path) == 1 and _journal_lines(s) == [_journal_lines(s)[0]]
    assert dict(s.records()) == records
    assert s._state is not None and s._state.kind == "sealed"
    assert not path.with_name("things.json.v1.bak").exists()  # removed once committed
    assert list(path.parent.glob(".*.tmp")) == []
    caplog.clear()
    again = _store(path)  # once: a later open finds it sealed and leaves it alone
    assert _sealed_generation(path) == 1 and "converted" not in caplog.text
    assert dict(again.records()) == records


def test_an_earlier_file_with_a_journal_of_this_version_is_folded_whole(path):
    _v1(path, {"a": {"value": 1}})
    path.with_name("things.journal.jsonl").write_bytes(
        b'{"generation":0}\n{"put":{"b":{"value":2}}}\n{"delete":["a"]}\n'
    )
    s = _store(path)
    assert _sealed_generation(path) == 1 and len(_journal_lines(s)) == 1
    assert dict(_store(path).records()) == {"b": {"value": 2}}


def _failing_replace(monkeypatch, target: str, *, after: str | None = None) -> None:
    """os.replace onto a name ending in `target` fails (once one onto `after` has been done)."""
    real_replace = os.replace
    done: list[str] = []

    def replace(src, dst):
        if os.fspath(dst).endswith(target) and (after is None or after in done):
            raise OSError("killed mid-conversion")
        real_replace(src, dst)
        done.append(os.path.basename(dst))

    monkeypatch.setattr(store_module.os, "replace", replace)


def test_a_conversion_that_fails_leaves_the_old_file_usable(path, monkeypatch, caplog):
    original = _v1(path, {"a": {"value": 1}, "b": {"value": 2}})
    backup = path.with_name("things.json.v1.bak")
    with monkeypatch.context() as m:
        _failing_replace(m, "/things.json")  # the new snapshot never takes the file's name
        s = _store(path)
    assert "could not convert things.json to the sealed format" in caplog.text
    assert path.read_bytes() == original == backup.read_bytes()
    assert dict(s.records()) == {"a": {"value": 1}, "b": {"value": 2}}  # read the slow way
    s.update(_add("c", 3))
    assert path.read_bytes() == original  # the write went to the journal
    converted = _store(path)  # the next start converts, the change included
    assert _sealed_generation(path) == 1 and not backup.exists()
    assert dict(converted.records()) == {"a": {"value": 1}, "b": {"value": 2}, "c": {"value": 3}}


def test_a_conversion_that_dies_after_its_commit_leaves_nothing_behind(path, monkeypatch):
    _v1(path, {"a": {"value": 1}})
    backup = path.with_name("things.json.v1.bak")
    with monkeypatch.context() as m:
        _failing_replace(m, ".journal.jsonl", after="things.json")  # between the two
        _store(path)
    assert _sealed_generation(path) == 1 and backup.exists()
    s = _store(path)  # the sealed snapshot already holds everything: the backup goes
    assert not backup.exists() and dict(s.records()) == {"a": {"value": 1}}


def test_a_hand_edited_snapshot_is_checked_record_by_record(path):
    s = _store(path)
    s.update(_add("a"))
    s.compact()
    path.write_text(path.read_text().replace('{"value":1}', '{"value":"one"}'))
    with pytest.raises(StoreCorrupt, match=r"things.json: record 'a': field 'value'"):
        _store(path)


def _hand_edit(path, change) -> bytes:
    """Edit the snapshot as an operator might: as a JSON document, written back indented."""
    document = json.loads(path.read_text())
    change(document["things"])
    path.write_text(json.dumps(document, indent=2))
    return path.read_bytes()


def _folded_then_changed(path) -> JsonStore:
    """A store whose snapshot holds a=1, b=2 and whose journal then set b=3 and made c=4."""
    s = _store(path)
    s.update(_add("a"))
    s.update(_add("b", 2))
    s.compact()
    s.update(_add("b", 3))
    s.update(_add("c", 4))
    return s


def test_a_hand_edit_of_a_record_the_journal_did_not_change_holds(path, caplog):
    _folded_then_changed(path)
    _hand_edit(path, lambda things: things["a"].update(value=10))
    caplog.set_level("INFO", logger=store_module.__name__)
    s = _store(path)
    assert dict(s.records()) == {"a": {"value": 10}, "b": {"value": 3}, "c": {"value": 4}}
    assert "things.json was edited by hand: folded and sealed again" in caplog.text
    assert _sealed_generation(path) == 3 and len(_journal_lines(s)) == 1  # fast path again


@pytest.mark.parametrize(
    ("edit", "record"),
    [
        (lambda things: things["b"].update(value=20), "b"),  # the journal changed b
        (lambda things: things.pop("b"), "b"),
        (lambda things: things.update(c={"value": 40}), "c"),  # the journal made c too
    ],
)
def test_a_hand_edit_of_a_record_the_journal_also_changed_refuses_naming_both(path, edit, record):
    journal = _folded_then_changed(path).journal_path
    edited, changes = _hand_edit(path, edit), journal.read_bytes()
    with pytest.raises(StoreCorrupt) as refused:
        _store(path)
    message = str(refused.value)
    assert f"{path}: record '{record}' was edited by hand" in message
    assert f"{journal} changed it too" in message
    assert path.read_bytes() == edited and journal.read_bytes() == changes  # both kept


def test_after_a_hand_edit_only_the_first_change_of_a_record_is_compared(path):
    s = _folded_then_changed(path)
    s.update(_add("b", 5))  # starts from b=3, not from the snapshot's b=2: not compared
    _hand_edit(path, lambda things: things.update(d={"value": 6}))
    assert dict(_store(path).records()) == {
        "a": {"value": 1},
        "b": {"value": 5},
        "c": {"value": 4},
        "d": {"value": 6},
    }


def test_journal_lines_without_digests_still_apply_over_a_hand_edit(path):
    s = _store(path)
    s.update(_add("a"))
    s.compact()
    with open(s.journal_path, "ab") as fh:  # as an earlier version, or key use, wrote it
        fh.write(b'{"put":{"a":{"value":2}}}\n')
    _hand_edit(path, lambda things: things.update(b={"value": 7}))
    assert dict(_store(path).records()) == {"a": {"value": 2}, "b": {"value": 7}}


def test_a_sealed_snapshot_is_never_compared_with_its_journal(path, monkeypatch):
    _folded_then_changed(path)
    hashed = []
    real_digest = store_module.journal_file.digest
    monkeypatch.setattr(
        store_module.journal_file, "digest", lambda raw: hashed.append(raw) or real_digest(raw)
    )
    assert dict(_store(path).records()) == {"a": {"value": 1}, "b": {"value": 3}, "c": {"value": 4}}
    assert hashed == []


def test_a_conflicting_hand_edit_under_a_running_process_keeps_the_last_good_copy(path):
    s = _folded_then_changed(path)
    _hand_edit(path, lambda things: things["b"].update(value=20))
    assert dict(s.records()) == {"a": {"value": 1}, "b": {"value": 3}, "c": {"value": 4}}
    with pytest.raises(StorageBusy):
        s.update(_add("d"))


def test_a_hand_edit_folded_by_another_process_reaches_a_running_one(path):
    running = _folded_then_changed(path)
    _hand_edit(path, lambda things: things["a"].update(value=10))
    _store(path)  # another process starts (the CLI): it folds the edit into a new snapshot
    # The new journal says which snapshot it was folded from: not the one `running` holds, so
    # it reads the new snapshot instead of going on from its own records.
    assert running.get("a") == {"value": 10}


def test_fold_compacts_only_a_journal_that_holds_a_change(path):
    s = _store(path)
    assert s.fold() is False and _sealed_generation(path) == 1
    s.update(_add("a"))
    assert s.fold() is True
    assert _sealed_generation(path) == 2 and len(_journal_lines(s)) == 1
    assert json.loads(path.read_text())["things"] == {"a": {"value": 1}}
    assert s.fold() is False


def test_shutdown_folds_each_changed_store_once_among_processes(tmp_path):
    def storage() -> JsonStorage:
        backend = JsonStorage(tmp_path / "data", lock_timeout=0.2)
        for name in ("one", "two"):
            backend.store(name, collection="things", shape=SHAPE).open()
        return backend

    first, second = storage(), storage()
    first.stores()[0].update(_add("a"))
    assert first.shutdown() == ["one.journal.jsonl into one.json"]
    assert second.shutdown() == []  # stopping beside it: nothing left to fold
    for each in first.stores():
        each.update(_add("b"))
    with FileLock(str(tmp_path / "data" / "one.json.lock")):
        with pytest.raises(StorageBusy) as busy:
            second.shutdown()
    assert busy.value.description.startswith("could not fold one.journal.jsonl (data file")
    assert busy.value.description.endswith("; folded two.journal.jsonl into two.json")
    assert second.shutdown() == ["one.journal.jsonl into one.json"]


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
    # Written without reading: the line cannot say what the records were.
    assert _journal_lines(reader)[1:] == [{"put": {"b": {"value": 2}, "a": {"value": 3}}}]
    assert dict(reader.records()) == {"a": {"value": 3}, "b": {"value": 2}}
    with pytest.raises(ValueError, match="field 'value'"):
        blind.put_unread({"c": {"value": "three"}})
    assert len(_store(path)) == 2
