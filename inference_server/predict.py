"""Prediction endpoints: the default model, or the one named in the body."""

from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify

from auth import json_body, require_auth
from auth.errors import ValidationError

from .models import ModelRegistry
from .models.base import to_batch

bp = Blueprint("predict", __name__)


def registry() -> ModelRegistry:
    return current_app.extensions["models"]


@bp.post("/predict")
@require_auth(scopes=["predict"])
def predict():
    body = json_body()
    name = body.get("model")
    if name is not None and not isinstance(name, str):
        raise ValidationError("'model' must be a string", details={"field": "model"})
    model = registry().get(name)
    if "data" not in body:
        raise ValidationError("'data' is required", details={"field": "data"})
    batch = to_batch(body["data"], input_dim=model.input_dim)
    started = time.perf_counter()
    outputs = model.predict(batch)
    elapsed_ms = (time.perf_counter() - started) * 1000
    return jsonify(
        {
            "model": model.name,
            "version": model.version,
            "predictions": outputs.tolist(),
            "inference_time_ms": round(elapsed_ms, 3),
        }
    )
