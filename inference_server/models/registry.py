"""The model registry: models by name, loaded once, safe to read from many threads."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from auth.errors import NotFound

from .base import Model, ModelLoadError, ModelUnavailable
from .builtin import load_builtin

log = logging.getLogger(__name__)

LOADERS = {"builtin": load_builtin}


class Spec(Protocol):
    name: str
    backend: str
    path: str
    version: str | None


@dataclass(frozen=True)
class Entry:
    spec: Spec
    model: Model | None
    error: str | None


class ModelRegistry:
    def __init__(self, specs: Iterable[Spec], *, default: str) -> None:
        self.default = default
        self._entries: dict[str, Entry] = {}
        for spec in specs:
            self._entries[spec.name] = self._load(spec)

    @staticmethod
    def _load(spec: Spec) -> Entry:
        try:
            model = LOADERS[spec.backend](Path(spec.path), name=spec.name, version=spec.version)
        except ModelLoadError as exc:
            log.error("model %r failed to load: %s", spec.name, exc)
            return Entry(spec=spec, model=None, error=str(exc))
        log.info("model %r loaded (%s, version %s)", spec.name, spec.backend, model.version)
        return Entry(spec=spec, model=model, error=None)

    def get(self, name: str | None = None) -> Model:
        """The loaded model `name` (default model if None); 404 if unknown, 503 if broken."""
        name = name or self.default
        entry = self._entries.get(name)
        if entry is None:
            raise NotFound(f"no model named {name!r}", details={"models": sorted(self._entries)})
        if entry.model is None:
            raise ModelUnavailable(f"model {name!r} is not available: {entry.error}")
        return entry.model

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "backend": e.spec.backend,
                "status": "ready" if e.model else "error",
                "error": e.error,
                "default": name == self.default,
            }
            for name, e in self._entries.items()
        ]
