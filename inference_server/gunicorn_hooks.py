"""Server hooks of gunicorn's master (`--config python:inference_server.gunicorn_hooks`).

gunicorn reads every module-level name here that is one of its settings, so this module defines
hooks and nothing else. It imports nothing of the app (see `inference_server/__init__.py`).
"""

from __future__ import annotations

from typing import Any

from .metrics import directory


def child_exit(server: Any, worker: Any) -> None:
    """A worker process ended, however it ended: its metric files are folded at the next
    scrape (`metrics.directory`)."""
    directory.worker_exited(worker.pid)
