"""The embedded NumPy backend: linear, logistic and small MLP models stored as JSON.

    {"format": "builtin-v1", "kind": "linear" | "logistic", "weights": [[...]], "bias": [...]}
    {"format": "builtin-v1", "kind": "mlp", "layers": [{"weights", "bias", "activation"}, ...]}

`weights` is an inputs x outputs matrix and `bias` holds one value per output. A logistic model
applies a sigmoid to its outputs; each MLP layer names its activation (relu, tanh, sigmoid,
softmax or none). Optional: `version`, `description`, `outputs` (output names).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .base import LoadedModel, ModelLoadError, resolve_input


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


ACTIVATIONS = {
    "none": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "softmax": _softmax,
}


def _layers(spec: dict[str, Any], path: Path) -> list[tuple[np.ndarray, np.ndarray, str]]:
    kind = spec.get("kind")
    if kind in ("linear", "logistic"):
        raw = [{**spec, "activation": "none" if kind == "linear" else "sigmoid"}]
    elif kind == "mlp" and isinstance(spec.get("layers"), list) and spec["layers"]:
        raw = spec["layers"]
    else:
        raise ModelLoadError(f"{path}: 'kind' must be linear, logistic or mlp (with 'layers')")
    layers = []
    width = None
    for i, layer in enumerate(raw):
        try:
            weights = np.asarray(layer["weights"], dtype=np.float64)
            bias = np.asarray(layer["bias"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(f"{path}: layer {i} needs numeric 'weights' and 'bias'") from None
        activation = layer.get("activation", "none")
        if activation not in ACTIVATIONS:
            raise ModelLoadError(f"{path}: layer {i} activation must be one of {list(ACTIVATIONS)}")
        if weights.ndim != 2 or bias.shape != (weights.shape[1],):
            raise ModelLoadError(
                f"{path}: layer {i} 'weights' must be inputs x outputs, 'bias' one per output"
            )
        if width is not None and weights.shape[0] != width:
            raise ModelLoadError(f"{path}: layer {i} takes {weights.shape[0]} inputs, gets {width}")
        width = weights.shape[1]
        layers.append((weights, bias, activation))
    return layers


def load(spec: Any) -> LoadedModel:
    path = Path(spec.path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    layers = _layers(document, path)

    def run(batch: np.ndarray) -> np.ndarray:
        out = batch
        for weights, bias, activation in layers:
            out = ACTIVATIONS[activation](out @ weights + bias)
        return out

    return LoadedModel(
        name=spec.name,
        version=str(spec.version or document.get("version") or "1"),
        backend="builtin",
        input=resolve_input(spec.input, shape=[layers[0][0].shape[0]], dtype="float64"),
        run=run,
        outputs=spec.outputs or document.get("outputs"),
        description=spec.description or document.get("description"),
        details={"kind": document["kind"], "layers": len(layers)},
    )
