"""The prediction lane: small predictions answered beneath Flask's per-request machinery.

For a model that answers in well under a millisecond, Flask's own work per request (the request
context, URL matching, three hook chains, a response object) cost more than the model and the
authentication together. The lane sits between the WSGI server and Flask and answers
`POST /predict` and `POST /<model>/predict` itself when everything about the request is
ordinary: credentials naming an active user that hold the view's scopes (or auth disabled),
budget left, no query string, a small JSON body that fits the model, and a model fast enough to
run inline. It takes the same steps as the Flask path, in the same order, with the same
functions (`AuthState.identify`, `RequestBudget.count`, `Inference.prepare` and `payload`,
`access_log.write`), and answers with the same headers.

Anything else is handed to Flask untouched, which answers it as it always has: every error,
401, 403 and 429 comes from the one error handler. A request handed over after its budget was
counted carries its limit headers (`auth.limits.COUNTED`) so that Flask does not count it
again; nothing else the lane did has an effect that a second pass would repeat (a key's use is
noted in memory and written at most once a minute).
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from flask import Flask

from auth.errors import NO_SNIFF, NO_STORE, REQUEST_ID_HEADER, choose_request_id
from auth.extension import Credentials, Principal, principal_headers
from auth.inputs import parse_json_object
from auth.limits import COUNTED, client_address_of
from auth.openapi import SCOPES_ATTR, body_schema

from . import access_log
from .predict import PARSE_INLINE_BYTES

WITH_MODEL = re.compile(r"^/([^/]+)/predict$")


class HandOver(Exception):
    """This request is not the lane's: Flask answers it."""


class Route(NamedTuple):
    """What a prediction view declares: the body fields it takes, the scopes it needs."""

    fields: frozenset[str]
    needs: frozenset[str]

    @classmethod
    def of(cls, view: Callable[..., Any]) -> Route:
        return cls(frozenset(body_schema(view)["properties"]), getattr(view, SCOPES_ATTR))


class PredictionLane:
    """WSGI middleware in front of `app.wsgi_app` (installed by `init_app`)."""

    def __init__(self, app: Flask) -> None:
        self.flask: Callable[..., Iterable[bytes]] = app.wsgi_app
        self.auth = app.extensions["auth"]
        self.enabled = self.auth.settings.enabled
        self.budget = app.extensions["rate_limits"]
        self.inference = app.extensions["inference"]
        self.max_bytes = min(PARSE_INLINE_BYTES, app.config["MAX_CONTENT_LENGTH"])
        self.max_depth = app.config["MAX_JSON_DEPTH"]
        self.access_log = app.extensions["settings"].server.access_log
        self.default_route = Route.of(app.view_functions["predict.predict"])
        self.named_route = Route.of(app.view_functions["predict.predict_with"])

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        started = time.perf_counter()
        try:
            route, path_model, length = self._ordinary(environ)
            address = client_address_of(environ, self.auth.trusted_proxies)
            principal = self._principal(environ, address, route)
            counted = environ[COUNTED] = self.budget.count(principal, address)
            payload = self._predict(environ, route, path_model, length)
        except Exception:  # HandOver, or an error of a step: Flask takes the steps and answers
            return self.flask(environ, start_response)
        rid = choose_request_id(environ.get("HTTP_X_REQUEST_ID"))
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
                *counted.items(),
                (REQUEST_ID_HEADER, rid),
                NO_STORE,
                NO_SNIFF,
                *principal_headers(principal),
            ],
        )
        if self.access_log:
            access_log.write(
                "POST",
                environ["PATH_INFO"],
                200,
                started=started,
                user_id=principal.id if principal is not None else None,
                rid=rid,
            )
        return [payload]

    def _ordinary(self, environ: dict[str, Any]) -> tuple[Route, str | None, int]:
        """The route, the model the path names (None: the default) and the body's length, if
        this is a prediction the lane may take; else HandOver."""
        if environ["REQUEST_METHOD"] != "POST" or environ.get("QUERY_STRING"):
            raise HandOver
        path = environ.get("PATH_INFO", "")
        if path == "/predict":
            route, path_model = self.default_route, None
        else:
            named = WITH_MODEL.match(path)
            if named is None:
                raise HandOver
            route, path_model = self.named_route, named.group(1)
        length = environ.get("CONTENT_LENGTH", "")
        kind = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        if kind != "application/json" or not length.isdigit() or int(length) > self.max_bytes:
            raise HandOver
        return route, path_model, int(length)

    def _principal(self, environ: dict[str, Any], address: str, route: Route) -> Principal | None:
        if not self.enabled:
            return None  # simple mode: as the Flask path, credentials are not looked at
        if self.auth.is_suspect(address):
            raise HandOver  # Flask counts and throttles invalid credentials
        sent = Credentials(
            environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_X_API_KEY"), address
        )
        principal = self.auth.identify(sent)
        if principal is None or not route.needs <= principal.scopes:
            raise HandOver
        return principal

    def _predict(
        self, environ: dict[str, Any], route: Route, path_model: str | None, length: int
    ) -> bytes:
        raw = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(raw)  # for Flask, should it be handed over
        if len(raw) != length:
            raise HandOver  # the client sent less than it announced
        body = parse_json_object(raw, max_depth=self.max_depth)
        if not body.keys() <= route.fields:
            raise HandOver  # Flask names the unknown field
        model, data = self.inference.prepare(body, path_model)
        if not self.inference.inline(model, length):
            raise HandOver  # a slow model runs on an inference thread
        return self.inference.payload(model, data)


def init_app(app: Flask) -> None:
    app.wsgi_app = PredictionLane(app)  # type: ignore[method-assign]
