"""GET /health (liveness) and GET /ready (readiness), reachable without credentials.

`/health` says the process answers. `/ready` says this worker can do its work: every model that
should be serving is loaded, every store can be read and written, and the rate limit storage
(Redis, when configured) answers. A load balancer takes a worker that is not ready out of
rotation; the 503 says which part is not, with no secret in it (never a storage URI).
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from auth import auth_state, public
from auth.errors import ApiError
from auth.limits import exempt
from auth.openapi import doc

from . import schemas
from .predict import registry

bp = Blueprint("health", __name__)


class NotReady(ApiError):
    code, error_code = 503, "SERVICE_UNAVAILABLE"


@bp.get("/health")
@doc("Liveness: the process answers", responses={200: schemas.HEALTH})
@public
@exempt
def health():
    return jsonify({"status": "ok"})


@bp.get("/ready")
@doc(
    "Readiness: models loaded, stores readable and writable, rate limit storage up",
    responses={200: schemas.READY},
    errors=(503,),
)
@public
@exempt
def ready():
    checks = {
        "storage": auth_state().storage_problems(),
        "models": registry().problems(),
        "rate_limits": _rate_limit_problems(),
    }
    failing = {part: problems for part, problems in checks.items() if problems}
    if failing:
        raise NotReady(
            f"not ready: {'; '.join(p for problems in failing.values() for p in problems)}",
            details=failing,
            headers={"Retry-After": "5"},
        )
    return jsonify({"status": "ready", "checks": {part: "ok" for part in checks}})


def _rate_limit_problems() -> list[str]:
    budget = current_app.extensions.get("rate_limits")
    if budget is not None and not budget.strategy.storage.check():
        return ["the rate limit storage does not answer"]
    return []
