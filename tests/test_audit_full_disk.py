"""The audit log on a full disk: every line whole or absent, never a torn one glued to the next.

A fault run on a filled tmpfs once left `{"actor": "cli:root", "event": "api_key.created",{...`
in audit.log: an append the disk cut short, then the next event written after it. These tests
fill a real small file system while a user causes audit events, then free space.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from pathlib import Path

from auth.accounts import audit_identity
from auth.audit import AuditLog, read_events
from auth.storage.audit_file import AuditFile
from tests import test_faults
from tests.conftest import Actor

small_disk = test_faults.small_disk  # a real 4 MB tmpfs, skipped where it cannot be mounted


def _lines(path) -> list[dict]:
    text = path.read_bytes().decode("utf-8")
    assert text == "" or text.endswith("\n"), "audit.log ends in a torn line"
    return [json.loads(line) for line in text.splitlines()]


def _failed_login(actor: Actor, name: str) -> None:
    """An audit event and nothing else written: no account is called `name`."""
    answer = actor.client.post("/auth/login", json={"username": name, "password": "wrong"})
    assert answer.status_code == 401


def test_a_full_disk_during_audit_appends_leaves_only_whole_lines(small_disk, make_app, caplog):
    disk, _ = small_disk
    data_dir, _, actor = test_faults.served_on(small_disk, make_app)
    admin = actor.admin_headers()
    actor.create_key(admin, name="before")
    audit = data_dir / "audit.log"
    test_faults._fill(disk)  # to the page: a file's last page keeps what it had free

    # Keys while the journal's last page has room, and failed logins (audit lines alone) until
    # the audit log's last page is spent too: an append cut short, then refused ones.
    caplog.set_level(logging.ERROR, logger="auth.audit")
    refused = 0
    for i in range(2000):
        size = audit.stat().st_size
        actor.client.post("/auth/api-keys", json={"name": f"full{i}"}, headers=admin)
        _failed_login(actor, f"nobody{i}")
        refused = refused + 1 if audit.stat().st_size == size else 0
        if refused == 3:
            break
    else:
        raise AssertionError("the full disk never refused an audit line")
    assert "could not write audit.log (No space left on device)" in caplog.text
    assert all(isinstance(e, dict) for e in _lines(audit))  # whole lines only, even now

    (disk / "filler").unlink()  # the operator makes room
    actor.create_key(admin, name="after")
    _failed_login(actor, "nobody-after")
    events = _lines(audit)  # every line parses
    created = [e["name"] for e in events if e["event"] == "api_key.created"]
    assert created[0] == "before" and created[-1] == "after"
    failed = {"event": "auth.login", "outcome": "failed", **audit_identity(None, "nobody-after")}
    assert failed.items() <= events[-1].items()


def test_a_torn_tail_left_by_a_dead_writer_is_cut_before_the_next_line(tmp_path, caplog):
    path = tmp_path / "audit.log"
    log = AuditLog(AuditFile(path))
    log.record("first")
    with open(path, "ab") as fh:  # a writer that died mid-append
        fh.write(b'{"event": "api_key.created", "actor": "cli:ro')
    log.record("second")
    assert [e["event"] for e in _lines(path)] == ["first", "second"]
    assert "cut a torn line" in caplog.text


def test_a_short_write_is_taken_back(tmp_path, monkeypatch):
    path = tmp_path / "audit.log"
    log = AuditLog(AuditFile(path))
    log.record("first")
    real_write = os.write

    def short(fd, data):  # what a file system with a few bytes left answers
        return real_write(fd, data[:7])

    monkeypatch.setattr(os, "write", short)
    log.record("cut")
    monkeypatch.setattr(os, "write", real_write)
    log.record("third")
    assert [e["event"] for e in _lines(path)] == ["first", "third"]
    assert [e["event"] for e in read_events(AuditFile(path), count=10)] == ["first", "third"]


def _append_many(path: str, worker: int, count: int) -> None:
    log = AuditLog(AuditFile(Path(path)))
    for n in range(count):
        log.record("test.event", worker=worker, n=n)


def test_appenders_in_several_processes_write_whole_lines_around_one_cut(tmp_path):
    path = tmp_path / "audit.log"
    AuditLog(AuditFile(path)).record("first")
    with open(path, "ab") as fh:
        fh.write(b'{"event": "torn')  # every process finds this tail; one cuts it, under the lock
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_append_many, args=(str(path), w, 100)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    events = _lines(path)
    assert events[0]["event"] == "first"
    by_worker = [sorted(e["n"] for e in events if e.get("worker") == w) for w in range(4)]
    assert by_worker == [list(range(100))] * 4 and len(events) == 401
