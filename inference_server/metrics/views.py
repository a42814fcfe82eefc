"""`GET /metrics` and who may read it.

A scraper proves itself with `metrics.token` as a bearer token (its own secret, compared in
constant time, opening nothing else), or with any credential of the server that holds the
`admin` scope (an admin's session, or an admin's key made with that scope). With authentication
disabled (simple mode) it is open like every route, unless a token is set. The route is outside
the per-user rate limit, as health checks are: a scraper's visits cost nobody's budget.

The authentication hook skips this view (it is marked public), so the view asks itself who is
calling: a metrics token is no credential the extension knows.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST

from auth import AuthenticationError, PermissionDenied, auth_state, doc, exempt, public

from . import instruments, scrape

bp = Blueprint("metrics", __name__)


def init_app(app: Flask) -> None:
    """Count and serve /metrics, if enabled; `app.extensions["metrics"]` is then the list of
    collectors read at each scrape, where other parts of the app add theirs."""
    if app.extensions["settings"].metrics.enabled:
        instruments.init_app(app)
        app.extensions["metrics"] = []
        app.register_blueprint(bp)


@bp.get("/metrics")
@doc(
    "The server's metrics in Prometheus text (all workers)",
    description=(
        "Needs a credential with the `admin` scope, or `Authorization: Bearer <metrics.token>` "
        "when the operator set one (a scraper's own secret)."
    ),
    responses={200: {"type": "string"}},
    media=("text/plain",),
    errors=(401, 403),
)
@public
@exempt
def metrics():
    _check_reader()
    collectors = current_app.extensions["metrics"]
    return Response(scrape.text(collectors), content_type=CONTENT_TYPE_LATEST)


def _check_reader() -> None:
    token = current_app.extensions["settings"].metrics.token
    sent = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        return
    state = auth_state()
    if not state.settings.enabled:
        if token:
            raise AuthenticationError("send metrics.token as a bearer token")
        return
    principal = g.principal = state.authenticate()
    if principal is None:
        raise AuthenticationError(
            "credentials required: a credential with the admin scope, or metrics.token"
        )
    if not principal.acts_as_admin:
        raise PermissionDenied("reading /metrics needs the admin scope (or metrics.token)")
