"""The app as gunicorn's workers load it (`-k inference_server.worker.Worker ...wsgi:app`).

Settings come from the usual layers (config/default.yaml, `INFERENCE_CONFIG`, `INFERENCE_*`
variables); `python run.py` sets those so its workers load what it checked before starting. A
worker that meets a broken data file stands by instead of halting the server (`standby.py`).
"""

from __future__ import annotations

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
    log.info("this worker is serving")
    return app


app = standby.start(serving_app, settings.data_dir)
