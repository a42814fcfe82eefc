"""The app as gunicorn's workers load it (`-k inference_server.worker.Worker ...wsgi:app`).

Settings come from the usual layers (config/default.yaml, `INFERENCE_CONFIG`, `INFERENCE_*`
variables); `python run.py` sets those so its workers load what it checked before starting. A
worker that meets a broken data file stands by instead of halting the server (`standby.py`).
A worker that stops (gunicorn lets its process exit, on SIGTERM, SIGINT or SIGQUIT) folds each
journal into its snapshot on its way out (`stop`), so a stopped data dir reads as whole JSON
documents an operator can edit; a worker killed outright leaves the journals to the next start.
"""

from __future__ import annotations

import atexit
import logging

from flask import Flask

from auth import run_every

from . import logs, standby
from .app import create_app
from .settings import load_settings

logs.configure(logs.configured_format())  # until the settings say otherwise
log = logging.getLogger(__name__)
settings = load_settings()
logs.configure(settings.server.log_format)


def serving_app() -> Flask:
    app = create_app(settings, serving=True)
    app.extensions["auth"].warm()  # indexes built before the first request, not by it
    app.extensions["auth"].start_background()  # key use written, ended sessions swept
    run_every(0.5, logs.flush_access, name="access-log")  # a quiet server's lines too
    atexit.register(stop, app)
    log.info("this worker is serving")
    return app


def stop(app: Flask) -> None:
    """This worker's last act: the key use and usage it counted are written, then every
    journal that holds a change is folded into its snapshot. Workers stopping together take
    turns under each store's lock: the first folds, the others find nothing left to do."""
    state = app.extensions["auth"]
    try:
        state.flush()
        folded = state.storage.shutdown()
    except Exception as exc:  # the exit goes on: what was not folded stays in its journal
        log.warning("at exit: %s", getattr(exc, "description", None) or exc)
        return
    if folded:
        log.info("at exit: folded %s", ", ".join(folded))


app = standby.start(serving_app, settings.data_dir)
