"""The app as gunicorn's workers load it: `gunicorn -k gevent inference_server.wsgi:app`.

Settings come from the usual layers (config/default.yaml, `INFERENCE_CONFIG`, `INFERENCE_*`
variables); `python run.py` sets those so its workers load what it checked before starting.
"""

from __future__ import annotations

import logging

from . import create_app
from .cli import LOG_FORMAT

logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
app = create_app()
app.extensions["auth"].warm()  # indexes built before the first request, not by it
app.extensions["auth"].start_background()  # key use written, ended sessions swept
