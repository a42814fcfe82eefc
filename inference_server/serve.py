"""Running the server under gunicorn, never Flask's development server.

The app is built once in the master before any worker starts, so a bad config, a corrupt data file
or a weak secret stops the server with one clear message instead of a loop of dying workers.
Workers then build their own app after the fork (no `--preload`): file locks and caches are never
shared across processes.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.app.base import BaseApplication

from . import create_app
from .settings import Settings

log = logging.getLogger(__name__)


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return create_app(self.settings)


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


def serve(settings: Settings) -> None:
    create_app(settings)  # fail fast, in one process, on anything that would stop every worker
    for warning in startup_warnings(settings):
        log.warning(warning)
    server = settings.server
    _Gunicorn(
        settings,
        {
            "bind": f"{server.host}:{server.port}",
            "workers": server.workers,
            # One request at a time per process suits CPU-bound inference and spreads load
            # evenly; threads > 1 switches to threaded workers with HTTP keep-alive.
            "worker_class": "gthread" if server.threads > 1 else "sync",
            "threads": server.threads,
            "timeout": 60,
            "graceful_timeout": 10,
            "preload_app": False,
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "inference-server",
            "control_socket_disable": True,
        },
    ).run()
