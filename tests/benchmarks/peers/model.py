"""The demo model as the peer apps serve it: the same weights, the same answer, plain NumPy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

SPEC = json.loads((Path(__file__).resolve().parents[3] / "data/models/demo.json").read_text())
WEIGHTS = np.asarray(SPEC["weights"], dtype=np.float32)
BIAS = np.asarray(SPEC["bias"], dtype=np.float32)


def predict(body: object) -> tuple[dict, int]:
    """The answer to a /predict body, or a 400 when it is not one."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not data:
        return {"error": "'data' must be a non-empty list"}, 400
    try:
        batch = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError):
        return {"error": "'data' must hold numbers"}, 400
    if batch.ndim == 1:
        batch = batch[None, :]
    if batch.ndim != 2 or batch.shape[1] != WEIGHTS.shape[0]:
        return {"error": f"each sample must hold {WEIGHTS.shape[0]} numbers"}, 400
    started = time.perf_counter()
    outputs = batch @ WEIGHTS + BIAS
    elapsed = round((time.perf_counter() - started) * 1000, 3)
    answer = {"model": "demo", "version": SPEC["version"], "predictions": outputs.tolist()}
    return {**answer, "inference_time_ms": elapsed}, 200
