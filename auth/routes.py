"""The /auth blueprint: registration, login, token refresh, logout, profile, passwords, API keys.

Login answers an unknown user, a wrong password and a disabled account identically, after the
same bcrypt work. Tokens are issued per login session (see `sessions.py`); the refresh endpoint
rotates, detects replay and revokes the family.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify

from . import accounts, api_keys, sessions
from .decorators import public, require_auth
from .errors import AuthenticationError, PermissionDenied, ValidationError
from .extension import PASSWORD_CHANGE_HEADER, AuthState, Principal, auth_state, require_enabled
from .inputs import integer, json_body, string_list, text
from .passwords import MAX_PASSWORD_LENGTH
from .users import (
    ALL_SCOPES,
    find_user,
    profile,
)

bp = Blueprint("auth", __name__, url_prefix="/auth")

INVALID_LOGIN = "invalid username or password"


bp.before_request(require_enabled)


def _password_field(body: dict[str, Any], name: str) -> str:
    # Long enough to hold any password the policy accepts, short enough to refuse junk at once.
    return text(body, name, max_len=MAX_PASSWORD_LENGTH)  # type: ignore[return-value]


def issue_tokens(
    state: AuthState,
    user: dict[str, Any],
    *,
    scopes: list[str] | None = None,
    key_id: str | None = None,
) -> Response:
    """Start a login session for `user` and return its first access and refresh tokens."""
    assert state.signer is not None
    now = state.now()
    sid = sessions.new_session_id()
    access_ttl, refresh_ttl = state.access_ttl, state.refresh_ttl
    refresh, jti = state.signer.encode(
        sub=user["id"], sid=sid, token_type="refresh", now=now, ttl=refresh_ttl
    )
    sessions.start_session(
        state.sessions,
        sid=sid,
        user_id=user["id"],
        refresh_jti=jti,
        now=now,
        expires_at=now + refresh_ttl,
        scopes=scopes,
        key_id=key_id,
    )
    access, _ = state.signer.encode(
        sub=user["id"], sid=sid, token_type="access", now=now, ttl=access_ttl
    )
    return _token_response(user, access, refresh, access_ttl)


def _token_response(user: dict[str, Any], access: str, refresh: str, ttl: int) -> Response:
    body: dict[str, Any] = {
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "bearer",
        "expires_in": ttl,
    }
    due = bool(user.get("must_change_password"))
    if due:
        body["password_change_required"] = True
    response = jsonify(body)
    if due:
        response.headers[PASSWORD_CHANGE_HEADER] = "true"
    return response


@bp.post("/register")
@public
def register():
    state = auth_state()
    mode = state.settings.registration
    if mode == "closed":
        raise PermissionDenied(
            "registration is closed on this server", error_code="REGISTRATION_CLOSED"
        )
    caller: Principal | None = state.authenticate()
    if mode == "admin_only" and caller is None:
        raise AuthenticationError("registration needs an admin's credentials")
    if mode == "admin_only" and not caller.is_admin:  # type: ignore[union-attr]
        raise PermissionDenied("only an admin can register users on this server")
    body = json_body()
    role = body.get("role", "user")
    if role == "admin" and not (caller and caller.is_admin):
        raise PermissionDenied("only an admin can create another admin")
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
@public
def login():
    state = auth_state()
    body = json_body(allow_form=True)
    if "api_key" in body:
        key = text(body, "api_key", max_len=api_keys.KEY_LENGTH)
        record = state.find_key(key)  # type: ignore[arg-type]
        user = state.active_user(record["user_id"], error_code="INVALID_API_KEY")
        state.check_default_admin(user)
        state.audit.record(
            "auth.login", outcome="ok", via="api_key", user_id=user["id"], key_id=record["id"]
        )
        return issue_tokens(state, user, scopes=record["scopes"], key_id=record["id"])
    field = "email" if "email" in body and "username" not in body else "username"
    identifier = text(body, field, max_len=256)
    password = _password_field(body, "password")
    state.login_guard.check(identifier)  # type: ignore[union-attr,arg-type]
    snapshot = state.users.read()
    user = find_user(snapshot.items, snapshot.index, identifier)  # type: ignore[arg-type]
    ok = state.verify_password(password, user["password_hash"] if user else None)
    if not ok or not user["is_active"]:  # type: ignore[index]
        state.login_guard.record_failure(identifier)  # type: ignore[union-attr,arg-type]
        state.audit.record(
            "auth.login",
            outcome="failed",
            identifier=identifier[:64],
            user_id=user["id"] if user else None,
        )
        raise AuthenticationError(INVALID_LOGIN, error_code="INVALID_CREDENTIALS")
    state.check_default_admin(user)  # type: ignore[arg-type]
    state.audit.record("auth.login", outcome="ok", via="password", user_id=user["id"])  # type: ignore[index]
    return issue_tokens(state, user)  # type: ignore[arg-type]


@bp.post("/refresh")
@public
def refresh():
    state = auth_state()
    assert state.signer is not None
    token = text(json_body(allow_form=True), "refresh_token", max_len=4096)
    now = state.now()
    claims = state.signer.decode(token, token_type="refresh", now=now)  # type: ignore[arg-type]
    user = state.active_user(claims["sub"], error_code="INVALID_TOKEN")
    access_ttl, refresh_ttl = state.access_ttl, state.refresh_ttl
    new_refresh, new_jti = state.signer.encode(
        sub=user["id"], sid=claims["sid"], token_type="refresh", now=now, ttl=refresh_ttl
    )
    outcome = sessions.rotate_refresh(
        state.sessions,
        sid=claims["sid"],
        user_id=user["id"],
        jti=claims["jti"],
        new_jti=new_jti,
        now=now,
        expires_at=now + refresh_ttl,
    )
    if outcome.refused == "reused":
        state.audit.record("auth.refresh_reuse", user_id=user["id"], session_id=claims["sid"])
        raise AuthenticationError(
            "this refresh token was already used; the whole session has been revoked",
            error_code="INVALID_TOKEN",
        )
    if outcome.refused:
        raise AuthenticationError(
            "this session has ended; log in again", error_code="INVALID_TOKEN"
        )
    access, _ = state.signer.encode(
        sub=user["id"], sid=claims["sid"], token_type="access", now=now, ttl=access_ttl
    )
    return _token_response(user, access, new_refresh, access_ttl)


@bp.post("/logout")
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
@require_auth
def me():
    principal: Principal = g.principal
    return jsonify(
        {
            **profile(principal.user),
            "scopes": sorted(principal.scopes),
            "auth_method": principal.via,
        }
    )


@bp.post("/change-password")
@require_auth
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
    if not state.verify_password(current, principal.user["password_hash"]):
        raise ValidationError(
            "current password is incorrect", details={"field": "current_password"}
        )
    ended = accounts.set_password(
        state,
        principal.id,
        new,
        actor=principal.id,
        keep_session=principal.session_id,
        event="user.password_changed",
    )
    return jsonify({"message": "password changed", "sessions_ended": ended})


@bp.post("/api-keys")
@require_auth
def create_api_key():
    principal: Principal = g.principal
    body = json_body()
    key, record = accounts.create_key(
        auth_state(),
        principal.user,
        held_scopes=principal.scopes,
        name=text(body, "name", max_len=100),  # type: ignore[arg-type]
        description=text(body, "description", required=False, max_len=500),
        expires_days=integer(body, "expires_days", low=1, high=3650),
        scopes=string_list(body, "scopes", choices=ALL_SCOPES),
    )
    return jsonify({"key": key, **api_keys.public_view(record, None)}), 201


@bp.get("/api-keys")
@require_auth
def list_api_keys():
    keys = accounts.list_keys(auth_state(), g.principal.id)
    return jsonify({"keys": keys, "total": len(keys)})


@bp.delete("/api-keys/<key_id>")
@require_auth
def revoke_api_key(key_id: str):
    principal: Principal = g.principal
    record = accounts.revoke_key(
        auth_state(),
        key_id,
        actor=principal.id,
        owner=None if principal.is_admin else principal.id,
    )
    return jsonify({"message": "API key revoked", **api_keys.public_view(record, None)})
