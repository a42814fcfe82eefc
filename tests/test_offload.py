"""Work offloaded to a real thread under gevent: what it raises reaches the caller, and only it.

A real gevent-patched process (as the server's workers are), since the pool is used only there.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.live import REPO

PROGRAM = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    from auth.offload import ThreadOffload

    def refuse(value):
        raise ValueError(f"a client's mistake: {value}")

    offload = ThreadOffload(1)
    try:
        offload.run(refuse, 7)
    except ValueError as exc:
        print("caller got:", exc)
    print("then:", offload.run(lambda a, *, b: a + b, 1, b=2))
    """
)


def test_an_exception_on_the_thread_reaches_the_caller_and_nothing_is_printed():
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["caller got: a client's mistake: 7", "then: 3"]
    assert "Traceback" not in done.stderr and "ValueError" not in done.stderr, done.stderr
