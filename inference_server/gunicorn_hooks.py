"""Server hooks of gunicorn's master (`--config python:inference_server.gunicorn_hooks`).

gunicorn reads every module-level name here that is one of its settings, so this module defines
hooks and nothing else. It imports nothing of the app (see `inference_server/__init__.py`):

- `when_ready` / `on_exit`: with jobs on (`python run.py` sets `INFERENCE_JOB_CONSUMER`), the
  master starts the job consumer (`python -m inference_server jobs worker`) as a process of its
  own beside the workers, so that a long job never takes a worker's CPU from predictions, and
  runs it at nice 10 (a prediction's CPU comes first; a job takes what is left) and
  stops it when the server stops (SIGINT: it finishes the chunk it runs, then exits; a job it
  leaves unfinished resumes at the next start);
- `child_exit`: a worker ended; its metric files are folded at the next scrape
  (`metrics/directory.py`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from .metrics import directory

CONSUMER = "INFERENCE_JOB_CONSUMER"  # "1": start the job consumer beside the workers
_consumer: list[subprocess.Popen[bytes]] = []


def when_ready(server: Any) -> None:
    if os.environ.get(CONSUMER) == "1":
        command = [sys.executable, "-m", "inference_server", "jobs", "worker", "--nice", "10"]
        _consumer.append(subprocess.Popen(command))
        server.log.info("started the job consumer (pid %s)", _consumer[-1].pid)


def on_exit(server: Any) -> None:
    for process in _consumer:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def child_exit(server: Any, worker: Any) -> None:
    """A worker process ended, however it ended."""
    directory.worker_exited(worker.pid)
