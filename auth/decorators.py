"""Markers on views and blueprints, and `current_user`.

A marker records what a view needs; it wraps nothing. The extension's one `before_request` hook
reads the markers of every endpoint once (`core.EndpointPolicy`) and enforces them on every
request, before the view and before any limit of the application's own: deny by default, so a
view without a marker needs credentials (any scope), `@public` opens it, `require_auth(scopes=...)`
narrows it. A whole blueprint (a site's pages, say) is opened with `public(bp)`. With
authentication disabled (simple mode) every check passes and `current_user` is None.

Imports nothing of the extension: the core reads these markers, the web layer applies them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from flask import g
from werkzeug.local import LocalProxy

F = TypeVar("F", bound=Callable[..., Any])

PUBLIC_ATTR = "_auth_public"
SCOPES_ATTR = "_auth_scopes"
ADMIN_ATTR = "_auth_admin"
EXEMPT_ATTR = "_rate_limit_exempt"
PASSWORD_ATTR = "_auth_checks_password"


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
        setattr(fn, SCOPES_ATTR, needed)
        setattr(fn, ADMIN_ATTR, admin)
        return fn

    return mark(view) if view is not None else mark


def admin_required(view: F) -> F:
    return require_auth(view, admin=True)


def exempt(view: F) -> F:
    """Mark a view as outside the per-user budget (health checks)."""
    setattr(view, EXEMPT_ATTR, True)
    return view


def checks_password(view: F) -> F:
    """Mark a view that checks a password: an answer other than 200 is held back until
    `auth.failed_login_delay_seconds` after the request arrived."""
    setattr(view, PASSWORD_ATTR, True)
    return view
