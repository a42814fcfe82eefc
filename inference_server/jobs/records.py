"""Job records: who owns each job, where it stands and what it has done.

The queue (Huey) carries only a job's id; the record, in the server's storage beside the users
and keys (`jobs.json` with the JSON backend), is what the API reads and what every check of
ownership uses. A record's states, as the batch resources clients know name them:

    queued -> in_progress -> completed | failed
    queued | in_progress -> cancelling -> cancelled   (a queued job goes straight to cancelled)

`completed` and `failed` count the inputs answered and refused so far, and `result_bytes` how
much of the result file they fill: a job resumed after a crash truncates the file there and
goes on from the next input, so no input is answered twice.
"""

from __future__ import annotations

import time
from typing import Any

from auth import Field, Index, Storage, Store, one_of

STATUSES = ("queued", "in_progress", "cancelling", "completed", "failed", "cancelled")
FINISHED = frozenset({"completed", "failed", "cancelled"})
ACTIVE = frozenset({"queued", "in_progress", "cancelling"})

JOB_SHAPE = {
    "user_id": Field((str,)),
    "key_id": Field((str, None)),
    "model": Field((str,)),
    "status": Field((str,), check=one_of(STATUSES)),
    "total": Field((int,)),
    "completed": Field((int,)),
    "failed": Field((int,)),
    "samples": Field((int,)),
    "created_at": Field((int,)),
    "started_at": Field((int, None)),
    "finished_at": Field((int, None)),
    "project": Field((str, None)),
    "metadata": Field((dict, None)),
    "error": Field((str, None)),
    "result_bytes": Field((int,)),
    "attempts": Field((int,)),
    "runner": Field((str, None), required=False),  # host:pid of the consumer running it
}
JOB_INDEXES = {"user": Index(lambda job: (job["user_id"],), unique=False)}


def jobs_store(storage: Storage) -> Store:
    """The store of the job records (opened with the others, by `auth.open_state`)."""
    return storage.store("jobs", collection="jobs", shape=JOB_SHAPE, indexes=JOB_INDEXES)


def new_record(
    *,
    user_id: str,
    key_id: str | None,
    model: str,
    total: int,
    samples: int,
    project: str | None,
    metadata: dict[str, Any] | None,
    now: int,
) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "key_id": key_id,
        "model": model,
        "status": "queued",
        "total": total,
        "completed": 0,
        "failed": 0,
        "samples": samples,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "project": project,
        "metadata": metadata,
        "error": None,
        "result_bytes": 0,
        "attempts": 0,
        "runner": None,
    }


def public(job_id: str, job: dict[str, Any]) -> dict[str, Any]:
    """A job as the API shows it."""

    def when(value: int | None) -> str | None:
        return None if value is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))

    return {
        "id": job_id,
        "object": "job",
        "status": job["status"],
        "model": job["model"],
        "user_id": job["user_id"],
        "project": job["project"],
        "metadata": job["metadata"],
        "request_counts": {
            "total": job["total"],
            "completed": job["completed"],
            "failed": job["failed"],
        },
        "samples": job["samples"],
        "error": job["error"],
        "created_at": when(job["created_at"]),
        "started_at": when(job["started_at"]),
        "finished_at": when(job["finished_at"]),
    }
