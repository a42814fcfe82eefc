"""The app factory: `create_app()` wires settings, auth, models and routes."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response
from flask_cors import CORS

from auth import Auth, AuthState, Storage, open_state, open_storage

from . import access_log, console, docs, health, model_admin, models, predict
from .jobs import routes as jobs
from .jobs.records import jobs_store
from .metrics import views as metrics
from .settings import Settings, load_settings

auth = Auth()

# What a browser on an allowed origin may send and read (`server.cors_origins`).
CORS_REQUEST_HEADERS = ["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"]
CORS_ANSWER_HEADERS = [
    "X-Request-ID",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
    "X-Password-Change-Required",
]


class InferenceServer(Flask):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plain: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Flask's answer, remembered for a plain function while it lives: Flask asks it of
        every hook and view on every request (an `inspect` look at the code object each
        time), and a function's answer never changes. Only the functions Flask hands back as
        they are are remembered, weakly: a wrapper would hold its function, and a function
        made for one request (`after_this_request`) must go with it."""
        try:
            if func in self._plain:
                return func
        except TypeError:  # a callable that takes no weak reference: asked each time
            return super().ensure_sync(func)
        synced = super().ensure_sync(func)
        if synced is func:
            self._plain.add(func)
        return synced

    def make_default_options_response(self) -> Response:
        """An OPTIONS request (a CORS preflight): 204, its answer is all headers."""
        response = super().make_default_options_response()
        response.status_code = 204
        return response


def open_app_storage(settings: Settings, *, maintained: bool = False) -> Storage:
    """The storage backend of these settings, holding the model state's and the jobs' stores
    beside the auth stores. `maintained`: a server worker asks for its upkeep off the requests."""
    config = settings.storage
    storage = open_storage(
        backend=config.backend,
        data_dir=settings.data_dir,
        lock_timeout=config.lock_timeout_seconds,
        maintained=maintained,
        redis_url=config.redis_url,
        redis_prefix=config.redis_prefix,
        redis_stale_seconds=config.redis_stale_seconds,
        audit_max_bytes=int(config.audit_max_mb * 1024 * 1024),
        audit_backups=config.audit_backups,
        redis_audit_entries=config.redis_audit_entries,
    )
    models.state_store(storage)
    jobs_store(storage)
    return storage


def open_auth_state(
    settings: Settings,
    *,
    storage: Storage | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] | None = None,
) -> AuthState:
    """The auth stores for these settings (in `storage`, default the settings' backend); the
    server and the command line both use this."""
    return open_state(
        settings=settings.auth,
        data_dir=settings.data_dir,
        storage=storage or open_app_storage(settings),
        trusted_proxies=settings.server.trusted_proxies,
        rate_limits=settings.rate_limits,
        quotas=settings.quotas,
        usage=settings.usage,
        lock_timeout=settings.storage.lock_timeout_seconds,
        usage_flush_seconds=settings.storage.usage_flush_seconds,
        sweep_seconds=settings.storage.session_sweep_minutes * 60,
        clock=clock,
        sleep=sleep,
    )


def create_app(
    settings: Settings | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] | None = None,
    check_only: bool = False,
    serving: bool = False,
) -> Flask:
    """Build the app from `settings`, or from the config layers plus test `overrides`;
    `clock` and `sleep` let tests control time. `check_only` builds it only to prove that it
    can start (the server's check before its workers): the data files are checked, not
    loaded, and making the default admin and loading the models are left to the workers (so
    that each start-up message is logged once). `serving`: a server worker, which runs the
    storage's upkeep on its background thread (`AuthState.start_background`)."""
    if settings is None:
        settings = load_settings(overrides=overrides)
    app = InferenceServer(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = int(settings.server.max_request_mb * 1024 * 1024)
    app.config["MAX_JSON_DEPTH"] = settings.server.max_json_depth
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["settings"] = settings
    access_log.init_app(app)
    metrics.init_app(app)  # before the models load: their load time is counted
    if settings.server.cors_origins:  # flask-cors: a well-kept implementation of the protocol
        CORS(
            app,
            origins=settings.server.cors_origins,
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_ANSWER_HEADERS,
            max_age=600,
        )
    storage = open_app_storage(settings, maintained=serving)
    auth.init_app(
        app,
        open_auth_state(settings, storage=storage, clock=clock, sleep=sleep),
        default_admin=not check_only,
    )
    if check_only:
        return app
    registry = models.ModelRegistry(
        settings.models, store=models.state_store(storage), data_dir=settings.data_dir
    )
    app.extensions["models"] = registry
    predict.init_app(
        app,
        threads=settings.models.inference_threads,
        max_samples=settings.models.max_samples_per_request,
        metered=settings.metrics.enabled,
    )
    jobs.init_app(app, storage)
    for blueprint in (health.bp, model_admin.bp):
        app.register_blueprint(blueprint)
    docs.init_app(app)
    console.init_app(app)
    return app
