"""The `Auth` Flask extension: the core's pipeline plus the `/auth` and `/admin` blueprints.

    auth = Auth(public_endpoints={"pages.index"})
    auth.init_app(app, open_state(settings=AuthSettings(), data_dir=Path("data")))

`Auth()` is created unbound at import time and keeps no app: per-app state lives in
`app.extensions["auth"]` (an `AuthState`), flask-limiter's extension in its `limiter`. Options:

- `public_endpoints`: endpoints reachable without credentials besides those marked `@public`
  (a view) or `public(bp)` (a blueprint); static files are public by default;
- `url_prefix`, `admin_url_prefix`: where the account and admin routes are served; None leaves
  that blueprint out. Neither is served in simple mode (`enabled: false`), where nothing of
  either could work.

This module sits on top: it imports the core and the web layer, and neither imports it back.
"""

from __future__ import annotations

from collections.abc import Iterable

from flask import Flask

from . import admin, routes
from .core import AuthState, init_core
from .limits import client_address


class Auth:
    def __init__(
        self,
        *,
        public_endpoints: Iterable[str] = (),
        url_prefix: str | None = "/auth",
        admin_url_prefix: str | None = "/admin",
    ) -> None:
        self.public_endpoints = frozenset(public_endpoints)
        self.url_prefix = url_prefix
        self.admin_url_prefix = admin_url_prefix

    def init_app(
        self,
        app: Flask,
        state: AuthState,
        *,
        default_admin: bool = True,
    ) -> AuthState:
        """Serve `state` (see `open_state`) from `app`: the pipeline, flask-limiter, the
        routes, and (unless told not to) the default admin of an empty users store."""
        limits = state.rate_limits
        init_core(
            app,
            state,
            default_admin=default_admin,
            public_endpoints=self.public_endpoints,
        )
        if not state.settings.enabled:
            return state
        if self.url_prefix is not None:
            app.register_blueprint(routes.bp, url_prefix=self.url_prefix)
            login = f"{routes.bp.name}.login"
            assert state.limiter is not None
            app.view_functions[login] = state.limiter.limit(
                limits.login,
                key_func=client_address,
                error_message=f"the limit of {limits.login} logins from this address",
            )(app.view_functions[login])
        if self.admin_url_prefix is not None:
            app.register_blueprint(admin.bp, url_prefix=self.admin_url_prefix)
        return state
