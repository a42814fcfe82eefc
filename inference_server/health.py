"""GET /health: liveness for load balancers, reachable without credentials."""

from __future__ import annotations

from flask import Blueprint, jsonify

from auth import public
from auth.limits import exempt

bp = Blueprint("health", __name__)


@bp.get("/health")
@public
@exempt
def health():
    return jsonify({"status": "ok"})
