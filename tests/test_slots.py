"""Slots (`auth/slots.py`) under real processes: a process keeps its slot files open between
takes, so what decides between two requests of one process is its own record of what it holds,
and what decides between processes is the lock; neither may let a slot be held twice."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

from auth.slots import Slots

FORK = multiprocessing.get_context("fork")  # the fork rule needs a child that inherits the files


def _take_and_hold(lock_dir: str, took, release, name: str = "key-a") -> None:
    slot = Slots(lock_dir).take(name, 1)
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
    slots.take("key-a", 1).release()
    assert _open_files(tmp_path) == 1  # kept
    assert slots.take("key-a", 1) is not None and _open_files(tmp_path) == 1
    other = slots.take("key-b", 1)
    assert other is not None and _open_files(tmp_path) == 2
    assert slots.take("key-b", 1) is None
    other.release()
    assert _open_files(tmp_path) == 1  # closed: that let go of its lock
    assert slots.take("key-b", 1) is not None


def test_close_lets_go_of_the_kept_files_and_of_a_held_one_when_it_is_released(tmp_path):
    slots = Slots(tmp_path)
    slots.take("key-a", 1).release()
    held = slots.take("key-b", 1)
    slots.close()
    assert _open_files(tmp_path) == 1  # key-b's, still held
    assert _taken_in_a_child(tmp_path, "key-b") is False
    held.release()
    assert _open_files(tmp_path) == 0
    assert _taken_in_a_child(tmp_path, "key-b") is True


def test_a_forked_childs_copy_of_a_held_slot_never_lets_go_of_the_parents_lock(tmp_path):
    slots = Slots(tmp_path)
    held = slots.take("key-a", 1)
    child = FORK.Process(target=held.release)
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert _taken_in_a_child(tmp_path, "key-a") is False
    held.release()
    assert _taken_in_a_child(tmp_path, "key-a") is True


def _taken_in_a_child(lock_dir: Path, name: str) -> bool:
    """Whether another process, with slots of its own on `lock_dir`, could take slot `name`."""
    took, release = FORK.Queue(), FORK.Event()
    release.set()
    child = FORK.Process(target=_take_and_hold, args=(str(lock_dir), took, release, name))
    child.start()
    try:
        return took.get(timeout=60)
    finally:
        child.join(60)


def _open_files(directory: Path) -> int:
    """How many files under `directory` this process has open."""
    fds = Path("/proc/self/fd")
    targets = [os.path.realpath(fd) for fd in fds.iterdir()]
    return sum(t.startswith(os.path.realpath(directory) + os.sep) for t in targets)
