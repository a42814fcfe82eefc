"""The embedded NumPy backend: linear and logistic models whose weights live in a JSON file.

File format (`format: builtin-v1`): `kind` (linear | logistic), `input_dim`, `weights` as an
input_dim x outputs matrix, `bias` with one value per output, optional `version`, `outputs` and
`description`. Logistic models apply a sigmoid to each output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .base import ModelLoadError

KINDS = ("linear", "logistic")


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    version: str
    kind: str
    weights: np.ndarray
    bias: np.ndarray
    description: str = ""
    outputs: list[str] = field(default_factory=list)

    @property
    def input_dim(self) -> int:
        return int(self.weights.shape[0])

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = batch @ self.weights + self.bias
        if self.kind == "logistic":
            out = 1.0 / (1.0 + np.exp(-out))
        return out

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "backend": "builtin",
            "kind": self.kind,
            "description": self.description,
            "input_shape": [None, self.input_dim],
            "outputs": self.outputs,
        }


def load_builtin(path: Path, *, name: str, version: str | None) -> BuiltinModel:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise ModelLoadError(f"{path}: 'kind' must be one of {', '.join(KINDS)}")
    try:
        weights = np.asarray(spec["weights"], dtype=np.float64)
        bias = np.asarray(spec["bias"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise ModelLoadError(f"{path}: 'weights' and 'bias' must be numeric arrays") from None
    if weights.ndim != 2 or bias.shape != (weights.shape[1],):
        raise ModelLoadError(
            f"{path}: 'weights' must be input_dim x outputs and 'bias' hold one value per output"
        )
    if spec.get("input_dim", weights.shape[0]) != weights.shape[0]:
        raise ModelLoadError(f"{path}: 'input_dim' disagrees with the weights' shape")
    return BuiltinModel(
        name=name,
        version=str(version or spec.get("version") or "1"),
        kind=spec["kind"],
        weights=weights,
        bias=bias,
        description=str(spec.get("description", "")),
        outputs=list(spec.get("outputs", [])),
    )
