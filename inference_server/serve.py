"""Running the server under gunicorn with gevent workers, never Flask's development server.

`serve` builds the app once in this process first, so a bad config, a corrupt data file or a weak
secret stops the server with one clear message instead of a loop of dying workers. It then
replaces itself (exec, same process id) with a plain gunicorn master that imports nothing of
ours: every worker is patched by gevent before it imports the app (`inference_server.wsgi`), so
each module, filelock's per-thread lock state included, sees gevent's primitives. Workers reach
the same settings through the environment: the config file as `INFERENCE_CONFIG`, the server
flags as `INFERENCE_SERVER__*`.

With `metrics.enabled`, the workers count in a directory made fresh here, `metrics/` in the
data dir, named to them (and to the metrics library) by `PROMETHEUS_MULTIPROC_DIR`; gunicorn's
master marks a worker that ended from its `child_exit` hook (`gunicorn_hooks.py`,
`metrics/directory.py`).

Why gevent: a connection that waits (a failed login held back by
`auth.failed_login_delay_seconds`, a slow client) costs a greenlet, not a process, so a flood of
logins cannot occupy the workers that predictions need; password hashing runs on real threads
(see `auth.limits.PasswordGate`). Connections close after each response, as with synchronous
workers: every request is accepted by whichever worker is free, so CPU-bound inference spreads
evenly and no client's connection stays pinned to a busy process.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import NoReturn

from .app import create_app
from .gunicorn_hooks import CONSUMER
from .metrics import directory as metrics_directory
from .settings import ENV_PREFIX, Settings

log = logging.getLogger(__name__)


def startup_warnings(settings: Settings) -> list[str]:
    """What an operator should know before the first request."""
    warnings = []
    if settings.server.workers > 1 and settings.rate_limits.storage_uri.startswith("memory://"):
        warnings.append(
            f"rate_limits.storage_uri is memory:// with {settings.server.workers} workers: each "
            "worker counts on its own, so a user may get up to workers x the limit; use "
            "redis://... to share the counters"
        )
    if not settings.auth.enabled:
        warnings.append(
            "AUTHENTICATION IS DISABLED (auth.enabled: false): every route is open to anyone "
            "who can reach this server"
        )
    return warnings


def gunicorn_command(settings: Settings) -> list[str]:
    server = settings.server
    return [
        sys.executable,
        "-m",
        "gunicorn",
        f"--bind={server.host}:{server.port}",
        f"--workers={server.workers}",
        "--worker-class=inference_server.worker.Worker",
        f"--worker-connections={server.worker_connections}",
        "--keep-alive=0",
        "--timeout=60",
        "--graceful-timeout=10",
        "--error-logfile=-",
        "--logger-class=inference_server.worker.Logger",
        "--log-level=info",
        "--name=inference-server",
        "--no-control-socket",
        "--config=python:inference_server.gunicorn_hooks",
        "inference_server.wsgi:app",
    ]


def worker_environment(settings: Settings, config_file: str | None) -> dict[str, str]:
    """This environment plus what makes the workers load exactly `settings`."""
    env = dict(os.environ)
    if config_file:
        env[f"{ENV_PREFIX}CONFIG"] = str(Path(config_file).resolve())
    server = settings.server
    for key in ("host", "port", "workers", "log_format"):
        env[f"{ENV_PREFIX}SERVER__{key.upper()}"] = json.dumps(getattr(server, key))  # JSON is YAML
    env.pop(metrics_directory.ENV, None)
    env.pop(CONSUMER, None)
    if settings.jobs.enabled:
        env[CONSUMER] = "1"
    if settings.metrics.enabled:
        env[metrics_directory.ENV] = str(metrics_dir(settings))
    return env


def metrics_dir(settings: Settings) -> Path:
    return settings.data_dir / "metrics"


class PortUnavailable(Exception):
    """The address to serve on cannot be bound (in use, or not ours to bind)."""


def check_address(host: str, port: int) -> None:
    """Bind and let go of host:port as gunicorn will (SO_REUSEADDR), so that a port in use is
    one clear line here instead of gunicorn retrying for seconds."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise PortUnavailable(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def serve(settings: Settings, *, config_file: str | None = None) -> NoReturn:
    # Fail fast, in one process, on anything that would stop every worker.
    create_app(settings, check_only=True)
    check_address(settings.server.host, settings.server.port)
    if settings.metrics.enabled:
        metrics_directory.prepare(metrics_dir(settings))
    for warning in startup_warnings(settings):
        log.warning(warning)
    command = gunicorn_command(settings)
    os.execve(command[0], command, worker_environment(settings, config_file))
