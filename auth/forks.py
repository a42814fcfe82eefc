"""This process's id without a system call: kept, and taken again in a forked child.

What a forked worker may not share with its parent (the random half of request ids, the memory
limit storage's expiry job, the slots it holds, prometheus-client's metric files) is noticed by
comparing process ids on the request path. `os.getpid` is a system call, and on the request
path one cost several microseconds here (py-spy: up to 1.2% of a worker for each place that
asked on every request). `this_pid` reads a number that `os.register_at_fork` takes again in
every child, which is the only time it can change.
"""

from __future__ import annotations

import os

_pid = os.getpid()


def this_pid() -> int:
    """`os.getpid()`, as of this process's start or its fork."""
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)
