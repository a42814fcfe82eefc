"""Prediction endpoints: /predict, /<model>/predict and /predict/batch.

Every answer names the model and version that produced it and how long inference took. A batch
validates each input on its own (a bad one gets its error in place, the rest still run), then
runs all valid inputs through the model in one call when their shapes allow it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flask import Blueprint, current_app, jsonify

from auth import json_body, require_auth
from auth.errors import ApiError, ValidationError, error_body

from .models import LoadedModel, ModelRegistry, to_batch

bp = Blueprint("predict", __name__)


def registry() -> ModelRegistry:
    return current_app.extensions["models"]


def _model_field(body: dict[str, Any], path_model: str | None = None) -> str | None:
    name = body.get("model")
    if name is not None and not isinstance(name, str):
        raise ValidationError("'model' must be a string", details={"field": "model"})
    if path_model is not None and name is not None and name != path_model:
        raise ValidationError(
            f"the body names model {name!r} but the URL names {path_model!r}",
            details={"field": "model"},
        )
    return path_model or name


def _timed(model: LoadedModel, batch: np.ndarray) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    outputs = model.predict(batch)
    return outputs, round((time.perf_counter() - started) * 1000, 3)


def _answer(model: LoadedModel, elapsed_ms: float, **fields: Any):
    return jsonify(
        {"model": model.name, "version": model.version, **fields, "inference_time_ms": elapsed_ms}
    )


def _predict(path_model: str | None):
    body = json_body()
    model = registry().get(_model_field(body, path_model))
    if "data" not in body:
        raise ValidationError("'data' is required", details={"field": "data"})
    outputs, elapsed = _timed(model, to_batch(body["data"], model.input))
    return _answer(model, elapsed, predictions=outputs.tolist())


@bp.post("/predict")
@require_auth(scopes=["predict"])
def predict():
    return _predict(None)


@bp.post("/<model_name>/predict")
@require_auth(scopes=["predict"])
def predict_with(model_name: str):
    return _predict(model_name)


@bp.post("/predict/batch")
@require_auth(scopes=["predict"])
def predict_batch():
    body = json_body()
    model = registry().get(_model_field(body))
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
    results: list[dict[str, Any] | None] = [None] * len(inputs)
    batches: list[tuple[int, np.ndarray]] = []
    for i, data in enumerate(inputs):
        try:
            batches.append((i, to_batch(data, model.input, field=f"inputs[{i}]")))
        except ApiError as exc:
            results[i] = error_body(exc.error_code, exc.description or "", exc.details)
    elapsed = 0.0
    if batches:
        outputs, elapsed = _run_together(model, [b for _, b in batches])
        for (i, _), out in zip(batches, outputs, strict=True):
            results[i] = {"predictions": out.tolist()}
    failed = sum(1 for r in results if r and "error" in r)
    return _answer(model, elapsed, results=results, succeeded=len(inputs) - failed, failed=failed)


def _run_together(model: LoadedModel, batches: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """One model call for all inputs when their sample shapes agree, else one call each."""
    if len({b.shape[1:] for b in batches}) == 1:
        outputs, elapsed = _timed(model, np.concatenate(batches))
        splits = np.cumsum([len(b) for b in batches])[:-1]
        return np.split(outputs, splits), elapsed
    results, total = [], 0.0
    for batch in batches:
        out, elapsed = _timed(model, batch)
        results.append(out)
        total += elapsed
    return results, round(total, 3)
