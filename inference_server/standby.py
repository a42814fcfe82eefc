"""A worker that cannot load its data stays up, answers 503, and tries again after a repair.

gunicorn halts the whole server when a worker fails to boot. `python run.py` checks every data
file before the first worker starts, so a worker meets a broken file only when it starts later:
gunicorn recycled it, or it died, after a store was broken by hand or by the disk. Failing that
boot would turn one bad file into an outage of every worker, the ones still serving their last
good copy included. Such a worker serves `Standby` instead: `/health` answers (the process is
alive), every other route answers 503 SERVICE_UNAVAILABLE saying what could not be loaded (file
names, never the server's paths), `/ready` included, so a load balancer takes it out of rotation.
Nothing is served from a partial copy, so no credential that the broken file would refuse gets
in. Whenever a file in the data dir changes (a stat of each per request, only while standing by),
the worker tries again, so the operator's repair brings it into service without a restart. A
storage that could not be reached (Redis down) is no file to repair: the worker tries again every
`RETRY_SECONDS` as well.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flask import Flask, request

from auth import (
    ApiError,
    SecretError,
    StorageUnavailable,
    StoreCorrupt,
    init_error_handlers,
    stamp,
)

from . import health

log = logging.getLogger(__name__)

# What a worker's start may meet in the data dir; anything else (a bug, a bad config) still
# stops it, as gunicorn would.
DATA_FAULTS = (StoreCorrupt, SecretError, ApiError, OSError)

App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
RETRY_SECONDS = 5.0  # how often a worker whose storage was unreachable tries again


def _fingerprint(directory: Path) -> tuple[Any, ...]:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
        return tuple((e.name, e.inode(), e.stat().st_mtime_ns, e.stat().st_size) for e in entries)
    except OSError as exc:
        return (type(exc).__name__,)


def start(
    build: Callable[[], Flask], data_dir: Path, *, clock: Callable[[], float] = time.monotonic
) -> App:
    """The app `build` makes, or a `Standby` in its place if the data dir does not let it."""
    try:
        return build()
    except DATA_FAULTS as exc:
        return Standby(build, data_dir, exc, clock=clock)


class Standby:
    """The WSGI app of a worker whose data could not be loaded (see the module docstring)."""

    def __init__(
        self,
        build: Callable[[], Flask],
        data_dir: Path,
        fault: BaseException,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._build = build
        self._data_dir = data_dir
        self._clock = clock
        self._trying = threading.Lock()
        self._app: Flask | None = None
        self._standing_by(fault)

    def _standing_by(self, fault: BaseException) -> None:
        self._seen = _fingerprint(self._data_dir)
        transient = isinstance(fault, StorageUnavailable)
        self._retry_at = self._clock() + RETRY_SECONDS if transient else None
        until = f"trying again every {RETRY_SECONDS:g} s" if transient else "the data dir changes"
        detail = str(getattr(fault, "description", None) or fault)
        log.error("this worker cannot serve: %s; answering 503 until %s", detail, until)
        reason = detail.replace(f"{self._data_dir}{os.sep}", "").replace(str(self._data_dir), "")
        remedy = "it is tried again shortly" if transient else "an operator must repair it"
        self._standby = _standby_app(f"this worker could not load its data ({reason}); {remedy}")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        app = self._app or self._retry()
        return (app or self._standby)(environ, start_response)

    def _retry(self) -> Flask | None:
        due = self._retry_at is not None and self._clock() >= self._retry_at
        if not due and _fingerprint(self._data_dir) == self._seen:
            return None
        if not self._trying.acquire(blocking=False):
            return None
        try:
            if self._app is None:
                self._app = self._build()
        except DATA_FAULTS as exc:
            self._standing_by(exc)
        finally:
            self._trying.release()
        return self._app


def _stamped(response):
    stamp(response)
    return response


def _standby_app(reason: str) -> Flask:
    app = Flask(__name__, static_folder=None)
    init_error_handlers(app)
    app.after_request(_stamped)
    app.register_blueprint(health.bp)

    @app.before_request
    def refuse() -> None:
        if request.path != "/health":
            raise health.NotReady(reason, headers={"Retry-After": "30"})

    return app
