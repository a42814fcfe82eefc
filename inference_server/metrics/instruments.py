"""What the server counts, and the one place each count comes from.

- `inference_http_requests_total{method, route, status}`: every answer of the app, from
  Flask's `request_finished` (the status its client gets);
- `inference_prediction_seconds{model}` (histogram), `inference_prediction_samples_total{model}`
  and `inference_predictions_in_flight` (summed over live workers): from `Inference.timed`, the
  one place every prediction runs (the time the usage ledger adds up);
- `inference_auth_failures_total{reason}` (each 401 and 403) and
  `inference_limit_rejections_total{reason}` (each 429: rate limit, quota, concurrency), by error
  code: from the extension's `error_answered`, sent by its one error handler;
- `inference_store_write_seconds{store}` (histogram): each change made durable, from the
  storage's `store_written`;
- `inference_job_seconds{status}` (histogram): each job's run, counted by the consumer as it
  ends, and `inference_jobs{status}`: the jobs in each state, read from their store at each
  scrape (`jobs/routes.py`);
- `inference_model_load_seconds{model}`: the last load of each model (the slowest over live
  workers), from the registry's `model_loaded`.

Label values come from sets the server bounds, never from what a client sends or who it is: a
route is the URL rule (`/<model_name>/predict`), not the path; an unknown method is `OTHER`; a
model is one the registry serves (a prediction of any other never runs); reasons are error
codes; stores are the server's own. No user, key or address is a label: those are in the usage
ledger (`/auth/usage`, `/admin/usage`).
"""

from __future__ import annotations

import functools
from typing import Any

from flask import Flask, Response, request, request_finished
from prometheus_client import Counter, Gauge, Histogram, values

from auth import error_answered, store_written, this_pid

from ..models import model_loaded

UNMATCHED = "<unmatched>"  # the route of a request no URL rule matched (404, 405)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# From a tenth of a millisecond (a small model inline) to half a minute (a large batch).
PREDICTION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                      0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # fmt: skip
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

# The library's multiprocess values ask the process id on every write (six a prediction) to
# notice a fork; it takes the asking as `MultiProcessValue(process_identifier)`: ours, kept.
if getattr(values.ValueClass, "_multiprocess", False):  # PROMETHEUS_MULTIPROC_DIR is set
    values.ValueClass = values.MultiProcessValue(this_pid)  # before any metric is made

REQUESTS = Counter(
    "inference_http_requests",
    "HTTP requests answered, by method, route (the URL rule) and status",
    ["method", "route", "status"],
)
PREDICTION_SECONDS = Histogram(
    "inference_prediction_seconds",
    "Time a model took to answer one prediction call (inference only)",
    ["model"],
    buckets=PREDICTION_BUCKETS,
)
PREDICTION_SAMPLES = Counter(
    "inference_prediction_samples", "Samples (input rows) given to each model", ["model"]
)
IN_FLIGHT = Gauge(
    "inference_predictions_in_flight",
    "Predictions running now, over all live workers",
    multiprocess_mode="livesum",
)
AUTH_FAILURES = Counter(
    "inference_auth_failures",
    "Requests refused for their credentials (401) or permissions (403), by error code",
    ["reason"],
)
REJECTIONS = Counter(
    "inference_limit_rejections",
    "Requests refused by a rate limit, quota or concurrency limit (429), by error code",
    ["reason"],
)
STORE_WRITE_SECONDS = Histogram(
    "inference_store_write_seconds",
    "Time to make one change durable (a journal append and fsync, or a Redis commit)",
    ["store"],
    buckets=WRITE_BUCKETS,
)
JOB_SECONDS = Histogram(
    "inference_job_seconds",
    "Time a job ran, from its start to its end, by how it ended",
    ["status"],
    buckets=(1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0),
)
MODEL_LOAD_SECONDS = Gauge(
    "inference_model_load_seconds",
    "Seconds the last load of each model took (the slowest over live workers)",
    ["model"],
    multiprocess_mode="livemax",
)


def init_app(app: Flask) -> None:
    request_finished.connect(_answered, app)
    for signal, receiver in (
        (error_answered, _refused),
        (store_written, _written),
        (model_loaded, _loaded),
    ):
        signal.connect(receiver)  # once per process: connecting again changes nothing


def predicted(model: str, seconds: float, samples: int) -> None:
    """A call of `model` on `samples` samples took `seconds`."""
    histogram, counter = _prediction(model)
    histogram.observe(seconds)
    counter.inc(samples)


@functools.lru_cache(maxsize=4096)
def _request(method: str, route: str, status: int) -> Any:
    return REQUESTS.labels(method, route, str(status))


@functools.lru_cache(maxsize=1024)
def _prediction(model: str) -> tuple[Any, Any]:
    return PREDICTION_SECONDS.labels(model), PREDICTION_SAMPLES.labels(model)


def _answered(sender: Flask, response: Response, **extra: Any) -> None:
    req = request._get_current_object()
    rule = req.url_rule
    method = req.method if req.method in METHODS else "OTHER"
    _request(method, rule.rule if rule is not None else UNMATCHED, response.status_code).inc()


def _refused(sender: Flask, *, code: str, status: int, **extra: Any) -> None:
    if status in (401, 403):
        AUTH_FAILURES.labels(code).inc()
    elif status == 429:
        REJECTIONS.labels(code).inc()


def _written(store: str, *, seconds: float, **extra: Any) -> None:
    STORE_WRITE_SECONDS.labels(store).observe(seconds)


def _loaded(model: str, *, seconds: float, **extra: Any) -> None:
    MODEL_LOAD_SECONDS.labels(model).set(seconds)
