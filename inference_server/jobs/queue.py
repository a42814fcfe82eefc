"""The task queue that carries jobs: Huey, a well-kept queue with one API over several storages.

On one host it is embedded: `SqliteHuey` in `data/jobs/queue.db`, nothing else to start. The
server's workers put a job's id on it; a consumer (`python run.py` starts one beside the
server, `python run.py jobs worker` runs more) takes ids off it and runs the jobs
(`service.Jobs.run`). The queue holds nothing else: the job's record and its payloads are the
app's own (`records.py`, `payloads.py`), so what a client sees never depends on the queue's
internals.

Huey's messages are pickles; the queue file lives in the data dir (0700, files 0600), which
only the server's user can write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huey import Huey, SqliteHuey
from huey.consumer import Consumer

from auth import secure_dir

log = logging.getLogger(__name__)

QUEUE_NAME = "inference-jobs"


def open_queue(data_dir: Path) -> Huey:
    directory = secure_dir(secure_dir(data_dir) / "jobs")
    return SqliteHuey(QUEUE_NAME, filename=str(directory / "queue.db"), results=False, utc=True)


class _Consumer(Consumer):
    """Huey's consumer, telling the jobs when it is asked to stop (SIGINT, SIGTERM), so that a
    running job stops after its current chunk instead of holding the stop up."""

    def __init__(self, huey: Huey, on_stop: Callable[[], None], **options: Any) -> None:
        super().__init__(huey, **options)
        self._on_stop = on_stop

    def stop(self, graceful: bool = False) -> None:
        self._on_stop()
        super().stop(graceful=True)  # the jobs stop between chunks: let them get there


def run_consumer(huey: Huey, *, workers: int, on_stop: Callable[[], None]) -> None:
    """Run jobs until SIGTERM or SIGINT (threads; call from a process's main thread)."""
    consumer = _Consumer(huey, on_stop, workers=workers, worker_type="thread", periodic=True)
    log.info("the job consumer runs with %d thread(s)", workers)
    consumer.run()
