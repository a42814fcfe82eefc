"""A self-contained Flask authentication extension: users, JWTs, API keys, JSON-file stores.

    from auth import Auth, AuthSettings, open_state, require_auth
    auth = Auth()
    auth.init_app(app, open_state(settings=AuthSettings(), data_dir=Path("data")))

Under gevent (as the inference server runs it) password hashing moves to real threads by itself,
and a failed login held back by `failed_login_delay_seconds` costs a sleeping greenlet. Under a
server with one thread per request, that delay holds the thread: set it to 0 there.

It never imports the application that uses it.
"""

from __future__ import annotations

from .config import AuthSettings
from .decorators import admin_required, current_principal, current_user, public, require_auth
from .errors import ApiError, ValidationError
from .extension import Auth, AuthState, Principal, auth_state, open_state
from .inputs import json_body
from .store import StoreCorrupt
from .tokens import SecretError

__all__ = [
    "ApiError",
    "Auth",
    "AuthSettings",
    "AuthState",
    "Principal",
    "SecretError",
    "StoreCorrupt",
    "ValidationError",
    "admin_required",
    "auth_state",
    "current_principal",
    "current_user",
    "json_body",
    "open_state",
    "public",
    "require_auth",
]
