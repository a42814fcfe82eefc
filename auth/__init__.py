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

from . import accounts
from .background import run_every
from .config import (
    AuthSettings,
    QuotaSettings,
    RateLimitSettings,
    UsageSettings,
    check_bounds,
    setting,
    shown,
    strong_secret,
)
from .core import (
    Admission,
    AuthState,
    Principal,
    admit_prediction,
    auth_state,
    check_model,
    check_quota,
    may_call,
    open_state,
)
from .decorators import (
    admin_required,
    checks_password,
    counted_at_admission,
    current_principal,
    current_user,
    exempt,
    public,
    require_auth,
)
from .errors import (
    ApiError,
    AuthenticationError,
    Code,
    Conflict,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    StorageUnavailable,
    ValidationError,
    error_body,
    error_code,
    loggable,
    request_id,
    stamp,
    standard_headers,
)
from .errors import init_app as init_error_handlers
from .extension import Auth
from .forks import this_pid
from .inputs import (
    json_body,
    json_bytes,
    max_json_depth,
    parse_json_object,
    query_int,
    refuse_unknown_fields,
    text,
)
from .ledger import GROUPS as USAGE_GROUPS
from .ledger import usage_range
from .limits import LimiterConfigError, client_address
from .offload import ThreadOffload, idle_priority
from .openapi import describe, doc
from .schemas import answer, body
from .signals import error_answered, store_written
from .storage import (
    UNCHANGED,
    Storage,
    Store,
    StoreCorrupt,
    Transaction,
    fsync_dir,
    open_storage,
    secure_dir,
)
from .storage.indexes import Index
from .storage.json import SECRET_FILE
from .storage.migrate import MigrationRefused, migrate
from .storage.shapes import Field, one_of
from .tokens import SecretError
from .users import ALL_SCOPES, check_email, check_username, profile

__all__ = [
    "Admission",
    "ALL_SCOPES",
    "UNCHANGED",
    "SECRET_FILE",
    "ApiError",
    "AuthenticationError",
    "Auth",
    "AuthSettings",
    "AuthState",
    "Code",
    "Conflict",
    "Field",
    "Index",
    "LimiterConfigError",
    "MigrationRefused",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "Principal",
    "QuotaSettings",
    "RateLimitSettings",
    "SecretError",
    "Storage",
    "StorageUnavailable",
    "Store",
    "StoreCorrupt",
    "ThreadOffload",
    "UsageSettings",
    "Transaction",
    "USAGE_GROUPS",
    "ValidationError",
    "accounts",
    "admit_prediction",
    "admin_required",
    "answer",
    "auth_state",
    "body",
    "check_bounds",
    "check_email",
    "check_username",
    "check_model",
    "check_quota",
    "checks_password",
    "counted_at_admission",
    "client_address",
    "current_principal",
    "current_user",
    "describe",
    "doc",
    "error_answered",
    "error_body",
    "error_code",
    "exempt",
    "fsync_dir",
    "idle_priority",
    "init_error_handlers",
    "json_body",
    "json_bytes",
    "loggable",
    "max_json_depth",
    "may_call",
    "migrate",
    "one_of",
    "open_state",
    "open_storage",
    "parse_json_object",
    "query_int",
    "profile",
    "public",
    "refuse_unknown_fields",
    "request_id",
    "require_auth",
    "run_every",
    "secure_dir",
    "setting",
    "shown",
    "strong_secret",
    "stamp",
    "store_written",
    "standard_headers",
    "text",
    "this_pid",
    "usage_range",
]
