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
import time
from datetime import datetime, timezone

import yaml
from pythonjsonlogger.json import JsonFormatter

TEXT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
FORMAT_VARIABLE = "INFERENCE_SERVER__LOG_FORMAT"


class JsonLines(JsonFormatter):
    """One JSON object per line, its time in ISO 8601 UTC (`2026-12-02T07:30:00.123Z`)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        moment = datetime.fromtimestamp(record.created, timezone.utc)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def formatter(kind: str) -> logging.Formatter:
    if kind == "json":
        return JsonLines(
            "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    return TextLines(TEXT)


class TextLines(logging.Formatter):
    """`logging.Formatter`, formatting each second's date and time once, not once a line."""

    _second, _stamp = -1, ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = (
                second,
                time.strftime(self.default_time_format, self.converter(record.created)),
            )
        return f"{self._stamp},{int(record.msecs):03d}"


def configured_format() -> str:
    """The format the environment asks for (as `python run.py` passes it to gunicorn)."""
    value = yaml.safe_load(os.environ.get(FORMAT_VARIABLE, "text") or "text")
    return "json" if value == "json" else "text"


ACCESS = logging.getLogger("inference_server.access")


class Batched(logging.StreamHandler):
    """Writes its lines in batches: at most `lines` at once, none held longer than `seconds`
    (checked at each line, and by `flush`, which a worker calls on a timer).

    For the access log, a line per request: one write per line cost a tenth of the server's
    throughput in a benchmark (the system call, and whoever reads the pipe, compete with the
    requests for the CPU); a batch costs one write for many lines."""

    def __init__(self, stream, *, lines: int = 64, seconds: float = 0.5) -> None:
        super().__init__(stream)
        self._lines, self._seconds = lines, seconds
        self._pending: list[str] = []
        self._oldest = 0.0

    def emit(self, record: logging.LogRecord) -> None:  # called under self.lock
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        created = record.created
        if not self._pending:
            self._oldest = created
        self._pending.append(text)
        if len(self._pending) >= self._lines or created - self._oldest >= self._seconds:
            self._write()

    def flush(self) -> None:
        with self.lock:
            self._write()

    def _write(self) -> None:
        if self._pending:
            self.stream.write("\n".join(self._pending) + "\n")
            self._pending.clear()
        self.stream.flush()


def configure(kind: str, *, level: int = logging.INFO) -> None:
    """Send this process's log records to standard error in format `kind`; the access log's
    in batches (`Batched`)."""
    # Nothing we write names the thread or process by name: skip gathering them per record
    # (the logging documentation's own advice for speed).
    logging.logThreads = logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # Python 3.12 and later
    shared = formatter(kind)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(shared)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    batched = Batched(sys.stderr)
    batched.setFormatter(shared)
    ACCESS.handlers[:] = [batched]
    ACCESS.propagate = False


def flush_access() -> None:
    for handler in ACCESS.handlers:
        handler.flush()
