"""What is done with jobs: submitting, reading, listing, cancelling, deleting, running.

Each user sees only their own jobs; another user's job is NOT_FOUND, as one that does not exist
(no oracle of which ids exist), and admins see everyone's. A submission is checked like a
prediction (the credential may call the model, the inputs within the job limits) and stored in
order, so that no failure leaves half a job: the inputs (a file), then the record, then the id
on the queue; a step that fails undoes the ones before it and answers 503.

A job runs in chunks of `jobs.chunk_inputs` inputs through the same code as /predict/batch
(`predict.predict_each`): its result is what the batch route answers for the same inputs, one
line per input. Between chunks the consumer writes the counts and reads the record again: a
cancel takes effect there, keeping what was done. Each chunk is counted in the usage ledger, as
predictions are, under the job's user and key. A job whose user is disabled or deleted is
cancelled when the consumer next looks at it: before it starts, and between chunks.

A job interrupted by a crash (its consumer killed) is found `in_progress` when a consumer
starts (`recover`), its consumer (host and process id, in the record) gone: it is put back on
the queue once and resumes after its last finished chunk; found interrupted a second time, it is
marked failed with that reason. A queued job whose id never reached the queue is put back too.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from flask import has_request_context
from huey import crontab

from auth import (
    UNCHANGED,
    ApiError,
    Code,
    NotFound,
    PayloadTooLarge,
    Storage,
    check_quota,
    current_principal,
)

from ..metrics import instruments
from ..models import ModelRegistry, ModelUnavailable
from ..predict import model_for
from ..settings import Settings
from .payloads import Checked, open_payloads
from .queue import RUNNER, close_queue, open_queue, runner_alive
from .records import ACTIVE, FINISHED, jobs_store, new_record

log = logging.getLogger(__name__)

USER_GONE = "its user was disabled or deleted"
RESULT_TOO_LARGE = "its result grew beyond jobs.max_result_mb; the part answered is kept"
MAX_METADATA_BYTES = 4096
TAKEN_OVER = "taken over"


class TooManyJobs(ApiError):
    code, error_code = 429, Code.RATE_LIMIT_EXCEEDED


class NotNow(ApiError):
    code, error_code = 409, Code.CONFLICT


class QueueUnavailable(ApiError):
    code, error_code = 503, Code.SERVICE_UNAVAILABLE


class Jobs:
    def __init__(
        self,
        settings: Settings,
        *,
        storage: Storage,
        auth_state: Any,
        registry: ModelRegistry | None = None,
        check_each: Callable[..., np.ndarray | list[Checked]] | None = None,
        answer_each: Callable[..., tuple[list[dict[str, Any]], float]] | None = None,
    ) -> None:
        """The jobs of the server configured by `settings`, their records in `storage`;
        without a `registry`, `check_each` and `answer_each` (`predict.py`: checking inputs
        when a job is submitted, answering them as it runs) it reads, cancels and deletes them
        but neither takes nor runs any."""
        self.settings = settings.jobs
        self.store = jobs_store(storage)
        self.payloads = open_payloads(settings)
        most = self.settings.max_result_mb * 1024 * 1024  # and what the payloads can hold
        self._result_limit = min(most, self.payloads.max_bytes or most)
        self.huey = open_queue(settings)
        self._registry = registry
        self._auth = auth_state
        self._check_each = check_each
        self._answer_each = answer_each
        self._clock = auth_state.clock
        self.stopping = threading.Event()  # the consumer stops: running jobs pause
        self._running: set[str] = set()  # the jobs this process runs now
        self._running_lock = threading.Lock()
        self._task = self.huey.task(name="run_job")(self.run)
        self.huey.periodic_task(crontab(minute="*/10"), name="sweep_jobs")(self.sweep)
        self.huey.periodic_task(crontab(), name="recover_jobs")(self.recover)

    # -- the API's side ------------------------------------------------------------------------

    def submit(
        self,
        principal: Any,
        *,
        model: str | None,
        inputs: list[Any],
        samples: int,
        project: str | None,
        metadata: dict[str, Any] | None,
        rows: bool = False,
    ) -> tuple[str, dict[str, Any]]:
        """Submit a job of `inputs` (`rows`: a list of samples, each one input)."""
        settings = self.settings
        if len(inputs) > settings.max_inputs or samples > settings.max_samples:
            raise PayloadTooLarge(
                f"a job takes at most {settings.max_inputs} inputs and {settings.max_samples} "
                f"samples; this one has {len(inputs)} and {samples}",
                details={"max_inputs": settings.max_inputs, "max_samples": settings.max_samples},
            )
        assert self._registry is not None and self._check_each is not None
        loaded = model_for(self._registry, model)  # 403, 404 or 503 as a prediction gets
        model_name = loaded.name
        check_quota(samples)  # a job that cannot fit today's quotas is refused now
        user_id = principal.id if principal is not None else "anonymous"
        active = [job for job in self._of(user_id) if job[1]["status"] in ACTIVE]
        if len(active) >= settings.max_queued_per_user:
            raise TooManyJobs(
                f"you have {len(active)} jobs queued or running, the most allowed; wait for one "
                "to finish or cancel one",
                headers={"Retry-After": "10"},
                details={"max_queued_per_user": settings.max_queued_per_user},
            )
        job_id = f"job_{secrets.token_hex(12)}"
        record = new_record(
            user_id=user_id,
            key_id=principal.key_id if principal is not None else None,
            model=model_name,
            total=len(inputs),
            samples=samples,
            project=project,
            metadata=metadata,
            now=int(self._clock()),
        )
        checked = self._check_each(loaded, inputs, job_id, rows=rows)
        self.payloads.put_inputs(job_id, checked)  # whole, or StorageUnavailable (503)
        try:
            self.store.update(lambda items: items.__setitem__(job_id, record))
        except Exception:
            self._forget_payloads(job_id)
            raise
        try:
            self._task(job_id)
        except Exception as exc:
            log.error("job %s could not be queued: %s", job_id, exc)
            self.store.update(lambda items: items.pop(job_id, None))
            self._forget_payloads(job_id)
            raise QueueUnavailable(
                "the job queue cannot take jobs now; try again", headers={"Retry-After": "5"}
            ) from None
        self._audit("job.submitted", job_id, record)
        return job_id, record

    def get(self, principal: Any, job_id: str) -> dict[str, Any]:
        """The job, if `principal` may see it; else 404 as for one that does not exist."""
        job = self.store.get(job_id)
        if job is None or not _may_see(principal, job):
            raise NotFound(f"no job {job_id!r}")
        return job

    def list(
        self,
        principal: Any,
        *,
        user: str | None,
        status: str | None,
        project: str | None,
    ) -> list[tuple[str, dict[str, Any]]]:
        """The jobs `principal` may see (an admin: everyone's, or `user`'s), newest first."""
        if principal is None or principal.acts_as_admin:
            found = self._of(user) if user else list(self.store.records())
        else:
            found = self._of(principal.id)
        chosen = [
            (job_id, job)
            for job_id, job in found
            if (status is None or job["status"] == status)
            and (project is None or job["project"] == project)
        ]
        return sorted(chosen, key=lambda item: (item[1]["created_at"], item[0]), reverse=True)

    def cancel(self, principal: Any, job_id: str) -> dict[str, Any]:
        """A queued job is cancelled at once, a running one between chunks (`cancelling`);
        a finished one is left as it is (409)."""
        self.get(principal, job_id)
        now = int(self._clock())

        def change(items: Any) -> dict[str, Any]:
            job = items[job_id]
            if job["status"] in FINISHED:
                raise NotNow(
                    f"job {job_id!r} is {job['status']} already", details={"status": job["status"]}
                )
            if job["status"] == "queued":
                job.update(status="cancelled", finished_at=now)
            elif job["status"] == "in_progress":
                job["status"] = "cancelling"
            return dict(job)

        job = self.store.update(change)  # a cancelled job's id left on the queue is skipped
        self._audit("job.cancelled", job_id, job)
        return job

    def delete(self, principal: Any, job_id: str) -> None:
        """Remove a finished job and its result (409 while it is queued or running)."""
        self.get(principal, job_id)

        def change(items: Any) -> dict[str, Any]:
            job = items[job_id]
            if job["status"] not in FINISHED:
                raise NotNow(
                    f"job {job_id!r} is {job['status']}: cancel it first",
                    details={"status": job["status"]},
                )
            return items.pop(job_id)

        job = self.store.update(change)
        self.payloads.delete(job_id)
        self._audit("job.deleted", job_id, job)

    def result_lines(self, job_id: str, job: dict[str, Any]) -> Iterator[bytes]:
        return self.payloads.result_lines(job_id, job["result_bytes"])

    # -- the consumer's side -------------------------------------------------------------------

    def run(self, job_id: str) -> None:
        """Run job `job_id` from where it stands (the queue's task)."""
        assert self._registry is not None and self._answer_each is not None
        job = self._start(job_id)
        if job is None:
            return
        try:
            self._run_started(job_id, job)
        finally:
            with self._running_lock:
                self._running.discard(job_id)

    def _run_started(self, job_id: str, job: dict[str, Any]) -> None:
        assert self._registry is not None and self._answer_each is not None
        try:
            model = self._registry.get(job["model"])
            inputs = self.payloads.inputs(job_id)
        except (ModelUnavailable, NotFound, OSError, ValueError) as exc:
            self._finish(job_id, "failed", error=getattr(exc, "description", None) or str(exc))
            return
        chunk = self.settings.chunk_inputs
        done = job["completed"] + job["failed"]
        if not self._user_active(job["user_id"]):
            self._finish(job_id, "cancelled", error=USER_GONE)
            return
        written = job["result_bytes"]
        try:
            for start in range(done, len(inputs), chunk):
                part = inputs.checked(start, min(start + chunk, len(inputs)))
                results, elapsed = self._answer_each(model, part)
                lines = [{"index": start + i, **result} for i, result in enumerate(results)]
                written = self.payloads.append_result(job_id, written, lines)
                if written > self._result_limit:
                    self._finish(job_id, "failed", error=RESULT_TOO_LARGE)
                    return
                failed = sum(1 for result in results if "error" in result)
                status = self._counted(job_id, len(part) - failed, failed, written)
                if status == TAKEN_OVER:
                    log.warning("job %s is run by another consumer now; this one stops", job_id)
                    return
                self._charge(job, part, results, elapsed)
                if status == "cancelling":
                    self._finish(job_id, "cancelled")
                    return
                if not self._user_active(job["user_id"]):
                    self._finish(job_id, "cancelled", error=USER_GONE)
                    return
                if self.stopping.is_set() and start + chunk < len(inputs):
                    self._pause(job_id)
                    return
        except Exception as exc:
            log.error("job %s failed: %s: %s", job_id, type(exc).__name__, exc)
            self._finish(job_id, "failed", error="the server failed while running this job")
            return
        self._finish(job_id, "completed")

    def recover(self) -> list[str]:
        """Put back on the queue what a crash interrupted (see the module docstring); the ids
        put back. A consumer calls this as it starts, and every minute (a consumer of another
        host may have died)."""
        queued = {task.args[0] for task in self.huey.pending() if task.args}
        again = []
        for job_id, job in list(self.store.records()):
            if job["status"] == "in_progress" and self._runs_elsewhere(job_id, job):
                continue
            if job["status"] == "in_progress" and job["attempts"] >= 2:
                self._finish(
                    job_id, "failed", error="interrupted twice by a crash; not retried", mine=False
                )
            elif job["status"] == "cancelling" and not self._runs_elsewhere(job_id, job):
                self._finish(job_id, "cancelled", mine=False)
            elif job["status"] in ("queued", "in_progress") and job_id not in queued:
                self._task(job_id)  # queued twice by a race: `_start` runs it once
                again.append(job_id)
        if again:
            log.warning("jobs put back on the queue after an interruption: %s", ", ".join(again))
        return again

    def sweep(self) -> list[str]:
        """Remove finished jobs older than `jobs.result_ttl_hours`, and their results."""
        horizon = self._clock() - self.settings.result_ttl_hours * 3600
        old = [
            job_id
            for job_id, job in self.store.records()
            if job["status"] in FINISHED and (job["finished_at"] or 0) < horizon
        ]
        if old:
            self.store.update(lambda items: [items.pop(job_id, None) for job_id in old])
        for job_id in old:
            self.payloads.delete(job_id)
        return old

    def close(self) -> None:
        """Let go of the queue's and the payloads' connections."""
        close_queue(self.huey)
        self.payloads.close()

    def drain(self) -> int:
        """Run every job on the queue in this process, as a consumer would (tests)."""
        ran = 0
        while self.huey.pending_count() and (task := self.huey.dequeue()) is not None:
            self.huey.execute(task)
            ran += 1
        return ran

    # -- steps ---------------------------------------------------------------------------------

    def _of(self, user_id: str) -> list[tuple[str, dict[str, Any]]]:
        found = ((job_id, self.store.get(job_id)) for job_id in self.store.ids("user", user_id))
        return [(job_id, job) for job_id, job in found if job is not None]

    def _forget_payloads(self, job_id: str) -> None:
        """Remove a job's payloads after a failed submission, without hiding why it failed."""
        try:
            self.payloads.delete(job_id)
        except Exception as exc:
            log.warning("the payloads of job %s could not be removed: %s", job_id, exc)

    def _runs_elsewhere(self, job_id: str, job: dict[str, Any]) -> bool:
        """Whether a live consumer runs the job now: this process, or the one its record names."""
        return job_id in self._running or runner_alive(self.huey, job.get("runner"), self._clock)

    def _start(self, job_id: str) -> dict[str, Any] | None:
        now = int(self._clock())

        def change(items: Any) -> Any:
            job = items.get(job_id)
            if job is None or job["status"] in FINISHED:
                return UNCHANGED
            if job["status"] == "in_progress" and self._runs_elsewhere(job_id, job):
                return UNCHANGED  # its id was queued twice: one run is enough
            if job["status"] == "cancelling":
                job.update(status="cancelled", finished_at=now)
                return None
            job.update(status="in_progress", attempts=job["attempts"] + 1, runner=RUNNER)
            if job["started_at"] is None:
                job["started_at"] = now
            return dict(job)

        with self._running_lock:
            job = self.store.update(change)
            if job is UNCHANGED or job is None:
                return None
            self._running.add(job_id)
            return job

    def _counted(self, job_id: str, completed: int, failed: int, written: int) -> str:
        """Count a chunk done; the job's status (TAKEN_OVER: no longer this consumer's)."""

        def change(items: Any) -> str:
            job = items.get(job_id)
            if job is None or job.get("runner") != RUNNER:
                return TAKEN_OVER  # another consumer took it over (this one was thought dead)
            job.update(
                completed=job["completed"] + completed,
                failed=job["failed"] + failed,
                result_bytes=written,
            )
            return job["status"]

        return self.store.update(change)

    def _user_active(self, user_id: str) -> bool:
        """Whether the job's user may still run it (the users as stored now, whoever changed
        them: the API, the command line, another host)."""
        storage = self._auth.storage
        storage.sync()
        try:
            user = self._auth.users.get(user_id)
        finally:
            storage.end_request()
        return user is not None and user["is_active"]

    def _pause(self, job_id: str) -> None:
        """Put a running job back in the queue's hands: its consumer is stopping (not a crash,
        so not counted as an attempt); the next consumer resumes it (`recover`)."""

        def change(items: Any) -> Any:
            job = items.get(job_id)
            if job is None or job["status"] != "in_progress" or job.get("runner") != RUNNER:
                return UNCHANGED
            job.update(status="queued", attempts=job["attempts"] - 1)
            return None

        self.store.update(change)
        self._auth.ledger.flush()
        log.info("job %s paused: its consumer stops", job_id)

    def _finish(
        self, job_id: str, status: str, *, error: str | None = None, mine: bool = True
    ) -> None:
        """End a job: one this consumer runs (`mine`), or one found without a live consumer
        (`recover`), each checked again as the store has it now."""
        now = int(self._clock())

        def change(items: Any) -> Any:
            job = items.get(job_id)
            if job is None or (mine and job.get("runner") != RUNNER):
                return UNCHANGED
            if not mine and (job["status"] not in ACTIVE or self._runs_elsewhere(job_id, job)):
                return UNCHANGED  # it moved since it was read: a consumer runs it now
            job.update(status=status, finished_at=now, error=error)
            return dict(job)

        job = self.store.update(change)
        self._auth.ledger.flush()
        if job is not UNCHANGED:
            log.info("job %s %s", job_id, status)
            if job["started_at"] is not None:
                instruments.JOB_SECONDS.labels(status).observe(now - job["started_at"])

    def _charge(
        self,
        job: dict[str, Any],
        part: list[Checked],
        results: list[dict[str, Any]],
        elapsed: float,
    ) -> None:
        """Count a chunk in the quotas and the usage ledger, as its predictions would be."""
        ledger, now = self._auth.ledger, self._clock()
        answered = [
            len(c) for c, result in zip(part, results, strict=True) if "error" not in result
        ]
        self._auth.count_job_predictions(
            job["user_id"], requests=len(answered), samples=sum(answered), now=now
        )
        for checked, result in zip(part, results, strict=True):
            ledger.add(
                job["user_id"],
                credential=job["key_id"] or "session",
                model=job["model"],
                status=400 if "error" in result else 200,
                samples=0 if "error" in result else len(checked),
                inference_ms=elapsed / max(1, len(part)),
                now=now,
            )

    def _audit(self, event: str, job_id: str, job: dict[str, Any]) -> None:
        principal = current_principal._get_current_object() if _in_request() else None
        self._auth.audit.record(
            event,
            job_id=job_id,
            user_id=job["user_id"],
            actor=principal.id if principal is not None else None,
            status=job["status"],
        )


def _may_see(principal: Any, job: dict[str, Any]) -> bool:
    if principal is None:
        return True  # authentication disabled: every route is open
    return job["user_id"] == principal.id or principal.acts_as_admin


def _in_request() -> bool:
    return has_request_context()
