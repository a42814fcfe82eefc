"""The model registry: models by name, loaded once, shared by threads, kept in step across workers.

What should be served is the config's `models.registry` overlaid with the changes made through the
API, which live in the `models_state` store beside the auth stores (`data/models_state.json` with
the JSON backend): per model, a spec if the API added it, a wanted state (loaded, unloaded,
removed), a reload generation and a default flag. Every worker compares the store's version on
each request and, when it changed, reconciles its in-memory models with it; so an admin's action
in one worker takes effect in all (on every host sharing the storage), and survives a restart.

A model file inside the data dir (a download) is stored by its path relative to the data dir and
found against the data dir of the process that reads it, so a data dir restored on another host
(or under another path) still finds its models; other paths are kept as given. Records written
with absolute paths into the data dir (before paths were stored this way) are still read as
they are; `rebase_paths` rewrites them for a data dir restored from elsewhere.

Entries are immutable and the name -> entry map is replaced whole, never edited in place: a
prediction that fetched a model finishes on that model even if it is reloaded or unloaded
meanwhile. A model that fails to load is kept as an entry with its error and answers 503.

Each load that succeeds sends `model_loaded(name, seconds=...)` (a blinker signal, as Flask's),
which the server's metrics count.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blinker import Namespace

from auth import Conflict, Field, NotFound, Storage, Store, Transaction, one_of

from ..settings import ConfigError, ModelSettings, ModelSpec, parse_section
from . import builtin, onnx_backend, torchscript
from .base import LoadedModel, ModelLoadError, ModelUnavailable, resolve_input

log = logging.getLogger(__name__)

LOADERS: dict[str, Callable[[ModelSpec], LoadedModel]] = {
    "builtin": builtin.load,
    "onnx": onnx_backend.load,
    "torchscript": torchscript.load,
}
model_loaded = Namespace().signal("model-loaded")
ACTIONS = ("load", "unload", "reload", "remove", "set_default")
STATE_STORE = "models_state"  # the store's name: `models_state.json` with the JSON backend
STATE_SHAPE = {
    "spec": Field((dict, None)),  # checked as a ModelSpec when the state is applied
    "state": Field((str,), check=one_of(("loaded", "unloaded", "removed"))),
    "generation": Field((int,)),
    "default": Field((bool,), required=False),
}


def state_store(storage: Storage) -> Store:
    """The store of the model changes made through the API."""
    return storage.store(STATE_STORE, collection="models", shape=STATE_SHAPE)


@dataclass(frozen=True)
class Wanted:
    spec: ModelSpec
    state: str  # "loaded" or "unloaded"
    generation: int
    source: str  # "config" or "api"


@dataclass(frozen=True)
class Entry:
    wanted: Wanted
    status: str  # ready | error | unloaded | lazy
    model: LoadedModel | None = None
    error: str | None = None
    loaded_at: str | None = None

    def satisfies(self, wanted: Wanted) -> bool:
        same = self.wanted.spec == wanted.spec and self.wanted.generation == wanted.generation
        return same and (self.status == "unloaded") == (wanted.state == "unloaded")


def stored_path(path: str, data_dir: Path) -> str:
    """How the state store keeps the model file `path`: relative to `data_dir` when the file is
    inside it, else as given."""
    if not os.path.isabs(path):
        return path
    relative = os.path.relpath(os.path.normpath(path), data_dir)
    if relative == os.curdir or relative.split(os.sep)[0] == os.pardir:
        return path
    return Path(relative).as_posix()


def resolved_path(path: str, data_dir: Path) -> str:
    """Where the stored model file `path` is: a relative one is inside `data_dir`."""
    return path if os.path.isabs(path) else str(data_dir / path)


def rebase_paths(store: Store, old_data_dir: str) -> list[str]:
    """Store the absolute paths of API-added models that point into `old_data_dir` (where a
    restored backup came from) relative to it, as paths inside the data dir are stored now;
    returns the names of the models changed."""

    def moved(record: dict[str, Any]) -> dict[str, Any] | None:
        spec = record.get("spec")
        path = spec.get("path") if isinstance(spec, dict) else None
        if not isinstance(path, str) or not os.path.isabs(path):
            return None
        relative = stored_path(path, Path(old_data_dir))
        return None if relative == path else {**record, "spec": {**spec, "path": relative}}

    names = sorted(name for name, record in store.records() if moved(record) is not None)
    if names:

        def change(items: Transaction) -> None:
            for name in names:
                record = items.get(name)
                rebased = moved(record) if record is not None else None
                if rebased is not None:
                    items[name] = rebased

        store.update(change)
    return names


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load `spec` with its backend; raises ModelLoadError with a message for the operator."""
    return LOADERS[spec.backend](spec)


class ModelRegistry:
    def __init__(
        self, settings: ModelSettings, *, store: Store, data_dir: Path | None = None
    ) -> None:
        """`data_dir`: where the stored paths of downloaded models are relative to (None: the
        paths are stored and read as given)."""
        self._config = {spec.name: spec for spec in settings.registry}
        self._data_dir = data_dir
        self._config_default = settings.default
        self.max_batch_size = settings.max_batch_size
        self._store = store
        self._store.open()
        self._entries: Mapping[str, Entry] = {}
        self._default = settings.default
        self._synced: Any = object()
        self._lock = threading.RLock()
        self.sync()

    # -- keeping in step with the state file -------------------------------------------------

    def sync(self) -> None:
        """Reconcile the loaded models with config + state file, if the file changed (a stat)."""
        if self._store.version() == self._synced:
            return
        with self._lock:
            version = self._store.version()
            if version == self._synced:
                return
            wanted, default = self._wanted(dict(self._store.records()))
            self._entries = {name: self._realise(name, want) for name, want in wanted.items()}
            self._default = default
            self._synced = version

    def _wanted(self, overlay: Mapping[str, dict[str, Any]]) -> tuple[dict[str, Wanted], str]:
        wanted = {name: Wanted(spec, "loaded", 0, "config") for name, spec in self._config.items()}
        default = self._config_default
        for name, record in sorted(overlay.items()):
            spec = self._config.get(name)
            if record.get("spec") is not None:
                try:
                    spec = parse_section(ModelSpec, record["spec"], origin=f"{STATE_STORE} {name}")
                except ConfigError as exc:
                    log.error("ignoring model %r from %s: %s", name, STATE_STORE, exc)
                    continue
                if self._data_dir is not None:
                    spec = dataclasses.replace(spec, path=resolved_path(spec.path, self._data_dir))
            if spec is None or record.get("state") == "removed":
                wanted.pop(name, None)
                continue
            source = "config" if record.get("spec") is None else "api"
            wanted[name] = Wanted(
                spec, record.get("state", "loaded"), record.get("generation", 0), source
            )
            if record.get("default"):
                default = name
        return wanted, default

    def _realise(self, name: str, want: Wanted) -> Entry:
        current = self._entries.get(name)
        if current is not None and current.satisfies(want):
            return current
        if want.state == "unloaded":
            return Entry(want, "unloaded")
        if want.spec.lazy:
            return Entry(want, "lazy")
        return self._load(want)

    @staticmethod
    def _load(want: Wanted) -> Entry:
        started = time.perf_counter()
        try:
            model = load_model(want.spec)
        except ModelLoadError as exc:
            log.error("model %r failed to load: %s", want.spec.name, exc)
            return Entry(want, "error", error=str(exc))
        model_loaded.send(model.name, seconds=time.perf_counter() - started)
        log.info("model %r loaded (%s, version %s)", model.name, model.backend, model.version)
        return Entry(
            want, "ready", model=model, loaded_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        )

    # -- serving -------------------------------------------------------------------------------

    @property
    def default(self) -> str:
        self.sync()
        return self._default

    def get(self, name: str | None = None, *, listed: Callable[[str], bool] = bool) -> LoadedModel:
        """The ready model `name` (the default if None): 404 if unknown (listing the models
        for which `listed` is true), 503 if not servable."""
        self.sync()
        name = name or self._default
        entry = self._entry(name, listed)
        if entry.status == "lazy":
            entry = self._load_lazily(name)
        if entry.model is not None:
            return entry.model
        if entry.status == "unloaded":
            raise ModelUnavailable(
                f"model {name!r} is unloaded; an admin can load it with POST /models/manage"
            )
        raise ModelUnavailable(f"model {name!r} is not available: {entry.error}")

    def _entry(self, name: str, listed: Callable[[str], bool] = bool) -> Entry:
        entry = self._entries.get(name)
        if entry is None:
            names = sorted(filter(listed, self._entries))
            raise NotFound(f"no model named {name!r}", details={"models": names})
        return entry

    def _load_lazily(self, name: str) -> Entry:
        with self._lock:
            entry = self._entry(name)
            if entry.status == "lazy":
                entry = self._load(entry.wanted)
                self._entries = {**self._entries, name: entry}
            return entry

    def problems(self) -> list[str]:
        """Why a model that should be serving is not, or why model changes cannot be stored
        (for readiness checks); lazy and unloaded models are as they should be."""
        problem = self._store.problem()
        if problem:
            return [problem]
        self.sync()
        found = []
        for name, entry in sorted(self._entries.items()):
            if entry.status == "error":
                found.append(f"model {name!r} failed to load: {entry.error}")
        return found

    def describe(
        self, name: str | None = None, *, listed: Callable[[str], bool] = bool
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """Public view of every model for which `listed` is true, or of one (404 if unknown)."""
        self.sync()
        if name is not None:
            return self._describe(name, self._entry(name, listed))
        return [self._describe(n, e) for n, e in sorted(self._entries.items()) if listed(n)]

    def _describe(self, name: str, entry: Entry) -> dict[str, Any]:
        spec, model = entry.wanted.spec, entry.model
        return {
            "name": name,
            "backend": spec.backend,
            "version": model.version if model else spec.version,
            "status": entry.status,
            "error": entry.error,
            "default": name == self._default,
            "source": entry.wanted.source,
            "description": model.description if model else spec.description,
            "input": (
                model.input
                if model
                else resolve_input(spec.input, shape=None, dtype=spec.input.dtype or "float32")
            ).as_dict(),
            "outputs": model.outputs if model else spec.outputs,
            "loaded_at": entry.loaded_at,
            "lazy": spec.lazy,
            "details": model.details if model else {},
        }

    # -- managing (admin API) --------------------------------------------------------------------

    def manage(self, action: str, name: str) -> dict[str, Any]:
        """Apply an admin action durably (state file) and at once here; returns the model's view."""

        def change(items: Transaction) -> None:
            wanted, default = self._wanted(items)
            if name not in wanted:
                raise NotFound(f"no model named {name!r}", details={"models": sorted(wanted)})
            if action in ("unload", "remove") and name == default:
                raise Conflict(f"{name!r} is the default model; set another default first")
            record = items.setdefault(name, {"spec": None, "state": "loaded", "generation": 0})
            if action == "load":
                record["state"] = "loaded"
            elif action == "unload":
                record["state"] = "unloaded"
            elif action == "reload":
                record.update(state="loaded", generation=record.get("generation", 0) + 1)
            elif action == "remove":
                record["state"] = "removed"
            elif action == "set_default":
                for other in items.values():
                    other.pop("default", None)
                record["default"] = True

        self._store.update(change)
        self.sync()
        if action == "remove":
            return {"name": name, "status": "removed"}
        view = self.describe(name)
        if action in ("load", "reload") and view["status"] == "error":
            raise ModelUnavailable(f"model {name!r} failed to load: {view['error']}")
        return view

    def check_downloadable(self, name: str, destination: Path) -> None:
        """Refuse (409) a download that would replace a model of the config file, by name or by
        file. Config models never change while serving, so checking before the transfer holds."""
        if name in self._config:
            raise Conflict(f"{name!r} is a model from the config file; choose another name")
        target = os.path.realpath(destination)
        if any(os.path.realpath(spec.path) == target for spec in self._config.values()):
            raise Conflict(f"a model of the config file uses the file {name!r} would be saved to")

    def register(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Add (or replace an API-added) model from a spec mapping; persists across restarts.
        A path inside the data dir is stored relative to it."""
        name = spec["name"]
        if self._data_dir is not None:
            spec = {**spec, "path": stored_path(spec["path"], self._data_dir)}

        def change(items: Transaction) -> None:
            wanted, _ = self._wanted(items)
            if name in wanted and wanted[name].source == "config":
                raise Conflict(f"{name!r} is a model from the config file; choose another name")
            record = items.get(name, {})
            items[name] = {
                "spec": spec,
                "state": "loaded",
                "generation": record.get("generation", 0) + 1,
                **({"default": True} if record.get("default") else {}),
            }

        self._store.update(change)
        self.sync()
        return self.describe(name)  # type: ignore[return-value]
