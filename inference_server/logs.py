"""One log format for the app, the command line and gunicorn: text or JSON lines.

`server.log_format: text` writes `time [pid] LEVEL logger: message`; `json` writes one object per
line (python-json-logger) with the same fields plus any the line carries (the access log's
method, path, status, duration_ms, user_id, request_id). gunicorn's master and workers use the
same formatter through `worker.Logger`, so an operator reads or parses one shape.

Imports nothing of the app: gunicorn's master loads it before any worker is patched by gevent.
"""

from __future__ import annotations

import logging
import os
import sys

import yaml
from pythonjsonlogger.json import JsonFormatter

TEXT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
FORMAT_VARIABLE = "INFERENCE_SERVER__LOG_FORMAT"


def formatter(kind: str) -> logging.Formatter:
    if kind == "json":
        return JsonFormatter(
            "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    return logging.Formatter(TEXT)


def configured_format() -> str:
    """The format the environment asks for (as `python run.py` passes it to gunicorn)."""
    value = yaml.safe_load(os.environ.get(FORMAT_VARIABLE, "text") or "text")
    return "json" if value == "json" else "text"


def configure(kind: str, *, level: int = logging.INFO) -> None:
    """Send this process's log records to standard error in format `kind`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(kind))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
