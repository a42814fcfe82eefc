"""JSON Schemas of the prediction and model bodies and answers, for the API description.

Request bodies declare `additionalProperties: false`: the server refuses any other field by
name (`auth.inputs.refuse_unknown_fields`), so a misspelt `"modle"` is an error, not a guess.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from auth import answer, body

from .models import ACTIONS
from .settings import MODEL_NAME

NAME = {"type": "string", "pattern": MODEL_NAME.pattern}


# -- what the docs page pre-fills: the server's default model and a sample of its input ------


def default_model(app: Flask) -> str:
    return app.extensions["models"].default


def sample(app: Flask) -> Any:
    """One sample shaped and typed as the default model's input (1.0, 2.0, ... in order; a
    dimension of any size taken as 1)."""
    described = app.extensions["models"].describe(default_model(app))["input"]
    integral = "int" in str(described.get("dtype"))
    counter = iter(range(1, 1 << 30))

    def filled(shape: list[Any]) -> Any:
        if not shape:
            value = next(counter)
            return value if integral else float(value)
        return [filled(shape[1:]) for _ in range(shape[0] if isinstance(shape[0], int) else 1)]

    return filled(list(described.get("shape") or [1]))


def predict_example(app: Flask) -> dict[str, Any]:
    return {"data": [sample(app)]}


def batch_example(app: Flask) -> dict[str, Any]:
    return {"inputs": [[sample(app)], [sample(app), sample(app)]]}


def manage_example(app: Flask) -> dict[str, Any]:
    return {"action": "reload", "model": default_model(app)}


def job_example(app: Flask) -> dict[str, Any]:
    return {**batch_example(app), "project": "nightly", "metadata": {"run": 1}}


DOWNLOAD_EXAMPLE = {
    "name": "churn",
    "backend": "onnx",
    "url": "https://models.example.org/churn-1.2.onnx",
    "sha256": "0" * 64,
}
ANY = {"description": "a number, or a list of them nested as the model's input or output"}
SAMPLES = {
    "description": "a list of samples, each a (nested) list of numbers shaped like the model's "
    "input; a flat list of numbers is one sample",
    "type": "array",
    "minItems": 1,
    "items": ANY,
}
NUMBERS = {"description": "the model's outputs, one row per sample", "type": "array", "items": ANY}

MODEL_FIELD = {"anyOf": [NAME, {"type": "null"}], "description": "absent or null: the default"}
PREDICT = body({"data": SAMPLES, "model": MODEL_FIELD}, "data")
PREDICT_WITH = body({"data": SAMPLES, "model": MODEL_FIELD}, "data")
BATCH = body(
    {"inputs": {"type": "array", "minItems": 1, "items": SAMPLES}, "model": MODEL_FIELD},
    "inputs",
)
MANAGE = body(
    {"action": {"type": "string", "enum": list(ACTIONS)}, "model": NAME}, "action", "model"
)
DOWNLOAD = body(
    {
        "name": NAME,
        "backend": {"type": "string", "enum": ["builtin", "onnx", "torchscript"]},
        "url": {"type": "string", "minLength": 1, "maxLength": 2048},
        "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
        "version": {"type": ["string", "null"]},
        "description": {"type": ["string", "null"]},
        "input": {"type": "object"},
        "outputs": {"type": ["array", "null"], "items": {"type": "string"}},
        "options": {"type": "object"},
        "lazy": {"type": "boolean"},
    },
    "name",
    "backend",
    "url",
)

PREDICTION = answer(
    {
        "model": {"type": "string"},
        "version": {"type": ["string", "null"]},
        "predictions": NUMBERS,
        "inference_time_ms": {"type": "number"},
    }
)
BATCH_RESULT = answer(
    {
        "model": {"type": "string"},
        "version": {"type": ["string", "null"]},
        "results": {
            "type": "array",
            "items": {
                "description": "the predictions of one input, or its error in the error shape",
                "type": "object",
                "oneOf": [{"required": ["predictions"]}, {"required": ["error"]}],
            },
        },
        "succeeded": {"type": "integer"},
        "failed": {"type": "integer"},
        "inference_time_ms": {"type": "number"},
    }
)
MODEL = answer(
    {
        "name": {"type": "string"},
        "backend": {"type": "string"},
        "version": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": ["ready", "error", "unloaded", "lazy"]},
        "error": {"type": ["string", "null"]},
        "default": {"type": "boolean"},
        "source": {"type": "string", "enum": ["config", "api"]},
        "description": {"type": ["string", "null"]},
        "input": {"type": "object"},
        "outputs": {"type": ["array", "null"], "items": {"type": "string"}},
        "loaded_at": {"type": ["string", "null"], "format": "date-time"},
        "lazy": {"type": "boolean"},
        "details": {"type": "object"},
    },
    "name",
    "backend",
    "status",
    "input",
)
MODELS = answer(
    {
        "default": {
            "type": ["string", "null"],
            "description": "the default model; null if this credential may not call it",
        },
        "models": {"type": "array", "items": MODEL},
    }
)
MANAGED = answer(
    {
        "action": {"type": "string", "enum": list(ACTIONS)},
        "model": {"type": "object", "required": ["name", "status"]},
    }
)
DOWNLOADED = answer({"model": MODEL, "sha256": {"type": "string"}})
HEALTH = answer({"status": {"const": "ok"}})
READY = answer({"status": {"const": "ready"}, "checks": {"type": "object"}})

# -- jobs -----------------------------------------------------------------------------------------

JOB_STATUS = {
    "type": "string",
    "enum": ["queued", "in_progress", "cancelling", "completed", "failed", "cancelled"],
}
SUBMIT_JOB = body(
    {
        "inputs": {
            "type": "array",
            "minItems": 1,
            "items": SAMPLES,
            "description": "inputs, each answered (or refused) on its own, as /predict/batch",
        },
        "data": {
            **SAMPLES,
            "description": "instead of inputs: samples, each one input of the job",
        },
        "model": MODEL_FIELD,
        "project": {"type": ["string", "null"], "minLength": 1, "maxLength": 100},
        "metadata": {
            "type": ["object", "null"],
            "description": "your own labels for the job, up to 4 KB of JSON",
        },
    },
    minProperties=1,
)
JOB = answer(
    {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["job"]},
        "status": JOB_STATUS,
        "model": {"type": "string"},
        "user_id": {"type": "string"},
        "project": {"type": ["string", "null"]},
        "metadata": {"type": ["object", "null"]},
        "request_counts": answer(
            {
                "total": {"type": "integer"},
                "completed": {"type": "integer"},
                "failed": {"type": "integer"},
            }
        ),
        "samples": {"type": "integer"},
        "error": {"type": ["string", "null"]},
        "created_at": {"type": "string"},
        "started_at": {"type": ["string", "null"]},
        "finished_at": {"type": ["string", "null"]},
    }
)
JOB_LIST = answer(
    {
        "jobs": {"type": "array", "items": JOB},
        "total": {"type": "integer"},
        "limit": {"type": "integer"},
        "offset": {"type": "integer"},
    }
)
JOB_RESULT = answer(
    {
        "id": {"type": "string"},
        "status": JOB_STATUS,
        "model": {"type": "string"},
        "partial": {"type": "boolean"},
        "succeeded": {"type": "integer"},
        "failed": {"type": "integer"},
        "results": {"type": "array", "items": {"type": "object"}},
    }
)
JOB_DELETED = answer({"message": {"type": "string"}, "id": {"type": "string"}})
