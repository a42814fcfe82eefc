"""The floor: bare Flask plus the parts of this server's pipeline, each done the plainest way.

Bare Flask serving the demo model, plus the parts SPEC asks of every authenticated prediction,
each written the plainest way with the design card's libraries and nothing else: no user
records, no scopes, no validation beyond bare Flask's, no usage ledger, no error shape.

- an API key (`X-API-Key`, the value of `PEER_API_KEY`) found by its SHA-256 in a dict;
- the per-user budget counted by the `limits` engine flask-limiter builds on (its sliding window
  counter strategy over memory storage, called directly: none of flask-limiter's own
  per-request hooks), its window read for the headers;
- `X-Request-ID` (echoed or made) and `X-RateLimit-Limit/Remaining/Reset` set in one
  `after_request` hook;
- a request counter and a latency histogram (prometheus-client, one process's registry: less
  than gunicorn's multiprocess mode costs);
- one access line through `logging`, with this server's own formatter and batched handler.

A real server does all of this and more, so the floor's figure against bare Flask is a yardstick
for any one-pipeline implementation of these parts (`peers.py --floor`). It is not a proof:
a part can be done cheaper than its plainest form (this server counts the budget in one pass,
not the strategy's two calls), but not by the margin between the floor and SPEC's targets.

With `PEER_ACCOUNTING=1`, the plainest it can do for usage accounting, quotas and per-key limits
as well (`instructions.py`'s `floor-acct`): the key's own rate (a second window), its model
allowlist (`fnmatch`), a slot of its `max_concurrent` (a `flock` on a file kept open), the
user's day counts read from a dict for the IETF `RateLimit-Policy`/`RateLimit` fields and
added to after the answer (the ledger), samples and in-flight metrics.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import sys
import tempfile
import time
from fnmatch import fnmatchcase
from pathlib import Path

from flask import Flask, Response, g, request
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter
from model import predict
from prometheus_client import Counter, Gauge, Histogram

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from inference_server import logs  # noqa: E402  (the server's own log format and handler)

KEY = os.environ.get("PEER_API_KEY") or f"sk_live_{secrets.token_hex(16)}"
OWNERS = {hashlib.sha256(KEY.encode()).hexdigest(): "usr_floor"}
BUDGET = parse("1000000/minute")
COUNTER = SlidingWindowCounterRateLimiter(MemoryStorage())
REQUESTS = Counter("floor_requests", "Requests answered", ["route", "status"])
LATENCY = Histogram("floor_latency_seconds", "Request latency", ["model"])
ACCOUNTING = os.environ.get("PEER_ACCOUNTING") == "1"
KEY_BUDGET = parse("1000000/minute")
MODELS = ("demo", "churn-*")
SLOT = os.open(tempfile.mkstemp(prefix="floor-slot-")[1], os.O_RDWR)
DAY_QUOTA = 10**12
USED: dict[str, list[int]] = {}  # user -> [requests, samples] today
SAMPLES = Counter("floor_samples", "Samples predicted", ["model"])
IN_FLIGHT = Gauge("floor_in_flight", "Predictions in flight")

logs.configure("text")
app = Flask(__name__)


@app.before_request
def authenticate():
    g.started = time.perf_counter()
    owner = OWNERS.get(hashlib.sha256(request.headers.get("X-API-Key", "").encode()).hexdigest())
    if owner is None:
        return {"error": "a valid X-API-Key is required"}, 401
    g.owner = owner
    if not COUNTER.hit(BUDGET, owner):
        return {"error": "rate limit exceeded"}, 429
    g.window = COUNTER.get_window_stats(BUDGET, owner)
    if ACCOUNTING:
        return account(owner)
    return None


def account(owner: str):
    """The accounting parts, before the model runs."""
    if not COUNTER.hit(KEY_BUDGET, "key", owner):
        return {"error": "the key's rate limit is exceeded"}, 429
    key_window = COUNTER.get_window_stats(KEY_BUDGET, "key", owner)
    if key_window.remaining < g.window.remaining:
        g.window = key_window
    if not any(fnmatchcase("demo", pattern) for pattern in MODELS):
        return {"error": "this key may not call demo"}, 403
    used = USED.setdefault(owner, [0, 0])
    if used[0] + 1 > DAY_QUOTA:
        return {"error": "quota exceeded"}, 429
    g.quota = (
        f'"requests_per_day";q={DAY_QUOTA};w=86400',
        f'"requests_per_day";r={DAY_QUOTA - used[0] - 1};t=3600',
    )
    fcntl.flock(SLOT, fcntl.LOCK_EX | fcntl.LOCK_NB)
    g.slot = True
    IN_FLIGHT.inc()
    return None


@app.teardown_request
def release(_exc):
    if g.pop("slot", False):
        fcntl.flock(SLOT, fcntl.LOCK_UN)
        IN_FLIGHT.dec()


@app.after_request
def finish(response: Response) -> Response:
    headers, window = response.headers, g.get("window")
    headers["X-Request-ID"] = request.headers.get("X-Request-ID") or secrets.token_hex(16)
    if window is not None:
        headers["X-RateLimit-Limit"] = str(BUDGET.amount)
        headers["X-RateLimit-Remaining"] = str(window.remaining)
        headers["X-RateLimit-Reset"] = str(int(window.reset_time))
    quota = g.get("quota")
    if quota is not None:
        headers["RateLimit-Policy"], headers["RateLimit"] = quota
        used = USED[g.owner]
        used[0] += 1
        used[1] += 1
        SAMPLES.labels("demo").inc(1)
    elapsed = time.perf_counter() - g.started
    REQUESTS.labels(request.path, str(response.status_code)).inc()
    LATENCY.labels("demo").observe(elapsed)
    logs.ACCESS.info(
        "%s %s %s %.2fms user=%s",
        request.method,
        request.path,
        response.status_code,
        elapsed * 1000,
        g.get("owner", "-"),
    )
    return response


@app.post("/predict")
def predict_view():
    return predict(request.get_json(silent=True))
