"""The interface every backend implements, and input validation shared by all of them."""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from auth.errors import ApiError, ValidationError


class ModelLoadError(Exception):
    """A model file could not be turned into a model; the message says why."""


class ModelUnavailable(ApiError):
    code, error_code = 503, "MODEL_UNAVAILABLE"


class Model(Protocol):
    name: str
    version: str
    input_dim: int

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Outputs for a (rows, input_dim) float64 array: one row of outputs per input row."""
        ...

    def metadata(self) -> dict[str, Any]: ...


def to_batch(data: Any, *, input_dim: int, field: str = "data") -> np.ndarray:
    """Validate `data` (rows of `input_dim` finite numbers, or one such row) into a 2-D array."""
    expected = f"a non-empty list of rows, each a list of {input_dim} finite numbers"
    if isinstance(data, list) and data and not isinstance(data[0], list):
        data = [data]
    if not isinstance(data, list) or not data:
        raise ValidationError(
            f"'{field}' must be {expected}", details={"field": field, "expected": expected}
        )
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != input_dim:
            raise ValidationError(
                f"'{field}' row {i} must be a list of {input_dim} numbers",
                details={"field": field, "row": i, "expected": expected},
            )
        for value in row:
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or (isinstance(value, float) and not math.isfinite(value))
            ):
                raise ValidationError(
                    f"'{field}' row {i} holds {value!r}; expected finite numbers",
                    details={"field": field, "row": i, "expected": expected},
                )
    return np.asarray(data, dtype=np.float64)
