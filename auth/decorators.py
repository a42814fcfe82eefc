"""View decorators and `current_user`.

Every view is already authenticated by the extension's `before_request` hook unless it is marked
`@public`; `require_auth` narrows that to the scopes (or admin role) a view needs. Stack
`require_auth` above a rate-limit decorator so the user is known when the limit key is computed.
With authentication disabled (simple mode) every check passes and `current_user` is None.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from flask import g
from werkzeug.local import LocalProxy

from .errors import AuthenticationError, PermissionDenied
from .extension import PUBLIC_ATTR, Principal, auth_state
from .openapi import SCOPES_ATTR

F = TypeVar("F", bound=Callable[..., Any])


def _principal() -> Principal | None:
    return g.get("principal")


current_principal: Principal | None = LocalProxy(_principal)  # type: ignore[assignment]


def _current_user() -> dict[str, Any] | None:
    principal = g.get("principal")
    return principal.user if principal else None


current_user: dict[str, Any] | None = LocalProxy(_current_user)  # type: ignore[assignment]


def public(view: F) -> F:
    """Mark a view as reachable without credentials."""
    setattr(view, PUBLIC_ATTR, True)
    return view


def require_auth(view: F | None = None, *, scopes: Iterable[str] = (), admin: bool = False):
    """Allow the view only to a principal holding all `scopes` (and the admin role if asked)."""
    needed = frozenset(scopes) | ({"admin"} if admin else frozenset())

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if auth_state().settings.enabled:
                principal = _principal()
                if principal is None:
                    raise AuthenticationError("credentials required")
                if admin and not principal.is_admin:
                    raise PermissionDenied("this action needs the admin role")
                missing = needed - principal.scopes
                if missing:
                    raise PermissionDenied(
                        f"missing scope(s): {', '.join(sorted(missing))}",
                        details={"required_scopes": sorted(needed)},
                    )
            return fn(*args, **kwargs)

        setattr(wrapper, SCOPES_ATTR, needed)  # what the API description says it needs
        return wrapper  # type: ignore[return-value]

    return decorate(view) if view is not None else decorate


def admin_required(view: F) -> F:
    return require_auth(view, admin=True)
