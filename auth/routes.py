"""The /auth blueprint: registration, login, token refresh, logout, profile, passwords, API keys.

Login answers an unknown user, a wrong password and a disabled account identically, after the
same bcrypt work. Tokens are issued per login session (see `sessions.py`); the refresh endpoint
rotates, detects replay and revokes the family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, g, jsonify

from . import accounts, api_keys, schemas, sessions
from .core import PASSWORD_CHANGE_HEADER, SESSION_ENDED, AuthState, Principal, auth_state
from .decorators import checks_password, exempt, public, require_auth
from .errors import AuthenticationError, Code, PermissionDenied, ValidationError
from .inputs import integer, json_body, string_list, text, usage_query
from .limits import client_address
from .openapi import doc
from .passwords import MAX_PASSWORD_LENGTH
from .quotas import usage_today
from .users import (
    ALL_SCOPES,
    find_user,
    profile,
)

bp = Blueprint("auth", __name__, url_prefix="/auth")

INVALID_LOGIN = "invalid username or password"
# Described with its JSON body only: code generators make broken clients of an operation that
# takes two content types.
FORM_TOO = "The same fields are also accepted form-urlencoded (as `curl -d` sends them)."


def _password_field(body: dict[str, Any], name: str) -> str:
    # Long enough to hold any password the policy accepts, short enough to refuse junk at once.
    return text(body, name, max_len=MAX_PASSWORD_LENGTH)  # type: ignore[return-value]


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str
    refresh_jti: str
    refresh_expires_at: int
    expires_in: int


def _sign_pair(state: AuthState, user_id: str, sid: str, *, now: int, end: int) -> TokenPair:
    """An access and a refresh token for session `sid`, neither outliving the session's `end`."""
    assert state.signer is not None
    access_ttl = min(state.access_ttl, end - now)
    refresh_ttl = min(state.refresh_ttl, end - now)
    refresh, jti = state.signer.encode(
        sub=user_id, sid=sid, token_type="refresh", now=now, ttl=refresh_ttl
    )
    access, _ = state.signer.encode(
        sub=user_id, sid=sid, token_type="access", now=now, ttl=access_ttl
    )
    return TokenPair(access, refresh, jti, now + refresh_ttl, access_ttl)


def issue_tokens(state: AuthState, user: dict[str, Any], *, key: dict[str, Any] | None = None):
    """Start a login session for `user` (bound to `key` for a key login) and return its first
    access and refresh tokens."""
    now = state.now()
    sid = sessions.new_session_id()
    pair = _sign_pair(state, user["id"], sid, now=now, end=state.session_end(now, key))
    sessions.start_session(
        state.sessions,
        sid=sid,
        user_id=user["id"],
        refresh_jti=pair.refresh_jti,
        now=now,
        expires_at=pair.refresh_expires_at,
        scopes=key["scopes"] if key else None,
        key_id=key["id"] if key else None,
    )
    return _token_response(user, pair)


def _token_response(user: dict[str, Any], pair: TokenPair) -> Response:
    body: dict[str, Any] = {
        "access_token": pair.access,
        "refresh_token": pair.refresh,
        "token_type": "bearer",
        "expires_in": pair.expires_in,
    }
    state = auth_state()
    body["usage"] = usage_today(state, user, state.clock())
    due = bool(user.get("must_change_password"))
    if due:
        body["password_change_required"] = True
    response = jsonify(body)
    if due:
        response.headers[PASSWORD_CHANGE_HEADER] = "true"
    return response


@bp.post("/register")
@doc(
    "Register a user",
    body=schemas.REGISTER,
    example={
        "username": "alice",
        "email": "alice@example.org",
        "password": "replace-with-a-long-passphrase",
        "full_name": "Alice Example",
    },
    responses={201: schemas.REGISTERED},
    errors=(401, 403, 409),
)
@public
def register():
    state = auth_state()
    mode = state.settings.registration
    if mode == "closed":
        raise PermissionDenied(
            "registration is closed on this server", error_code=Code.REGISTRATION_CLOSED
        )
    caller: Principal | None = state.authenticate()
    if mode == "admin_only" and caller is None:
        raise AuthenticationError("registration needs an admin's credentials")
    may_admin = caller is not None and caller.holds("admin")
    if mode == "admin_only" and not may_admin:
        raise PermissionDenied(
            "only an admin can register users on this server (with a credential holding the "
            "'admin' scope)",
            details={"required_scopes": ["admin"]},
        )
    body = json_body()
    role = body.get("role", "user")
    if role == "admin" and not may_admin:
        raise PermissionDenied(
            "only an admin can create another admin (with a credential holding the 'admin' scope)",
            details={"required_scopes": ["admin"]},
        )
    user = accounts.create_user(
        state,
        username=body.get("username"),
        email=body.get("email"),
        password=_password_field(body, "password"),
        role=role,
        full_name=text(body, "full_name", required=False, max_len=200),
        actor=caller.id if caller else None,
    )
    return jsonify({"message": "user registered", "user_id": user["id"]}), 201


@bp.post("/login")
@doc(
    "Log in: a password or an API key for an access and a refresh token",
    body=schemas.LOGIN,
    example={"username": "admin", "password": "admin123"},  # the default admin, on a new server
    forms=True,
    description=FORM_TOO,
    responses={200: schemas.TOKENS},
    errors=(401, 429),
)
@public
@exempt  # from the per-user budget: logins have their own limit per address (`rate_limits.login`)
@checks_password
def login():
    state = auth_state()
    body = json_body(allow_form=True)
    if "api_key" in body:
        key = text(body, "api_key", max_len=api_keys.KEY_LENGTH)
        record = state.find_key(key)  # type: ignore[arg-type]
        user = state.active_user(record["user_id"], error_code=Code.INVALID_API_KEY)
        state.check_default_admin(user)
        state.audit.record(
            "auth.login", outcome="ok", via="api_key", user_id=user["id"], key_id=record["id"]
        )
        return issue_tokens(state, user, key=record)
    field = "email" if "email" in body and "username" not in body else "username"
    identifier: str = text(body, field, max_len=256)  # type: ignore[assignment]
    password = _password_field(body, "password")
    user = find_user(state.users, identifier)
    if not state.try_password(user, password, name=identifier):
        state.audit.record(
            "auth.login", outcome="failed", **accounts.audit_identity(user, identifier)
        )
        raise AuthenticationError(INVALID_LOGIN, error_code=Code.INVALID_CREDENTIALS)
    assert user is not None
    accounts.remember_address(state, user, client_address())
    state.audit.record("auth.login", outcome="ok", via="password", user_id=user["id"])
    return issue_tokens(state, user)


@bp.post("/refresh")
@doc(
    "Trade a refresh token for a new access and refresh token",
    body=schemas.REFRESH,
    example={"refresh_token": "the refresh_token your login answered"},
    forms=True,
    description=FORM_TOO,
    responses={200: schemas.TOKENS},
    errors=(401,),
)
@public
def refresh():
    state = auth_state()
    assert state.signer is not None
    token = text(json_body(allow_form=True), "refresh_token", max_len=4096)
    now = state.now()
    claims = state.signer.decode(token, token_type="refresh", now=now)  # type: ignore[arg-type]
    user = state.active_user(claims["sub"], error_code=Code.INVALID_TOKEN)
    state.check_default_admin(user)
    session = state.sessions.get(claims["sid"])
    if session is None or session["user_id"] != user["id"]:
        raise AuthenticationError(SESSION_ENDED, error_code=Code.INVALID_TOKEN)
    key_id = session.get("key_id")
    key = state.live_key(key_id, error_code=Code.INVALID_TOKEN) if key_id else None
    end = state.session_end(session["created_at"], key)
    if end <= now:
        raise AuthenticationError(
            "this session has reached the end of its lifetime; log in again",
            error_code=Code.INVALID_TOKEN,
        )
    pair = _sign_pair(state, user["id"], claims["sid"], now=now, end=end)
    outcome = sessions.rotate_refresh(
        state.sessions,
        sid=claims["sid"],
        user_id=user["id"],
        jti=claims["jti"],
        new_jti=pair.refresh_jti,
        now=now,
        expires_at=pair.refresh_expires_at,
    )
    if outcome.refused == "reused":
        state.audit.record("auth.refresh_reuse", user_id=user["id"], session_id=claims["sid"])
        raise AuthenticationError(
            "this refresh token was already used; the whole session has been revoked",
            error_code=Code.INVALID_TOKEN,
        )
    if outcome.refused:
        raise AuthenticationError(SESSION_ENDED, error_code=Code.INVALID_TOKEN)
    return _token_response(user, pair)


@bp.post("/logout")
@doc("End this login session", responses={200: schemas.MESSAGE}, errors=(400,))
@require_auth
def logout():
    state = auth_state()
    principal: Principal = g.principal
    if principal.session_id is None:
        raise ValidationError(
            "logout ends a token session; an API key is revoked with DELETE /auth/api-keys/<id>"
        )
    sessions.revoke_sessions(
        state.sessions,
        now=state.now(),
        reason="logout",
        user_id=principal.id,
        only=principal.session_id,
    )
    state.audit.record("auth.logout", user_id=principal.id, session_id=principal.session_id)
    return jsonify({"message": "logged out"})


@bp.get("/me")
@doc("Your profile, the scopes of this credential, today's usage", responses={200: schemas.ME})
@require_auth(scopes=["user:read"])
def me():
    principal: Principal = g.principal
    state = auth_state()
    return jsonify(
        {
            **profile(principal.user),
            "scopes": sorted(principal.scopes),
            "auth_method": principal.via,
            "usage": usage_today(state, principal.user, state.clock()),
        }
    )


@bp.get("/usage")
@doc(
    "Your usage: predictions by day, hour, model or key, and your quotas",
    query=schemas.USAGE_QUERY,
    responses={200: schemas.USAGE},
)
@require_auth(scopes=["user:read"])
def usage():
    principal: Principal = g.principal
    state = auth_state()
    first, last, group_by = usage_query(state.clock())
    return jsonify(accounts.usage_report(state, principal.user, first, last, group_by))


@bp.post("/change-password")
@doc(
    "Change your password; your other sessions end",
    body=schemas.CHANGE_PASSWORD,
    example={"current_password": "admin123", "new_password": "replace-with-a-long-passphrase"},
    responses={200: schemas.SESSIONS_ENDED},
)
@require_auth(scopes=["user:write"])
@checks_password
def change_password():
    state = auth_state()
    principal: Principal = g.principal
    body = json_body()
    current = _password_field(body, "current_password")
    new = _password_field(body, "new_password")
    if new == current:
        raise ValidationError(
            "new password must differ from the current one", details={"field": "new_password"}
        )
    accounts.check_password(state, new, username=principal.user["username"], field="new_password")
    if not state.try_password(principal.user, current, name=principal.user["username"]):
        state.audit.record("user.password_change_failed", user_id=principal.id)
        raise ValidationError(
            "current password is incorrect", details={"field": "current_password"}
        )
    ended = accounts.set_password(
        state,
        principal.id,
        new,
        actor=principal.id,
        keep_session=principal.session_id,
        by_owner=True,
    )
    return jsonify({"message": "password changed", "sessions_ended": ended})


@bp.post("/api-keys")
@doc(
    "Create an API key (shown only in this answer)",
    body=schemas.CREATE_KEY,
    example={"name": "nightly-scoring", "scopes": ["predict", "models:read"], "expires_days": 90},
    responses={201: schemas.NEW_KEY},
)
@require_auth(scopes=["api-keys:manage"])
def create_api_key():
    principal: Principal = g.principal
    body = json_body()
    key, record = accounts.create_key(
        auth_state(),
        principal.user,
        held_scopes=principal.scopes,
        parent_id=principal.key_id,
        name=text(body, "name", max_len=100),  # type: ignore[arg-type]
        description=text(body, "description", required=False, max_len=500),
        expires_days=integer(body, "expires_days", low=1, high=3650),
        scopes=string_list(body, "scopes", choices=ALL_SCOPES),
        limits={name: body[name] for name in accounts.KEY_LIMITS if name in body},
        held_models=principal.models,
    )
    return jsonify({"key": key, **api_keys.public_view(record, None)}), 201


@bp.patch("/api-keys/<key_id>")
@doc(
    "Rename a key or change its models, rate limit or concurrency (within your own rights)",
    body=schemas.UPDATE_KEY,
    example={"description": "scores the nightly batch", "rate_limit": "60/minute"},
    responses={200: schemas.KEY},
    errors=(403, 404, 409),
)
@require_auth(scopes=["api-keys:manage"])
def update_api_key(key_id: str):
    principal: Principal = g.principal
    body = json_body()
    record = accounts.update_key(
        auth_state(),
        key_id,
        body,
        actor=principal.id,
        owner=None if principal.holds("admin") else principal.id,
        rules=principal.models,
        held_key=principal.key,
    )
    usage = auth_state().key_usage.last_used([key_id])
    return jsonify(api_keys.public_view(record, usage.get(key_id)))


@bp.get("/api-keys")
@doc("Your API keys (never the keys themselves)", responses={200: schemas.KEY_LIST})
@require_auth(scopes=["api-keys:manage"])
def list_api_keys():
    keys = accounts.list_keys(auth_state(), g.principal.id)
    return jsonify({"keys": keys, "total": len(keys)})


@bp.delete("/api-keys/<key_id>")
@doc("Revoke an API key and every key made through it", responses={200: schemas.REVOKED})
@require_auth(scopes=["api-keys:manage"])
def revoke_api_key(key_id: str):
    principal: Principal = g.principal
    record = accounts.revoke_key(
        auth_state(),
        key_id,
        actor=principal.id,
        owner=None if principal.holds("admin") else principal.id,
    )
    return jsonify({"message": "API key revoked", **api_keys.public_view(record, None)})
