"""The /admin blueprint: user and key management for admins (role admin and scope admin).

Every action goes through `accounts.py`, which keeps the invariants (a last active admin stays;
disabling or deleting a user ends their sessions and keys at once) and writes the audit log.
"""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from . import accounts, schemas
from .core import auth_state
from .decorators import admin_required
from .errors import NotFound
from .inputs import json_body, query_int, text, usage_query
from .openapi import doc
from .passwords import MAX_PASSWORD_LENGTH
from .users import profile

bp = Blueprint("admin", __name__, url_prefix="/admin")
MAX_PAGE = 500


@bp.get("/users")
@doc(
    "Users, a page at a time",
    query={
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
        "offset": {"type": "integer", "minimum": 0, "maximum": 10**9},
    },
    responses={200: schemas.USER_PAGE},
)
@admin_required
def list_users():
    limit = query_int("limit", 50, low=1, high=MAX_PAGE)
    offset = query_int("offset", 0, low=0, high=10**9)
    users = accounts.list_users(auth_state())
    page = [profile(u) for u in users[offset : offset + limit]]
    return jsonify({"users": page, "total": len(users), "limit": limit, "offset": offset})


@bp.get("/users/<user_id>")
@doc("One user", responses={200: schemas.ADMIN_USER})
@admin_required
def show_user(user_id: str):
    state = auth_state()
    user = state.users.get(user_id)
    if user is None:
        raise NotFound(f"no user {user_id!r}")
    keys = accounts.list_keys(state, user_id)
    return jsonify({**profile(user), "api_keys": len([k for k in keys if k["is_active"]])})


@bp.patch("/users/<user_id>")
@doc(
    "Change a user's role, state, rate limit, models, tier, quotas, email or name",
    body=schemas.UPDATE_USER,
    example={"rate_limit": "200/minute"},
    responses={200: schemas.PROFILE},
    errors=(409,),
)
@admin_required
def update_user(user_id: str):
    user = accounts.update_user(auth_state(), user_id, json_body(), actor=g.principal.id)
    return jsonify(profile(user))


@bp.delete("/users/<user_id>")
@doc(
    "Delete a user: their sessions end and keys stop at once",
    responses={200: schemas.USER_DELETED},
    errors=(409,),
)
@admin_required
def delete_user(user_id: str):
    accounts.delete_user(auth_state(), user_id, actor=g.principal.id)
    return jsonify({"message": "user deleted", "user_id": user_id})


@bp.post("/users/<user_id>/reset-password")
@doc(
    "Set a temporary password; the user's sessions end",
    body=schemas.RESET_PASSWORD,
    example={"new_password": "replace-with-a-temporary-passphrase"},
    responses={200: schemas.SESSIONS_ENDED},
)
@admin_required
def reset_password(user_id: str):
    state = auth_state()
    if state.users.get(user_id) is None:
        raise NotFound(f"no user {user_id!r}")
    password = text(json_body(), "new_password", max_len=MAX_PASSWORD_LENGTH)
    ended = accounts.set_password(state, user_id, password, actor=g.principal.id)  # type: ignore[arg-type]
    return jsonify({"message": "password reset", "sessions_ended": ended})


@bp.get("/api-keys")
@doc(
    "Every API key, or one user's",
    query={"user": {"type": "string", "description": "id, username or email"}},
    responses={200: schemas.KEY_LIST},
    errors=(404,),
)
@admin_required
def list_api_keys():
    user = request.args.get("user")
    user_id = accounts.find(auth_state(), user)["id"] if user else None
    keys = accounts.list_keys(auth_state(), user_id)
    return jsonify({"keys": keys, "total": len(keys)})


@bp.get("/usage")
@doc(
    "Usage of one user or of everyone: predictions by day, hour, model, key or user",
    query={
        "user": {"type": "string", "description": "id, username or email; default: everyone"},
        **schemas.USAGE_QUERY,
    },
    responses={200: schemas.USAGE},
    errors=(404,),
)
@admin_required
def usage():
    state = auth_state()
    name = request.args.get("user")
    user = accounts.find(state, name) if name else None
    first, last, group_by = usage_query(state.clock())
    return jsonify(accounts.usage_report(state, user, first, last, group_by))
