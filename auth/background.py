"""Jobs a worker process runs on a timer, beside its requests.

Under gevent (the server's workers) a job is a greenlet that sleeps between runs; whatever blocks
(a store write, an fsync) it hands to a real thread itself (`offload.ThreadOffload`), so the
event loop never waits on it. Elsewhere a job is a daemon thread.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .offload import under_gevent

log = logging.getLogger(__name__)


def run_every(seconds: float, job: Callable[[], Any], *, name: str) -> None:
    """Call `job` every `seconds` for the life of this process; a failing run is logged and
    the next one still happens."""

    def loop(sleep: Callable[[float], Any]) -> None:
        while True:
            sleep(seconds)
            _run_logged(job, name)

    _start(loop, name)


def run_soon(job: Callable[[], Any], *, name: str) -> None:
    """Call `job` once, soon, beside whatever the caller goes on with."""
    _start(lambda sleep: _run_logged(job, name), name)


def _run_logged(job: Callable[[], Any], name: str) -> None:
    try:
        job()
    except Exception as exc:  # a background job must never take its loop or caller down
        log.error("background job %s failed: %s", name, type(exc).__name__)


def _start(body: Callable[[Callable[[float], Any]], None], name: str) -> None:
    if under_gevent():
        import gevent

        gevent.spawn(body, gevent.sleep)
    else:
        threading.Thread(target=body, args=(time.sleep,), daemon=True, name=name).start()


class Batched:
    """Bookkeeping a process keeps in memory and writes in batches (key use, the usage ledger):
    what is noted goes into `_pending` under `_lock`, and `flush` writes it every
    `flush_seconds` in the background and once more at exit. A write that fails keeps what it
    held for the next one. A subclass says how to write what is pending (`_write`) and how to
    put it back beside what came meanwhile (`_keep`), and names its job (`JOB`)."""

    JOB = "batched"

    def __init__(self, flush_seconds: float) -> None:
        self.flush_seconds = flush_seconds
        self._pending: dict[Any, Any] = {}
        self._lock = threading.Lock()
        self._flusher_pid: int | None = None

    def _write(self, pending: dict[Any, Any]) -> bool:
        """Write `pending`; False when it could not be written."""
        raise NotImplementedError

    def _keep(self, pending: dict[Any, Any]) -> None:
        """Put `pending`, which could not be written, back into `_pending` (under `_lock`)."""
        raise NotImplementedError

    def flush(self) -> int:
        """Write what is pending now; returns how many entries were written (0 when the write
        failed: what was pending is kept for the next flush)."""
        return self._flush(self._write)

    def _flush(self, write: Callable[[dict[Any, Any]], bool]) -> int:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        written = False
        try:
            written = write(pending)
        finally:  # refused, or raised: kept for the next flush either way
            if not written:
                with self._lock:
                    self._keep(pending)
        return len(pending) if written else 0

    def start(self, run: Callable[..., Any]) -> None:
        """Flush every `flush_seconds` in the background of this process (the write made by
        `run(write)`: on a real thread when the storage blocks), and at its exit."""
        if self._flusher_pid == os.getpid():
            return
        self._flusher_pid = os.getpid()
        atexit.register(self.flush)

        # What is pending is taken and kept on the event loop; only the write may go to a thread.
        def write(pending: dict[Any, Any]) -> bool:
            return run(functools.partial(self._write, pending))

        run_every(self.flush_seconds, lambda: self._flush(write), name=self.JOB)
