"""Markers on views and blueprints, and `current_user`.

A marker records what a view needs. The extension's one `before_request` hook reads the markers
of every endpoint once (`core.EndpointPolicy`) and enforces them on every request, before the view
and before any limit of the application's own: deny by default, so a view without a marker needs
credentials (any scope), `@public` opens it, `require_auth(scopes=...)` narrows it. A whole
blueprint (a site's pages, say) is opened with `public(bp)`, and so are the blueprints nested in
it. With authentication disabled (simple mode) every check passes and `current_user` is None.
`current_user` (the caller's user record) is a read-only dict: the same record serves every
request of that credential until a store changes (`remembered.py`); change a copy of it
(`dict(current_user)`).

`require_auth` also checks for itself where the hook could not read its marker: on a method of a
class-based view, or beneath a decorator that hides the function it wraps. Where the hook did
check (`g.auth_checked` holds what it checked), that costs a comparison.

Imports nothing of the extension but its errors: the core reads these markers, the web layer
applies them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from flask import current_app, g
from werkzeug.local import LocalProxy

from .errors import AuthenticationError, PermissionDenied

F = TypeVar("F", bound=Callable[..., Any])

PUBLIC_ATTR = "_auth_public"
SCOPES_ATTR = "_auth_scopes"
ADMIN_ATTR = "_auth_admin"
EXEMPT_ATTR = "_rate_limit_exempt"
PASSWORD_ATTR = "_auth_checks_password"
ADMISSION_ATTR = "_auth_counted_at_admission"
CREDENTIALS_REQUIRED = "credentials required: send Authorization: Bearer or X-API-Key"


def _principal() -> Any:
    return g.get("principal")


current_principal: Any = LocalProxy(_principal)


def _current_user() -> dict[str, Any] | None:
    principal = g.get("principal")
    return principal.user if principal else None


current_user: dict[str, Any] | None = LocalProxy(_current_user)  # type: ignore[assignment]


def public(target: F) -> F:
    """Mark a view, or every view of a blueprint, as reachable without credentials."""
    setattr(target, PUBLIC_ATTR, True)
    return target


def require_auth(view: F | None = None, *, scopes: Iterable[str] = (), admin: bool = False):
    """Allow the view only to a principal holding all `scopes` (and the admin role if asked)."""
    needed = frozenset(scopes) | ({"admin"} if admin else frozenset())

    def mark(fn: F) -> F:
        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            checked = g.get("auth_checked")
            if checked is None or not (needed <= checked[0] and (checked[1] or not admin)):
                _check_here(needed, admin)
            return fn(*args, **kwargs)

        setattr(guarded, SCOPES_ATTR, needed)
        setattr(guarded, ADMIN_ATTR, admin)
        return guarded  # type: ignore[return-value]

    return mark(view) if view is not None else mark


def _check_here(needed: frozenset[str], admin: bool) -> None:
    if not current_app.extensions["auth"].settings.enabled:
        return
    principal = g.get("principal")
    if principal is None:
        raise AuthenticationError(CREDENTIALS_REQUIRED)
    check_scopes(principal, needed, admin)


def check_scopes(principal: Any, needed: frozenset[str], admin: bool) -> None:
    """403 unless `principal` holds every scope `needed` (and the admin role if `admin`)."""
    if admin and not principal.is_admin:
        raise PermissionDenied("this action needs the admin role")
    missing = needed - principal.scopes
    if missing:
        raise PermissionDenied(
            f"missing scope(s): {', '.join(sorted(missing))}",
            details={"required_scopes": sorted(needed)},
        )


def admin_required(view: F) -> F:
    return require_auth(view, admin=True)


def exempt(view: F) -> F:
    """Mark a view as outside the per-user budget (health checks). Limits the application
    declares with flask-limiter are its own: `limiter.exempt` exempts a view from those."""
    setattr(view, EXEMPT_ATTR, True)
    return view


def counted_at_admission(view: F) -> F:
    """Mark a view that runs predictions: its budget is counted where it admits one
    (`admit_prediction`), in one step with the quotas and the key's concurrency (`admission.py`);
    a request the view refuses before that is counted when it ends."""
    setattr(view, ADMISSION_ATTR, True)
    return view


def checks_password(view: F) -> F:
    """Mark a view that checks a password: an answer other than 200 is held back until
    `auth.failed_login_delay_seconds` after the request arrived."""
    setattr(view, PASSWORD_ATTR, True)
    return view
