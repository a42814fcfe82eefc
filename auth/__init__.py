"""A self-contained Flask authentication extension: users, JWTs, API keys, JSON-file stores.

    from auth import Auth, AuthSettings, open_state, require_auth
    auth = Auth(public_endpoints={"pages.index"})
    auth.init_app(app, open_state(settings=AuthSettings(), data_dir=Path("data")))

Every endpoint needs credentials unless it is marked `@public` (a view), `public(bp)` (a
blueprint), named in `public_endpoints`, or serves static files. Rate limits run on
flask-limiter; its extension is `app.extensions["auth"].limiter`, where an application declares
limits of its own (`@limiter.limit("5/minute")`), counted in the same storage.

Under gevent (as the inference server runs it) password hashing moves to real threads by itself,
and a failed login held back by `failed_login_delay_seconds` costs a sleeping greenlet. Under a
server with one thread per request, that delay holds the thread: set it to 0 there.

It never imports the application that uses it.
"""

from __future__ import annotations

from .config import AuthSettings, RateLimitSettings
from .core import AuthState, Principal, auth_state, open_state
from .decorators import (
    admin_required,
    checks_password,
    current_principal,
    current_user,
    exempt,
    public,
    require_auth,
)
from .errors import ApiError, ValidationError
from .extension import Auth
from .inputs import json_body
from .limits import LimiterConfigError
from .store import StoreCorrupt
from .tokens import SecretError

__all__ = [
    "ApiError",
    "Auth",
    "AuthSettings",
    "AuthState",
    "LimiterConfigError",
    "Principal",
    "RateLimitSettings",
    "SecretError",
    "StoreCorrupt",
    "ValidationError",
    "admin_required",
    "auth_state",
    "checks_password",
    "current_principal",
    "current_user",
    "exempt",
    "json_body",
    "open_state",
    "public",
    "require_auth",
]
