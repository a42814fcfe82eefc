"""Slots (`auth/slots.py`) under real processes: a process keeps its slot files open between
takes, so what decides between two requests of one process is its own record of what it holds,
and what decides between processes is the lock; neither may let a slot be held twice."""

from __future__ import annotations

import multiprocessing
import os
import signal

from auth.slots import Slots

FORK = multiprocessing.get_context("fork")  # the fork rule needs a child that inherits the files


def _take_and_hold(lock_dir: str, took, release) -> None:
    slot = Slots(lock_dir).take("key-a", 1)
    took.put(slot is not None)
    if slot is not None:
        release.wait(60)
        slot.release()


def _take_in_child(slots: Slots, took, release) -> None:
    slot = slots.take("key-a", 1)
    took.put(slot is not None)
    release.wait(60)


def test_one_process_holds_a_slot_once_until_it_releases_it(tmp_path):
    slots = Slots(tmp_path)
    first = slots.take("key-a", 2)
    second = slots.take("key-a", 2)
    assert first is not None and second is not None
    assert slots.take("key-a", 2) is None  # both held by this process: its own record says so
    first.release()
    first.release()  # a second release changes nothing
    again = slots.take("key-a", 2)
    assert again is not None  # the kept file, locked again
    assert slots.take("key-a", 2) is None
    assert slots.take("key-b", 1) is not None  # another name, its own slots


def test_a_slot_released_by_one_process_is_free_for_another_while_the_file_stays_open(tmp_path):
    slots = Slots(tmp_path)
    held = slots.take("key-a", 1)
    assert held is not None
    took, release = FORK.Queue(), FORK.Event()
    child = FORK.Process(target=_take_and_hold, args=(str(tmp_path), took, release))
    child.start()
    assert took.get(timeout=60) is False  # held here
    release.set()
    child.join(60)
    held.release()  # unlocked; this process keeps the file open
    release.clear()
    child = FORK.Process(target=_take_and_hold, args=(str(tmp_path), took, release))
    child.start()
    assert took.get(timeout=60) is True
    assert slots.take("key-a", 1) is None  # now the child holds it
    release.set()
    child.join(60)
    assert slots.take("key-a", 1) is not None


def test_a_forked_child_never_shares_its_parents_slot_files(tmp_path):
    # A child inherits the open files of its parent, and a lock taken through a shared file is
    # held by both: the child must open its own.
    slots = Slots(tmp_path)
    slots.take("key-a", 1).release()  # the file stays open in this process, unlocked
    took, release = FORK.Queue(), FORK.Event()
    child = FORK.Process(target=_take_in_child, args=(slots, took, release))
    child.start()
    try:
        assert took.get(timeout=60) is True
        assert slots.take("key-a", 1) is None
    finally:
        release.set()
        child.join(60)


def test_the_slot_of_a_killed_process_is_free_at_once(tmp_path):
    took, release = FORK.Queue(), FORK.Event()
    child = FORK.Process(target=_take_and_hold, args=(str(tmp_path), took, release))
    child.start()
    assert took.get(timeout=60) is True
    slots = Slots(tmp_path)
    assert slots.take("key-a", 1) is None
    os.kill(child.pid, signal.SIGKILL)
    child.join(60)
    assert slots.take("key-a", 1) is not None


def test_beyond_the_files_it_keeps_open_a_process_opens_one_per_take(tmp_path, monkeypatch):
    monkeypatch.setattr("auth.slots.KEEP_OPEN", 1)
    slots = Slots(tmp_path)
    kept = slots.take("key-a", 1)
    kept.release()
    before = _open_files()
    assert slots.take("key-a", 1) is not None and _open_files() == before  # kept open
    other = slots.take("key-b", 1)
    assert other is not None and _open_files() == before + 1
    assert slots.take("key-b", 1) is None
    other.release()
    assert _open_files() == before  # closed: that let go of its lock
    assert slots.take("key-b", 1) is not None


def _open_files() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


def test_close_lets_go_of_the_kept_files_but_not_of_a_held_slot(tmp_path):
    slots = Slots(tmp_path)
    slots.take("key-a", 1).release()
    held = slots.take("key-b", 1)
    before = _open_files()
    slots.close()
    assert _open_files() == before - 1  # key-a's file; key-b's is held
    took, release = FORK.Queue(), FORK.Event()
    child = FORK.Process(target=_take_and_hold, args=(str(tmp_path), took, release))
    child.start()
    assert took.get(timeout=60) is True  # key-a: free
    release.set()
    child.join(60)
    assert slots.take("key-b", 1) is None
    held.release()
    assert slots.take("key-b", 1) is not None
