"""The floor: the least a Flask app can do per request for what this server's pipeline must do.

Bare Flask serving the demo model, plus the parts SPEC asks of every authenticated prediction,
each written the plainest way with the design card's libraries and nothing else: no user
records, no scopes, no validation beyond bare Flask's, no usage ledger.

- an API key (`X-API-Key`, the value of `PEER_API_KEY`) found by its SHA-256 in a dict;
- the per-user budget counted by the `limits` engine flask-limiter builds on (its sliding window
  counter strategy over memory storage, called directly: none of flask-limiter's own
  per-request hooks), its window read for the headers;
- `X-Request-ID` (echoed or made) and `X-RateLimit-Limit/Remaining/Reset` set in one
  `after_request` hook;
- a request counter and a latency histogram (prometheus-client, one process's registry: less
  than gunicorn's multiprocess mode costs);
- one access line through `logging`, with this server's own formatter and batched handler.

No real server can do less for these parts on Flask's dispatch, so its figure bounds what any
one-pipeline implementation of them can reach against bare Flask (`peers.py --floor`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
import time
from pathlib import Path

from flask import Flask, Response, g, request
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter
from model import predict
from prometheus_client import Counter, Histogram

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from inference_server import logs  # noqa: E402  (the server's own log format and handler)

KEY = os.environ.get("PEER_API_KEY") or f"sk_live_{secrets.token_hex(16)}"
OWNERS = {hashlib.sha256(KEY.encode()).hexdigest(): "usr_floor"}
BUDGET = parse("1000000/minute")
COUNTER = SlidingWindowCounterRateLimiter(MemoryStorage())
REQUESTS = Counter("floor_requests", "Requests answered", ["route", "status"])
LATENCY = Histogram("floor_latency_seconds", "Request latency", ["model"])

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
    return None


@app.after_request
def finish(response: Response) -> Response:
    headers, window = response.headers, g.get("window")
    headers["X-Request-ID"] = request.headers.get("X-Request-ID") or secrets.token_hex(16)
    if window is not None:
        headers["X-RateLimit-Limit"] = str(BUDGET.amount)
        headers["X-RateLimit-Remaining"] = str(window.remaining)
        headers["X-RateLimit-Reset"] = str(int(window.reset_time))
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
