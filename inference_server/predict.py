"""Prediction endpoints: /predict, /<model>/predict and /predict/batch.

Every answer names the model and version that produced it and how long inference took. A batch
validates each input on its own (a bad one gets its error in place, the rest still run), then
runs all valid inputs through the model in one call when their shapes allow it.

The heavy part of a prediction (checking the input, the model call, encoding the answer) runs on
an inference thread (`models.inference_threads`, see `auth.offload`), and so does parsing a large
body: a million-row request keeps its own greenlet waiting, not the worker's other requests.
Choosing the model stays on the event loop, where the registry's locks live.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, TypeVar

import numpy as np
from flask import Blueprint, Response, current_app, request

from auth import (
    Admission,
    ApiError,
    PayloadTooLarge,
    ThreadOffload,
    ValidationError,
    admit_prediction,
    check_model,
    counted_at_admission,
    doc,
    error_body,
    json_bytes,
    max_json_depth,
    may_call,
    parse_json_object,
    refuse_unknown_fields,
    request_id,
    require_auth,
)

from . import json_steps, schemas
from .metrics import instruments
from .models import LoadedModel, ModelRegistry, to_batch_in_steps
from .settings import MODEL_NAME

bp = Blueprint("predict", __name__)
T = TypeVar("T")

PARSE_INLINE_BYTES = 64 * 1024  # smaller bodies parse faster than a hand-off to a thread


def init_app(app, *, threads: int, max_samples: int, metered: bool = False) -> None:
    app.extensions["inference"] = Inference(
        ThreadOffload(threads), max_samples, app.extensions["models"], metered=metered
    )
    app.register_blueprint(bp)


class Inference:
    """Where predictions run: on an inference thread, or inline when that costs less.

    Handing a prediction to a thread and back costs a few tens of microseconds and two context
    switches; for a model that answers a small request in well under a millisecond that is most
    of the request. Such a prediction runs on the event loop instead: a model is taken as fast
    once it has answered in under `INLINE_MS` (measured on every call, so a model that slows
    down goes back to the threads), and only small bodies qualify.
    """

    INLINE_MS = 1.0

    def __init__(
        self,
        threads: ThreadOffload,
        max_samples: int,
        registry: ModelRegistry,
        *,
        metered: bool = False,
    ) -> None:
        """`metered`: each call is counted in the server's metrics (`metrics.instruments`)."""
        self.threads = threads
        self.max_samples = max_samples
        self.registry = registry
        self._fast: dict[str, bool] = {}  # model name -> its last call took under INLINE_MS
        self._metered = metered
        self._in_flight = instruments.IN_FLIGHT.track_inprogress() if metered else nullcontext()

    def inline(self, model: LoadedModel, body_bytes: int) -> bool:
        """True if a prediction of `model` for a body this long runs on the event loop."""
        return body_bytes <= PARSE_INLINE_BYTES and self._fast.get(model.name, False)

    def run(self, model: LoadedModel, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` inline, or on an inference thread with the garbage collector paused
        (large documents: see `json_steps.collector_paused`)."""
        if self.inline(model, request.content_length or 0):
            return fn(*args)
        return self.threads.run(collector_paused, fn, *args)

    def choose(self, name: str | None, samples: int) -> tuple[LoadedModel, Admission | None]:
        """The model a prediction of `samples` samples asks for (None: the default; see
        `model_for`) and its admission (`admit_prediction`: quotas, concurrency, usage): the
        one place every prediction route picks its model."""
        model = model_for(self.registry, name)
        return model, admit_prediction(model.name, samples)

    def prepare(
        self, body: dict[str, Any], path_model: str | None
    ) -> tuple[LoadedModel, Any, Admission | None]:
        """The model a /predict body asks for (or the URL names), its checked `data` and the
        prediction's admission."""
        if "data" not in body:
            raise ValidationError("'data' is required", details={"field": "data"})
        data = body["data"]
        _samples_within(data, self.max_samples, "data")
        model, admission = self.choose(_model_field(body, path_model), sample_count(data))
        return model, data, admission

    def payload(self, model: LoadedModel, data: Any, admission: Admission | None) -> bytes:
        """The encoded answer of `model` to `data` (400 if `data` does not fit the model)."""
        outputs, elapsed = self.timed(model, to_batch_in_steps(data, model.input), admission)
        return _encode(model, elapsed, predictions=outputs)

    def timed(
        self, model: LoadedModel, batch: np.ndarray, admission: Admission | None
    ) -> tuple[np.ndarray, float]:
        """The model's outputs for `batch` and the milliseconds they took (added to the
        usage of `admission`)."""
        started = time.perf_counter()
        with self._in_flight:
            outputs = model.predict(batch)
        seconds = time.perf_counter() - started
        if self._metered:
            instruments.predicted(model.name, seconds, len(batch))
        elapsed = seconds * 1000
        self._fast[model.name] = elapsed < self.INLINE_MS
        if admission is not None:
            admission.inference_ms += elapsed
        return outputs, round(elapsed, 3)


def inference() -> Inference:
    return current_app.extensions["inference"]


def registry() -> ModelRegistry:
    return current_app.extensions["models"]


def model_for(models: ModelRegistry, name: str | None) -> LoadedModel:
    """The model `name` names (None: the default), once this request's credential may call
    it: a model it may not call is refused before it is looked up, so the answer does not tell
    whether it exists, and a 404 lists only the models it may call. Predictions and jobs
    choose their model here."""
    name = name or models.default
    check_model(name)
    return models.get(name, listed=may_call)


def sample_count(data: Any) -> int:
    """How many samples a request's `data` holds for usage and quotas: its rows (a list of
    lists), else one."""
    if isinstance(data, list) and data and isinstance(data[0], list):
        return len(data)
    return 1


def _model_field(body: dict[str, Any], path_model: str | None = None) -> str | None:
    name = body.get("model")
    if name is not None and not (isinstance(name, str) and MODEL_NAME.match(name)):
        raise ValidationError(
            "'model' must be a model name (1-64 letters, digits, '_', '.' or '-')",
            details={"field": "model"},
        )
    if path_model is not None and name is not None and name != path_model:
        raise ValidationError(
            f"the body names model {name!r} but the URL names {path_model!r}",
            details={"field": "model"},
        )
    return path_model or name


def _encode(model: LoadedModel, elapsed_ms: float, **fields: Any) -> bytes:
    return json_steps.dumps(
        {"model": model.name, "version": model.version, **fields, "inference_time_ms": elapsed_ms}
    ).encode()


def request_body(threads: ThreadOffload | None = None) -> dict[str, Any]:
    """The request's JSON object (only the fields its view declares); a large one is parsed
    on a thread of `threads` (default: the inference threads), in steps (`json_steps`):
    predictions and jobs read theirs so."""
    raw, depth = json_bytes(), max_json_depth()
    if len(raw) <= PARSE_INLINE_BYTES:
        return refuse_unknown_fields(parse_json_object(raw, max_depth=depth))
    pool = threads or inference().threads
    return refuse_unknown_fields(pool.run(_parse_large, raw, depth))


def _parse_large(raw: bytes, max_depth: int) -> dict[str, Any]:
    with json_steps.collector_paused():
        return parse_json_object(raw, max_depth=max_depth, loads=json_steps.loads)


def _samples_within(data: Any, limit: int, field: str) -> None:
    """413 when a batch holds more samples than `models.max_samples_per_request`, checked on
    the JSON list before any array is built."""
    if isinstance(data, list) and len(data) > limit and isinstance(data[0], list):
        raise PayloadTooLarge(
            f"'{field}' holds {len(data)} samples; the limit is {limit} per request",
            details={"field": field, "max_samples_per_request": limit},
        )


def _respond(payload: bytes) -> Response:
    return current_app.response_class(payload, mimetype="application/json")


def _predict(path_model: str | None):
    runner = inference()
    model, data, admission = runner.prepare(request_body(), path_model)
    return _respond(runner.run(model, runner.payload, model, data, admission))


@bp.post("/predict")
@doc(
    "Predict with the default model, or the one the body names",
    body=schemas.PREDICT,
    example=schemas.predict_example,
    responses={200: schemas.PREDICTION},
    errors=(404,),
)
@require_auth(scopes=["predict"])
@counted_at_admission
def predict():
    return _predict(None)


@bp.post("/<model_name>/predict")
@doc(
    "Predict with the model the URL names",
    body=schemas.PREDICT_WITH,
    example=schemas.predict_example,
    path={"model_name": schemas.NAME},
    path_examples={"model_name": schemas.default_model},
    responses={200: schemas.PREDICTION},
)
@require_auth(scopes=["predict"])
@counted_at_admission
def predict_with(model_name: str):
    return _predict(model_name)


@bp.post("/predict/batch")
@doc(
    "Predict several inputs; a bad one gets its error in place",
    body=schemas.BATCH,
    example=schemas.batch_example,
    responses={200: schemas.BATCH_RESULT},
    errors=(404,),
)
@require_auth(scopes=["predict"])
@counted_at_admission
def predict_batch():
    body = request_body()
    inputs = body.get("inputs")
    limit = registry().max_batch_size
    if not isinstance(inputs, list) or not inputs:
        raise ValidationError(
            "'inputs' must be a non-empty list of inputs", details={"field": "inputs"}
        )
    if len(inputs) > limit:
        raise ValidationError(
            f"'inputs' holds {len(inputs)} inputs; the limit is {limit}",
            details={"field": "inputs", "max_batch_size": limit},
        )
    for i, data in enumerate(inputs):
        _samples_within(data, inference().max_samples, f"inputs[{i}]")
    runner = inference()
    samples = sum(sample_count(data) for data in inputs)
    model, admission = runner.choose(_model_field(body), samples)
    return _respond(
        runner.run(model, _batch_payload, runner, model, inputs, request_id(), admission)
    )


def collector_paused(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` with the garbage collector paused (large documents and arrays: see
    `json_steps.collector_paused`)."""
    with json_steps.collector_paused():
        return fn(*args)


def _batch_payload(
    runner: Inference,
    model: LoadedModel,
    inputs: list[Any],
    rid: str,
    admission: Admission | None,
) -> bytes:
    results, elapsed = predict_each(runner, model, inputs, rid, admission)
    failed = sum(1 for r in results if "error" in r)
    return _encode(model, elapsed, results=results, succeeded=len(inputs) - failed, failed=failed)


def predict_each(
    runner: Inference,
    model: LoadedModel,
    inputs: list[Any],
    rid: str,
    admission: Admission | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Each input's answer, `{"predictions": ...}` or its error (the error shape's body,
    naming request `rid`), in order, and the milliseconds the model took: the valid inputs run
    together (`_run_together`). /predict/batch runs its inputs through this, and jobs through
    its two halves (`check_each` when submitted, `answer_each` as they run)."""
    return answer_each(runner, model, check_each(model, inputs, rid), admission)


def check_each(
    model: LoadedModel, inputs: list[Any], rid: str, *, rows: bool = False
) -> np.ndarray | list[np.ndarray | dict]:
    """Each input as the array `model` takes, or its error (naming `inputs[i]`). `rows`:
    `inputs` is a list of samples, each one input: they are checked together when they can
    be, and the array of them all is returned (row i is input i)."""
    if rows:
        try:
            return to_batch_in_steps(inputs, model.input, field="data")
        except ApiError:  # some samples do not fit: find which, each failing alone
            inputs = [[sample] for sample in inputs]
    checked: list[np.ndarray | dict] = []
    for i, data in enumerate(inputs):
        try:
            checked.append(to_batch_in_steps(data, model.input, field=f"inputs[{i}]"))
        except ApiError as exc:
            checked.append(error_body(exc.error_code, exc.description or "", exc.details, rid=rid))
    return checked


def answer_each(
    runner: Inference,
    model: LoadedModel,
    checked: list[np.ndarray | dict],
    admission: Admission | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """The answers to inputs `check_each` checked: the errors kept, the arrays predicted."""
    results: list[dict[str, Any]] = [c if isinstance(c, dict) else {} for c in checked]
    batches = [(i, c) for i, c in enumerate(checked) if not isinstance(c, dict)]
    elapsed = 0.0
    if batches:
        outputs, elapsed = _run_together(runner, model, [b for _, b in batches], admission)
        for (i, _), out in zip(batches, outputs, strict=True):
            results[i] = {"predictions": out}
    return results, elapsed


def _run_together(
    runner: Inference,
    model: LoadedModel,
    batches: list[np.ndarray],
    admission: Admission | None,
) -> tuple[list[np.ndarray], float]:
    """One model call for all inputs when their sample shapes agree, else one call each."""
    if len({b.shape[1:] for b in batches}) == 1:
        outputs, elapsed = runner.timed(model, np.concatenate(batches), admission)
        splits = np.cumsum([len(b) for b in batches])[:-1]
        return np.split(outputs, splits), elapsed
    results, total = [], 0.0
    for batch in batches:
        out, elapsed = runner.timed(model, batch, admission)
        results.append(out)
        total += elapsed
    return results, round(total, 3)
