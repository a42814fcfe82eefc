"""What every backend produces, and the input validation all of them share.

A backend's `load(spec)` returns a `LoadedModel`: the model's name, version, the input it takes
(`InputSpec`: the shape of one sample, the element type, whether NaN and infinity are allowed),
and `run(batch) -> outputs` on an array whose first dimension is the batch. Loaded models are
immutable: a reload builds a new one, so a prediction in flight always finishes on the model it
started with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from auth import ApiError, Code, ValidationError

DTYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64}


class ModelLoadError(Exception):
    """A model file could not be turned into a model; the message says why."""


class ModelUnavailable(ApiError):
    code, error_code = 503, Code.MODEL_UNAVAILABLE


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int | None, ...] | None  # one sample, no batch dimension; None = any
    dtype: str
    allow_non_finite: bool = False

    def describe(self) -> str:
        dims = "?" if self.shape is None else ", ".join(str(d or "*") for d in self.shape)
        numbers = "integers" if self.dtype == "int64" else "finite numbers"
        if self.allow_non_finite and self.dtype != "int64":
            numbers = "numbers"
        return f"a batch of samples of shape [{dims}] holding {numbers} ({self.dtype})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "shape": None if self.shape is None else list(self.shape),
            "dtype": self.dtype,
            "allow_non_finite": self.allow_non_finite,
        }


def resolve_input(configured: Any, *, shape: Any, dtype: str) -> InputSpec:
    """The model's own input declaration, overridden by whatever the config states."""
    if configured.shape is not None:
        shape = configured.shape
    return InputSpec(
        shape=None if shape is None else tuple(shape),
        dtype=configured.dtype or dtype,
        allow_non_finite=configured.allow_non_finite,
    )


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    backend: str
    input: InputSpec
    run: Callable[[np.ndarray], Any] = field(repr=False)
    outputs: list[str] | None = None
    description: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.run(batch))


def to_batch(data: Any, spec: InputSpec, *, field: str = "data") -> np.ndarray:
    """Validate JSON `data` (a batch of samples, or one sample) into an array for the model."""

    def refuse(problem: str, **extra: Any) -> ValidationError:
        return ValidationError(
            f"'{field}' {problem}; expected {spec.describe()}",
            details={"field": field, "expected": spec.describe(), **extra},
        )

    if not isinstance(data, list):
        raise refuse("must be a list")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise refuse("has rows of different lengths or nesting") from None
    if array.size == 0:
        raise refuse("is empty")
    if array.dtype.kind not in "iuf" or _holds_bool(data, array.ndim):
        raise refuse("holds values that are not numbers")
    if spec.shape is not None:
        if array.ndim == len(spec.shape):
            array = array[np.newaxis]
        sample = array.shape[1:]
        if len(sample) != len(spec.shape) or any(
            want is not None and want != got for want, got in zip(spec.shape, sample, strict=True)
        ):
            raise refuse(f"has samples of shape {list(sample)}", got=list(sample))
    elif array.ndim == 1:
        array = array[np.newaxis]
    if array.dtype.kind == "f":
        if spec.dtype == "int64" and not np.array_equal(array, np.round(array)):
            raise refuse("holds numbers that are not integers")
        if not spec.allow_non_finite and not np.isfinite(array).all():
            raise refuse("holds NaN or infinity")
    return array.astype(DTYPES[spec.dtype], copy=False)


def to_batch_in_steps(
    data: Any, spec: InputSpec, *, field: str = "data", step: int = 10_000
) -> np.ndarray:
    """`to_batch` a slice of samples at a time, so that building a large array never holds the
    GIL for long (see `json_steps`); the same array and the same errors as `to_batch`."""
    if not isinstance(data, list) or len(data) <= step:
        return to_batch(data, spec, field=field)
    try:
        first: np.ndarray | None = to_batch(data[:step], spec, field=field)
    except ValidationError:
        first = None  # perhaps one large sample rather than a batch: judge it whole
    if first is None or len(first) != step:
        return to_batch(data, spec, field=field)
    rest = (to_batch(data[i : i + step], spec, field=field) for i in range(step, len(data), step))
    parts = [first, *rest]
    if len({part.shape[1:] for part in parts}) > 1:
        raise ValidationError(
            f"'{field}' has rows of different lengths or nesting; expected {spec.describe()}",
            details={"field": field, "expected": spec.describe()},
        )
    return np.concatenate(parts)


def _holds_bool(data: list[Any], ndim: int) -> bool:
    # JSON true/false would pass as 1/0 inside a numeric array; flattening with C-level
    # iterators keeps this check cheap for large inputs.
    level: Any = data
    for _ in range(ndim - 1):
        level = chain.from_iterable(level)
    return bool in set(map(type, level))
