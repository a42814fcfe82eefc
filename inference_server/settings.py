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
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from auth import (
    AuthSettings,
    QuotaSettings,
    RateLimitSettings,
    UsageSettings,
    check_bounds,
    setting,
    shown,
    strong_secret,
)

T = TypeVar("T")
ENV_PREFIX = "INFERENCE_"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "default.yaml"


class ConfigError(Exception):
    """The configuration cannot be used; the message lists every problem found."""


@dataclass(frozen=True)
class ServerSettings:
    host: str = setting("127.0.0.1", help="address to bind; 0.0.0.0 exposes the server")
    port: int = setting(8000, min=1, max=65535, help="TCP port")
    workers: int = setting(1, min=1, max=64, help="gunicorn worker processes")
    worker_connections: int = setting(
        1000, min=1, max=100_000, help="connections one worker holds open at once"
    )
    max_request_mb: float = setting(10, min=0.001, max=1024, help="largest request body")
    max_json_depth: int = setting(
        64, min=2, max=1000, help="deepest nesting of arrays and objects a JSON body may have"
    )
    log_format: Literal["text", "json"] = setting(
        "text", help="server log lines (app and gunicorn alike): text, or one JSON object each"
    )
    access_log: bool = setting(True, help="log a line per request: method, path, status, time")
    trusted_proxies: list[str] = setting(
        factory=list,
        check=lambda v: [ip_network(n, strict=False) for n in v],
        help="reverse proxies (addresses or CIDRs) whose X-Forwarded-For is believed",
    )
    cors_origins: list[str] = setting(
        factory=list,
        check=lambda v: [_cors_origin(o) for o in v],
        help="browser origins allowed to call the API (https://app.example.com); empty = no "
        "CORS headers at all",
    )


def _cors_origin(value: str) -> None:
    if value != "*" and not re.fullmatch(r"https?://[^/\s]+", value):
        raise ValueError("an origin such as https://app.example.com (scheme and host, no path)")


def _redis_url(value: str) -> None:
    if not re.fullmatch(r"rediss?://\S+", value):
        raise ValueError("a URL such as redis://localhost:6379/0 or rediss://:password@host/0")


def _redis_prefix(value: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise ValueError("1-64 letters, digits, '_', '.' or '-'")


@dataclass(frozen=True)
class StorageSettings:
    data_dir: str = setting("data", help="runtime state: JSON stores, locks, secret, audit log")
    lock_timeout_seconds: float = setting(
        10, min=0.01, max=600, help="wait this long for a data file lock, then answer 503"
    )
    audit_max_mb: float = setting(10, min=0.001, help="rotate audit.log beyond this size")
    audit_backups: int = setting(5, min=0, max=100, help="rotated audit logs kept")
    session_sweep_minutes: float = setting(
        10, min=0.01, max=1440, help="how often each worker drops expired and revoked sessions"
    )
    usage_flush_seconds: float = setting(
        5, min=0.1, max=3600, help="how often each worker writes the last use of API keys"
    )
    backend: Literal["json", "redis"] = setting(
        "json", help="json: files in data_dir (one host) | redis: redis_url (many hosts)"
    )
    redis_url: str | None = setting(
        None,
        check=_redis_url,
        secret=True,  # it may hold a password: a refused value is never quoted
        help="redis://[:password@]host:6379/0 or rediss://... (TLS), for backend: redis",
    )
    redis_prefix: str = setting(
        "inference", check=_redis_prefix, help="prefix of every key this server writes in Redis"
    )
    redis_audit_entries: int = setting(
        100_000, min=100, help="audit events kept in Redis (the oldest dropped beyond)"
    )
    redis_stale_seconds: float = setting(
        30,
        min=0,
        max=3600,
        help="with Redis unreachable, reads are served from each process's copy this long "
        "after the last successful sync, then 503",
    )


MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _model_name(value: str) -> None:
    if not MODEL_NAME.match(value):
        raise ValueError("1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")


@dataclass(frozen=True)
class ModelInput:
    shape: list[int | None] | None = setting(
        None,
        help="shape of one sample without the batch dimension; null dims take any size; "
        "null = as the model file declares",
    )
    dtype: Literal["float32", "float64", "int64"] | None = setting(
        None, help="element type the model takes; null = as the model file declares"
    )
    allow_non_finite: bool = setting(False, help="accept NaN and infinity in inputs")


@dataclass(frozen=True)
class ModelSpec:
    name: str = setting(required=True, check=_model_name, help="name in URLs and 'model' fields")
    backend: Literal["builtin", "onnx", "torchscript"] = setting(
        "builtin", help="builtin (NumPy, JSON weights) | onnx | torchscript"
    )
    path: str = setting(required=True, min_len=1, help="model file, relative to the working dir")
    version: str | None = setting(None, help="version reported with each prediction")
    description: str | None = setting(None, help="shown in GET /models")
    input: ModelInput = setting(factory=ModelInput, help="what one input sample must look like")
    outputs: list[str] | None = setting(None, help="names of the outputs, shown in GET /models")
    options: dict[str, Any] = setting(
        factory=dict,
        help="backend options: onnx {input_name, output_name, threads}, torchscript {threads}",
    )
    lazy: bool = setting(False, help="load on first use instead of at start-up")


@dataclass(frozen=True)
class ModelSettings:
    default: str = setting("demo", help="model used by /predict when no 'model' is given")
    registry: list[ModelSpec] = setting(
        factory=lambda: [ModelSpec(name="demo", path="data/models/demo.json")],
        help="models to serve",
    )
    max_batch_size: int = setting(64, min=1, max=100_000, help="most inputs in /predict/batch")
    max_samples_per_request: int = setting(
        100_000, min=1, help="most samples one request may carry (413 beyond)"
    )
    inference_threads: int = setting(
        2,
        min=1,
        max=64,
        help="threads per worker that run predictions off the event loop (they queue beyond)",
    )
    download_max_mb: float = setting(
        500, min=0.001, help="largest model file POST /models/download accepts"
    )
    download_timeout_seconds: float = setting(60, min=1, help="network timeout of a download")
    download_roots: list[str] = setting(
        factory=list, help="folders whose files file:// downloads may read; empty = no file URLs"
    )
    manage_in_simple_mode: bool = setting(
        False,
        help="with auth.enabled: false, allow POST /models/manage and /models/download to anyone "
        "who reaches the port",
    )
    download_allow_hosts: list[str] = setting(
        factory=list,
        help="hosts downloads may reach although they resolve to loopback or private addresses",
    )


@dataclass(frozen=True)
class DocsSettings:
    enabled: bool = setting(
        True, help="serve the API description (GET /openapi.json) and its page (GET /docs)"
    )


@dataclass(frozen=True)
class ConsoleSettings:
    enabled: bool = setting(True, help="serve the web console (GET /console)")


@dataclass(frozen=True)
class JobsSettings:
    enabled: bool = setting(True, help="serve /jobs and run their consumer with the server")
    workers: int = setting(
        1, min=1, max=64, help="threads of the consumer that `python run.py` starts"
    )
    max_samples: int = setting(
        1_000_000, min=1, max=100_000_000, help="most samples (rows) one job may carry"
    )
    max_inputs: int = setting(100_000, min=1, max=10_000_000, help="most inputs one job may carry")
    chunk_inputs: int = setting(
        256, min=1, max=100_000, help="inputs run together; a cancel takes effect between them"
    )
    max_queued_per_user: int = setting(
        10, min=1, max=10_000, help="jobs a user may have queued or running; 429 beyond"
    )
    result_ttl_hours: float = setting(
        168, min=0.01, help="how long a finished job and its result are kept"
    )
    max_result_mb: float = setting(
        1024, min=0.001, help="a job whose result grows beyond this fails (the part done kept)"
    )


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = setting(True, help="serve GET /metrics (Prometheus text) and count for it")
    token: str | None = setting(
        None,
        check=strong_secret,
        secret=True,
        help="a bearer token that may read /metrics (a scraper's own); null: admin scope only",
    )


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = setting(factory=ServerSettings, help="HTTP server")
    auth: AuthSettings = setting(factory=AuthSettings, help="authentication")
    rate_limits: RateLimitSettings = setting(factory=RateLimitSettings, help="rate limiting")
    quotas: QuotaSettings = setting(factory=QuotaSettings, help="usage quotas by tier")
    usage: UsageSettings = setting(factory=UsageSettings, help="usage accounting")
    storage: StorageSettings = setting(factory=StorageSettings, help="data files")
    models: ModelSettings = setting(factory=ModelSettings, help="model registry")
    docs: DocsSettings = setting(factory=DocsSettings, help="interactive API documentation")
    console: ConsoleSettings = setting(factory=ConsoleSettings, help="the web console")
    metrics: MetricsSettings = setting(factory=MetricsSettings, help="Prometheus metrics")
    jobs: JobsSettings = setting(factory=JobsSettings, help="prediction jobs")

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
    layers = [(DEFAULT_CONFIG.name, _read_yaml(DEFAULT_CONFIG))]
    config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file:
        layers.append((str(config_file), _read_yaml(Path(config_file))))
    for name, value in sorted(environ.items()):
        path = _env_path(name)
        if path is not None:
            layers.append((f"env {name}", _nest(path, _parse_env(name, value))))
    if overrides:
        layers.append(("command line", dict(overrides)))
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    errors: list[str] = []
    for origin, layer in layers:
        # Each layer on its own first: a mistake in a file is reported even where a higher
        # layer (an environment variable, say) sets the same key. A rule between keys (a
        # default tier must be a tier) is for the merged settings: one layer may name a tier
        # that another defines.
        _build(Settings, layer, (), {(): origin}, errors, whole=False)
        _merge(merged, layer, origin, origins, ())
    settings = _build(Settings, merged, (), origins, errors)
    if not errors:
        _check_models(settings.models, origins, errors)
        _check_storage(settings.storage, origins, errors)
    if errors:
        unique = list(dict.fromkeys(errors))
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {e}" for e in unique))
    return settings


def parse_section(cls: type[T], data: Any, *, origin: str) -> T:
    """Validate a mapping (say, a model spec sent to the API) as a settings section."""
    errors: list[str] = []
    section = _build(cls, data, (), {(): origin}, errors)
    if errors:
        raise ConfigError("; ".join(errors))
    return section


def _check_storage(storage: StorageSettings, origins, errors: list[str]) -> None:
    if storage.backend == "redis" and not storage.redis_url:
        errors.append(
            f"storage.redis_url ({_origin(origins, ('storage', 'backend'))}): backend redis "
            "needs a URL such as redis://localhost:6379/0"
        )


def _check_models(models: ModelSettings, origins, errors: list[str]) -> None:
    names = [spec.name for spec in models.registry]
    for name in sorted({n for n in names if names.count(n) > 1}):
        errors.append(
            f"models.registry ({_origin(origins, ('models', 'registry'))}): "
            f"the name {name!r} is used more than once"
        )
    if models.default not in names:
        errors.append(
            f"models.default ({_origin(origins, ('models', 'default'))}): "
            f"{models.default!r} is not a name in models.registry "
            f"({_origin(origins, ('models', 'registry'))}; a list in a layer replaces the list "
            "below it whole: list every model you serve there, or set models.default)"
        )


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
    for end in range(len(path), -1, -1):
        if path[:end] in origins:
            return origins[path[:end]]
    return "built-in defaults"


def _build(
    cls: type, data: Any, path: tuple[str, ...], origins, errors: list[str], *, whole: bool = True
) -> Any:
    """`data` as settings class `cls`, what is wrong added to `errors`; `whole`: the settings
    as they will be used (the settings' own checks between keys apply), not one layer."""
    where = ".".join(path) or "top level"
    if not isinstance(data, dict):
        errors.append(f"{where} ({_origin(origins, path)}): expected a mapping, got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    refused_before = len(errors)
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
            values[name] = _convert(
                hints[name], data[name], fld.metadata, sub, origins, errors, whole=whole
            )
        elif fld.metadata.get("required"):
            errors.append(
                f"{'.'.join(sub)} ({_origin(origins, path)}): required; "
                f"expected {_describe(hints[name])}"
            )
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # a value refused above (its field is None), or
        if whole and len(errors) == refused_before:  # one only the settings' own check refuses
            errors.append(f"{where} ({_origin(origins, path)}): {exc}")
        return None


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is dict:
        values = "" if args[1] is Any else f" whose values are each {_describe(args[1])}"
        return "a mapping" + values
    if origin is list:
        return "a list"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, "a mapping")


def _convert(
    tp: Any, value: Any, meta: Mapping[str, Any], path, origins, errors, *, whole: bool = True
) -> Any:
    where = f"{'.'.join(path)} ({_origin(origins, path)})"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, meta, path, origins, errors, whole=whole)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, origins, errors, whole=whole)
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list, got {value!r}")
            return None
        (item,) = args
        value = [
            _convert(item, v, {}, (*path, str(i)), origins, errors, whole=whole)
            for i, v in enumerate(value)
        ]
    elif origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            errors.append(f"{where}: expected {_describe(tp)}, got {shown(value, meta)}")
            return None
        value = {
            k: _convert(args[1], v, {}, (*path, k), origins, errors, whole=whole)
            for k, v in value.items()
        }
    elif not (
        (origin is Literal and value in args)
        or (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    ):
        errors.append(f"{where}: expected {_describe(tp)}, got {shown(value, meta)}")
        return None
    problem = check_bounds(value, meta)
    if problem:
        errors.append(f"{where}: expected {problem}, got {shown(value, meta)}")
        return None
    return float(value) if tp is float else value
