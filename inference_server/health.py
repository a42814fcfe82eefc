"""GET /health (liveness) and GET /ready (readiness), reachable without credentials.

`/health` says the process answers. `/ready` says this worker can do its work: every model that
should be serving is loaded, every store can be read and written, and the rate limit storage
(Redis, when configured) answers. A load balancer takes a worker that is not ready out of
rotation; the 503 says which part is not, with no secret in it (never a storage URI).

The route is public, so anyone can ask; what a part's problem is (a model file that failed to
load, a store that cannot be written) names the server's files and paths, which only an admin
may read. Everyone else gets each part's state, as the 200 answer has it. The authentication
hook skips public views, so the view asks itself who is calling; credentials that fail count as
none: a load balancer's probe is never refused.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from auth import ApiError, Code, auth_state, doc, exempt, public

from . import schemas
from .predict import registry

bp = Blueprint("health", __name__)


class NotReady(ApiError):
    code, error_code = 503, Code.SERVICE_UNAVAILABLE


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
    if not failing:
        return jsonify({"status": "ready", "checks": {part: "ok" for part in checks}})
    states = {part: "failing" if problems else "ok" for part, problems in checks.items()}
    details: dict[str, object] = {"status": "not ready", "checks": states}
    message = f"not ready: {', '.join(failing)} failing"
    if _caller_is_admin():
        details["problems"] = failing
        message = f"not ready: {'; '.join(p for problems in failing.values() for p in problems)}"
    raise NotReady(message, details=details, headers={"Retry-After": "5"})


def _caller_is_admin() -> bool:
    """True for admin credentials (the role and, as on the admin routes, the admin scope), and
    for anyone when authentication is off, as every route then is."""
    state = auth_state()
    if not state.settings.enabled:
        return True
    try:
        principal = state.authenticate()
    except ApiError:
        return False
    return principal is not None and principal.acts_as_admin


def _rate_limit_problems() -> list[str]:
    if not auth_state().limiter.storage.check():
        return ["the rate limit storage does not answer"]
    return []
