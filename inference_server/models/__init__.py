"""Models behind one small interface, and the registry that serves them by name.

A backend turns a model file into a `Model`: something with a name, a version, the shape of input
it accepts, and `predict(batch) -> outputs` on a 2-D float array. The registry loads every model
declared in the settings at start-up; a model that fails to load is kept with its error and
answers 503 MODEL_UNAVAILABLE instead of stopping the server.
"""

from __future__ import annotations

from .base import Model, ModelLoadError, ModelUnavailable
from .registry import ModelRegistry

__all__ = ["Model", "ModelLoadError", "ModelRegistry", "ModelUnavailable"]
