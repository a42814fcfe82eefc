"""`/jobs`: submit a job, list yours, read one, fetch its result, cancel it, delete it.

Jobs need the `predict` scope, like the predictions they make. Another user's job answers 404
as one that does not exist; admins (role and scope `admin`) see everyone's, `?user=` narrows.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any

import orjson
from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    jsonify,
    request,
    stream_with_context,
)
from prometheus_client.core import GaugeMetricFamily

from auth import (
    Storage,
    ThreadOffload,
    ValidationError,
    current_principal,
    doc,
    idle_priority,
    query_int,
    require_auth,
    text,
)

from .. import schemas
from ..predict import (
    answer_each,
    check_each,
    collector_paused,
    request_body,
    sample_count,
)
from .records import STATUSES, public
from .service import MAX_METADATA_BYTES, Jobs

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__, url_prefix="/jobs")
MAX_PAGE = 500
JSON_LINES = "application/x-ndjson"


def init_app(app: Flask, storage: Storage) -> None:
    """Serve /jobs from `app` (its models and auth set up already), if jobs are enabled."""
    settings = app.extensions["settings"]
    if not settings.jobs.enabled:
        return
    runner = app.extensions["inference"]
    # A submission's parsing and checking wait while predictions are served (idle priority).
    submissions = app.extensions["job_submissions"] = ThreadOffload(1, on_thread=idle_priority)
    service = app.extensions["jobs"] = Jobs(
        settings,
        storage=storage,
        auth_state=app.extensions["auth"],
        registry=app.extensions["models"],
        check_each=lambda model, inputs, rid, rows: submissions.run(
            collector_paused, functools.partial(check_each, rows=rows), model, inputs, rid
        ),
        answer_each=lambda model, checked: answer_each(runner, model, checked),
    )
    if "metrics" in app.extensions:
        app.extensions["metrics"].append(JobStates(service))
    app.register_blueprint(bp)


class JobStates:
    """`inference_jobs{status}` for /metrics: the jobs in each state, as their store has them."""

    def __init__(self, service: Jobs) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = dict.fromkeys(STATUSES, 0)
        for _, job in self._service.store.records():
            counts[job["status"]] += 1
        family = GaugeMetricFamily("inference_jobs", "Jobs in each state", labels=["status"])
        for status, count in counts.items():
            family.add_metric([status], count)
        yield family


def jobs() -> Jobs:
    return current_app.extensions["jobs"]


def _principal() -> Any:
    return current_principal._get_current_object()


@bp.post("")
@doc(
    "Submit a job: inputs too many or too large to wait for",
    body=schemas.SUBMIT_JOB,
    example=schemas.job_example,
    responses={202: schemas.JOB},
    errors=(404, 413),
)
@require_auth(scopes=["predict"])
def submit():
    body = request_body(current_app.extensions["job_submissions"])
    rows = "data" in body
    inputs = _inputs(body)
    if not rows:
        for i, data in enumerate(inputs):
            if not isinstance(data, list) or not data:
                raise ValidationError(
                    f"inputs[{i}] must be a non-empty list of samples",
                    details={"field": "inputs"},
                )
    metadata = _metadata(body.get("metadata"))
    model = text(body, "model", required=False, max_len=100)
    job_id, job = jobs().submit(
        _principal(),
        model=model,
        inputs=inputs,
        samples=len(inputs) if rows else sum(sample_count(data) for data in inputs),
        project=text(body, "project", required=False, max_len=100),
        metadata=metadata,
        rows=rows,
    )
    return jsonify(public(job_id, job)), 202


def _metadata(value: Any) -> dict[str, Any] | None:
    try:
        small = value is None or (
            isinstance(value, dict) and len(orjson.dumps(value)) <= MAX_METADATA_BYTES
        )
    except orjson.JSONEncodeError:  # text with a lone surrogate
        small = False
    if not small:
        raise ValidationError(
            f"'metadata' must be an object of at most {MAX_METADATA_BYTES} bytes of JSON text",
            details={"field": "metadata"},
        )
    return value


def _inputs(body: dict[str, Any]) -> list[Any]:
    if ("inputs" in body) == ("data" in body):
        raise ValidationError("send either 'inputs' or 'data'", details={"field": "inputs"})
    if "data" in body:
        data = body["data"]
        if not isinstance(data, list) or not data:
            raise ValidationError("'data' must be a non-empty list", details={"field": "data"})
        return data
    inputs = body["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise ValidationError("'inputs' must be a non-empty list", details={"field": "inputs"})
    return inputs


@bp.get("")
@doc(
    "Your jobs, newest first (an admin's: everyone's)",
    query={
        "status": {"type": "string", "enum": list(STATUSES)},
        "project": {"type": "string"},
        "user": {"type": "string", "description": "admins: one user's jobs (their id)"},
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
        "offset": {"type": "integer", "minimum": 0, "maximum": 10**9},
    },
    responses={200: schemas.JOB_LIST},
)
@require_auth(scopes=["predict"])
def list_jobs():
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise ValidationError(
            f"'status' must be one of {', '.join(STATUSES)}", details={"field": "status"}
        )
    limit = query_int("limit", 50, low=1, high=MAX_PAGE)
    offset = query_int("offset", 0, low=0, high=10**9)
    found = jobs().list(
        _principal(),
        user=request.args.get("user"),
        status=status,
        project=request.args.get("project"),
    )
    page = [public(job_id, job) for job_id, job in found[offset : offset + limit]]
    return jsonify({"jobs": page, "total": len(found), "limit": limit, "offset": offset})


@bp.get("/<job_id>")
@doc("One job: its status, counts and times", responses={200: schemas.JOB}, errors=(404,))
@require_auth(scopes=["predict"])
def show(job_id: str):
    return jsonify(public(job_id, jobs().get(_principal(), job_id)))


@bp.get("/<job_id>/result")
@doc(
    "A job's answers so far, one per input, as /predict/batch gives them",
    description="`?format=jsonl` streams one JSON object per line instead (`index` and "
    "`predictions` or `error`), for results too large for one document.",
    query={"format": {"type": "string", "enum": ["json", "jsonl"]}},
    responses={200: schemas.JOB_RESULT},
    media=("application/json", JSON_LINES),
    errors=(404,),
)
@require_auth(scopes=["predict"])
def result(job_id: str):
    service = jobs()
    job = service.get(_principal(), job_id)
    form = request.args.get("format", "json")
    if form not in ("json", "jsonl"):
        raise ValidationError("'format' must be json or jsonl", details={"field": "format"})
    lines = service.result_lines(job_id, job)
    if form == "jsonl":
        return Response(stream_with_context(lines), content_type=JSON_LINES)
    head = {
        "id": job_id,
        "status": job["status"],
        "model": job["model"],
        "partial": job["status"] != "completed",
        "succeeded": job["completed"],
        "failed": job["failed"],
    }
    # The stored lines are JSON already: spliced into the document, not decoded and encoded.
    opening = orjson.dumps(head)[:-1] + b',"results":['
    results = b",".join(line.rstrip(b"\n") for line in lines)
    return Response(opening + results + b"]}", content_type="application/json")


@bp.post("/<job_id>/cancel")
@doc(
    "Cancel a job: a queued one at once, a running one after its current chunk (the part "
    "done is kept)",
    responses={200: schemas.JOB},
    errors=(404, 409),
)
@require_auth(scopes=["predict"])
def cancel(job_id: str):
    return jsonify(public(job_id, jobs().cancel(_principal(), job_id)))


@bp.delete("/<job_id>")
@doc(
    "Delete a finished job and its result", responses={200: schemas.JOB_DELETED}, errors=(404, 409)
)
@require_auth(scopes=["predict"])
def delete(job_id: str):
    jobs().delete(_principal(), job_id)
    return jsonify({"message": "job deleted", "id": job_id})
