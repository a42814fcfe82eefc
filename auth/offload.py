"""Work that must not hold a gevent worker's event loop runs on a real thread.

Under gevent (the server's workers) every request of a worker shares one event loop: a bcrypt
hash or a large prediction computed there stalls every other request of that worker, `/health`
included. `ThreadOffload.run` hands such work to a bounded pool of real threads and parks only
the calling greenlet; bcrypt, NumPy, ONNX Runtime and torch release the GIL while they compute,
and Python code on the thread yields the GIL every few milliseconds, so the loop keeps serving.
Outside gevent (tests, a threaded server) there is no loop to protect and the work runs inline.

Work that raises comes back as its exception, raised again in the calling greenlet. gevent's pool
would carry it back too, but only after its hub has printed it with a traceback to standard
error: a client's mistake (a too deeply nested body, say) must not write a traceback to the
server log, and a fault of the server is logged where it is handled, as for work run inline.

A pool belongs to one process: it is made on first use after any fork.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def idle_priority() -> None:
    """Move the calling thread to the idle scheduling class (Linux, where a thread id names
    just that thread): any ordinary runnable task preempts it at once. An `on_thread` for
    pools whose work may wait while requests are served (password hashes, job submissions)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))


class ThreadOffload:
    """`threads` real threads per process; `on_thread` runs on a pool thread before each call
    (never inline)."""

    def __init__(self, threads: int, *, on_thread: Callable[[], None] | None = None) -> None:
        self.threads = threads
        self._on_thread = on_thread
        self._pools: dict[int, Any] = {}

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on a pool thread (waiting for a free one), or inline."""
        pool = self._pool()
        if pool is None:
            return fn(*args, **kwargs)
        result, error = pool.apply(self._call, (fn, args, kwargs))
        if error is not None:
            try:
                raise error
            finally:
                del error  # its traceback holds this frame: no cycle keeping `args` alive
        return result

    def _call(
        self, fn: Callable[..., T], args: tuple, kwargs: dict[str, Any]
    ) -> tuple[T | None, Exception | None]:
        try:
            if self._on_thread is not None:
                self._on_thread()
            return fn(*args, **kwargs), None
        except Exception as exc:
            return None, exc

    def _pool(self) -> Any:
        if not under_gevent():
            return None
        pool = self._pools.get(os.getpid())
        if pool is None:
            from gevent.threadpool import ThreadPool

            pool = self._pools[os.getpid()] = ThreadPool(self.threads)
        return pool


def under_gevent() -> bool:
    """Whether this process runs under gevent (its `threading` patched: the server's workers)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def let_others_run(most_seconds: float) -> None:
    """Under gevent, wait until every other greenlet of this process that can run has run up to
    its next wait (the event loop is idle), for at most `most_seconds`; elsewhere return."""
    if under_gevent():
        import gevent

        with gevent.Timeout(most_seconds, False):
            gevent.idle()
