"""Settings: YAML layers and environment overrides validated into frozen dataclasses.

Layers, lowest first: the dataclass defaults, `config/default.yaml`, the file given with
`--config` (or `INFERENCE_CONFIG`), then `INFERENCE_<SECTION>__<KEY>` environment variables whose
values are parsed as YAML, then command-line flags (or a test's mapping). Every leaf remembers
which layer set it, so an error names the key, the file (or variable) it came from and what was
expected. Unknown keys are errors: a typo must never
be silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from limits import parse_many

from auth.config import AuthSettings, setting

ENV_PREFIX = "INFERENCE_"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "default.yaml"


class ConfigError(Exception):
    """The configuration cannot be used; the message lists every problem found."""


def _rate_limit(value: str) -> None:
    try:
        parse_many(value)
    except ValueError:
        raise ValueError("a rate limit such as '100/minute' or '10 per second'") from None


@dataclass(frozen=True)
class ServerSettings:
    host: str = setting("127.0.0.1", help="address to bind; 0.0.0.0 exposes the server")
    port: int = setting(8000, min=1, max=65535, help="TCP port")
    workers: int = setting(1, min=1, max=64, help="gunicorn worker processes")
    threads: int = setting(4, min=1, max=64, help="threads per worker process")
    max_request_mb: float = setting(10, min=0.001, max=1024, help="largest request body")


@dataclass(frozen=True)
class RateLimitSettings:
    storage_uri: str = setting("memory://", help="flask-limiter storage; redis://... to share")
    roles: dict[str, str] = setting(
        factory=lambda: {"admin": "1000/minute"},
        check=lambda roles: [_rate_limit(v) for v in roles.values()],
        help="per-role limit replacing auth.rate_limit_per_minute",
    )
    login: str = setting("10/minute", check=_rate_limit, help="per client address, /auth/login")


@dataclass(frozen=True)
class StorageSettings:
    data_dir: str = setting("data", help="runtime state: JSON stores, locks, secret, audit log")
    lock_timeout_seconds: float = setting(
        10, min=0.01, max=600, help="wait this long for a data file lock, then answer 503"
    )


@dataclass(frozen=True)
class ModelSpec:
    name: str = setting(required=True, min_len=1, help="name used in URLs and the 'model' field")
    backend: Literal["builtin"] = setting("builtin", help="how the model file is loaded")
    path: str = setting(required=True, min_len=1, help="model file, relative to the working dir")
    version: str | None = setting(None, help="version reported with each prediction")


@dataclass(frozen=True)
class ModelSettings:
    default: str = setting("demo", help="model used by /predict when no 'model' is given")
    registry: list[ModelSpec] = setting(
        factory=lambda: [ModelSpec(name="demo", path="data/models/demo.json")],
        help="models to load at start-up",
    )


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = setting(factory=ServerSettings, help="HTTP server")
    auth: AuthSettings = setting(factory=AuthSettings, help="authentication")
    rate_limits: RateLimitSettings = setting(factory=RateLimitSettings, help="rate limiting")
    storage: StorageSettings = setting(factory=StorageSettings, help="data files")
    models: ModelSettings = setting(factory=ModelSettings, help="model registry")

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir).resolve()


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the effective settings from all layers; `overrides` (flags, tests) win over all."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    _merge(merged, _read_yaml(DEFAULT_CONFIG), DEFAULT_CONFIG.name, origins, ())
    config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file:
        _merge(merged, _read_yaml(Path(config_file)), str(config_file), origins, ())
    for name, value in sorted(environ.items()):
        path = _env_path(name)
        if path is not None:
            _merge(merged, _nest(path, _parse_env(name, value)), f"env {name}", origins, ())
    if overrides:
        _merge(merged, dict(overrides), "command line", origins, ())
    errors: list[str] = []
    settings = _build(Settings, merged, (), origins, errors)
    if errors:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {e}" for e in errors))
    return settings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections at the top level")
    return data


def _env_path(name: str) -> tuple[str, ...] | None:
    if not name.startswith(ENV_PREFIX) or "__" not in name:
        return None
    return tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))


def _parse_env(name: str, value: str) -> Any:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise ConfigError(f"environment variable {name}: value is not valid YAML") from None


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for key in reversed(path):
        value = {key: value}
    return value


def _merge(
    into: dict[str, Any],
    layer: dict[str, Any],
    origin: str,
    origins: dict[tuple[str, ...], str],
    prefix: tuple[str, ...],
) -> None:
    for key, value in layer.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, origin, origins, path)
        else:
            into[key] = value
        _mark(origins, path, value, origin)


def _mark(origins: dict[tuple[str, ...], str], path: tuple[str, ...], value: Any, origin: str):
    origins[path] = origin
    if isinstance(value, dict):
        for key, sub in value.items():
            _mark(origins, (*path, str(key)), sub, origin)


def _origin(origins: dict[tuple[str, ...], str], path: tuple[str, ...]) -> str:
    for end in range(len(path), 0, -1):
        if path[:end] in origins:
            return origins[path[:end]]
    return "built-in defaults"


def _build(cls: type, data: Any, path: tuple[str, ...], origins, errors: list[str]) -> Any:
    where = ".".join(path) or "top level"
    if not isinstance(data, dict):
        errors.append(f"{where} ({_origin(origins, path)}): expected a mapping, got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            errors.append(
                f"{'.'.join((*path, str(key)))} ({_origin(origins, (*path, str(key)))}): "
                f"unknown key; expected one of: {known}"
            )
    values = {}
    for name, fld in fields.items():
        sub = (*path, name)
        if name in data:
            values[name] = _convert(hints[name], data[name], fld.metadata, sub, origins, errors)
        elif fld.metadata.get("required"):
            errors.append(
                f"{'.'.join(sub)} ({_origin(origins, path)}): required; "
                f"expected {_describe(hints[name])}"
            )
    try:
        return cls(**values)
    except TypeError:
        return None


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if origin is dict:
        return "a mapping of names to strings"
    if origin is list:
        return "a list"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, "a mapping")


def _convert(tp: Any, value: Any, meta: Mapping[str, Any], path, origins, errors) -> Any:
    where = f"{'.'.join(path)} ({_origin(origins, path)})"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, meta, path, origins, errors)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, origins, errors)
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list, got {value!r}")
            return None
        (item,) = args
        return [
            _convert(item, v, {}, (*path, str(i)), origins, errors) for i, v in enumerate(value)
        ]
    ok = (
        (origin is Literal and value in args)
        or (
            origin is dict
            and isinstance(value, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        )
        or (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        errors.append(f"{where}: expected {_describe(tp)}, got {value!r}")
        return None
    problem = _check_bounds(value, meta)
    if problem:
        errors.append(f"{where}: expected {problem}, got {value!r}")
        return None
    return float(value) if tp is float else value


def _check_bounds(value: Any, meta: Mapping[str, Any]) -> str | None:
    if "min" in meta and value < meta["min"]:
        return f"a value >= {meta['min']}"
    if "max" in meta and value > meta["max"]:
        return f"a value <= {meta['max']}"
    if "min_len" in meta and len(value) < meta["min_len"]:
        return f"at least {meta['min_len']} character(s)"
    if "check" in meta:
        try:
            meta["check"](value)
        except ValueError as exc:
            return str(exc)
    return None
