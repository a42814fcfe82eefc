"""Jobs a worker process runs on a timer, beside its requests.

Under gevent (the server's workers) a job is a greenlet that sleeps between runs; whatever blocks
(a store write, an fsync) it hands to a real thread itself (`offload.ThreadOffload`), so the
event loop never waits on it. Elsewhere a job is a daemon thread.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

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
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        import gevent

        gevent.spawn(body, gevent.sleep)
    else:
        threading.Thread(target=body, args=(time.sleep,), daemon=True, name=name).start()
