"""What the extension tells an application as it works: blinker signals, as Flask's own are.

An application counts or audits these without the extension knowing it (the inference server
feeds its Prometheus metrics from them). Each is sent from the one place that does the thing,
so no path misses it:

- `error_answered(app, code=..., status=...)`: the one error handler answered with this error
  code: a failed authentication (401, 403), a rate limit or quota (429), anything else.
- `store_written(store_name, seconds=...)`: one change was made durable by a storage backend
  (a journal line appended and fsynced, or a commit sent to Redis), taking `seconds`.

A receiver runs in the request (or the background job) that sent it: it must be quick, and
what it raises reaches the sender.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from blinker import Namespace

_signals = Namespace()

error_answered = _signals.signal("error-answered")
store_written = _signals.signal("store-written")


@contextmanager
def timed_write(store_name: str) -> Iterator[None]:
    """Send `store_written` for the write this block makes durable, if it does not raise."""
    started = time.perf_counter()
    yield
    if store_written.receivers:
        store_written.send(store_name, seconds=time.perf_counter() - started)
