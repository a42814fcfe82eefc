"""Models behind one small interface, and the registry that serves them by name.

Backends (`builtin`, `onnx`, `torchscript`) turn a model file into a `LoadedModel`; the registry
keeps them by name, in step with the config and the admin API across worker processes.
"""

from __future__ import annotations

from .base import LoadedModel, ModelLoadError, ModelUnavailable, to_batch, to_batch_in_steps
from .registry import (
    ACTIONS,
    STATE_SHAPE,
    STATE_STORE,
    ModelRegistry,
    load_model,
    model_loaded,
    state_store,
)

__all__ = [
    "ACTIONS",
    "STATE_SHAPE",
    "STATE_STORE",
    "LoadedModel",
    "ModelLoadError",
    "ModelRegistry",
    "ModelUnavailable",
    "load_model",
    "model_loaded",
    "state_store",
    "to_batch",
    "to_batch_in_steps",
]
