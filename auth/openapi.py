"""The OpenAPI 3.1 description of an app, generated from its own routes and declarations.

One source of truth: the paths and methods come from `app.url_map`; who may call an operation
from the policy the server enforces (`core.EndpointPolicy`: `@public`, `public(bp)`, the
extension's public endpoints, `require_auth(scopes=...)`, the rate limit exemption); what it
takes and answers from `@doc(...)` beside the view, whose body schema is also the one the
server enforces on unknown fields (`inputs.refuse_unknown_fields`). The error answers
are added from what the operation can meet: 400 for a body or query, 401/403 for credentials and
scopes, 404 for a path parameter, 429 where limits apply, 503 where stores, models or the rate
limit storage are involved, each with the error shape and the codes of its status
(`errors.ERROR_CODES`).

A route without `@doc` is a bug the test suite names: every registered route is described.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Flask

from .errors import ERROR_CODES

F = TypeVar("F", bound=Callable[..., Any])
Schema = dict[str, Any]

DOC_ATTR = "_openapi"
_PATH_PARAM = re.compile(r"<(?:[^:>]+:)?([^>]+)>")
_HIDDEN_METHODS = {"HEAD", "OPTIONS"}

STATUS_TEXT = {
    400: "The request is invalid: the message names the field",
    401: "Credentials are missing or invalid",
    403: "The credential lacks a scope this operation needs",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict with an existing record",
    413: "The request is too large",
    414: "The URI (its query string) is too long",
    415: "Unsupported media type",
    429: "Rate limit exceeded: see Retry-After",
    503: "A store, a model or the rate limit storage cannot serve now: retry later",
}


@dataclass(frozen=True)
class Operation:
    """What `@doc` declares about a view."""

    summary: str
    responses: Mapping[int, Schema]  # success statuses and their bodies
    body: Schema | None = None
    query: Mapping[str, Schema] = field(default_factory=dict)
    path: Mapping[str, Schema] = field(default_factory=dict)  # schemas of path parameters
    errors: tuple[int, ...] = ()  # statuses beyond the ones derived (404, 409, 413, ...)
    description: str | None = None
    media: tuple[str, ...] = ("application/json",)  # of the success answers
    # What the docs page pre-fills, written to succeed as it stands on a new server: the body,
    # and path parameters by name; each a value or a function of the app (`example_of`).
    example: Any = None
    path_examples: Mapping[str, Any] = field(default_factory=dict)
    forms: bool = False  # the body may also come as application/x-www-form-urlencoded


def doc(summary: str, *, responses: Mapping[int, Schema], **options: Any) -> Callable[[F], F]:
    """Declare what a view takes and answers (see `Operation`)."""

    def attach(view: F) -> F:
        setattr(view, DOC_ATTR, Operation(summary, responses, **options))
        return view

    return attach


def example_of(app: Flask, value: Any) -> Any:
    """An example as declared: a value, or a function of the app (the server's default model,
    say)."""
    return value(app) if callable(value) else value


def declared(view: Callable[..., Any] | None) -> Operation | None:
    return getattr(view, DOC_ATTR, None)


def body_schema(view: Callable[..., Any] | None) -> Schema | None:
    """The JSON body schema a view declares, if any."""
    operation = declared(view)
    return operation.body if operation else None


# -- the document ------------------------------------------------------------------------------


def error_schema(status: int) -> Schema:
    return {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "request_id", "details"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "enum": list(ERROR_CODES[status])},
                    "message": {"type": "string"},
                    "request_id": {"type": "string"},
                    "details": {},
                },
            }
        },
    }


def _header(description: str, kind: str = "string") -> Schema:
    return {"description": description, "schema": {"type": kind}}


HEADERS = {
    "X-Request-ID": _header("the client's X-Request-ID if sane, else a new id"),
    "X-RateLimit-Limit": _header("requests allowed in the window", "integer"),
    "X-RateLimit-Remaining": _header("requests left in the window", "integer"),
    "X-RateLimit-Reset": _header("when the window resets (epoch seconds)", "integer"),
    "Retry-After": _header("seconds to wait before retrying", "integer"),
    "WWW-Authenticate": _header("how to authenticate (Bearer)"),
}


def _response(
    description: str,
    schema: Schema,
    *,
    limited: bool,
    status: int,
    media: tuple[str, ...] = ("application/json",),
) -> Schema:
    headers: dict[str, Any] = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    if limited:
        for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
            headers[name] = {"$ref": f"#/components/headers/{name}"}
    if status in (429, 503):
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    if status == 401:
        headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate"}
    return {
        "description": description,
        "headers": headers,
        "content": {kind: {"schema": schema} for kind in media},
    }


def _error_statuses(
    operation: Operation, *, public: bool, scopes: list[str], rule: Any
) -> set[int]:
    statuses = set(operation.errors) | {503}
    if operation.body is not None:
        statuses |= {400, 413}
    if operation.query:
        statuses |= {400, 414}  # a query string beyond the server's request line limit
    if not public:
        statuses.add(401)
    if scopes:
        statuses.add(403)
    if rule.arguments:
        statuses.add(404)
    return statuses


def _operation(app: Flask, rule: Any, method: str, *, auth_enabled: bool) -> Schema:
    view = app.view_functions[rule.endpoint]
    operation = declared(view)
    if operation is None:
        raise LookupError(f"route {method} {rule.rule} ({rule.endpoint}) has no @doc")
    policy = app.extensions["auth"].guard.policy(rule.endpoint)  # what the server enforces
    public = policy.public or not auth_enabled
    scopes = sorted(policy.needs) if auth_enabled else []
    limited = not policy.exempt
    statuses = _error_statuses(operation, public=public, scopes=scopes, rule=rule)
    if limited:
        statuses.add(429)
    responses = {
        str(status): _response("OK", schema, limited=limited, status=status, media=operation.media)
        for status, schema in operation.responses.items()
    }
    for status in sorted(statuses):
        responses[str(status)] = _response(
            STATUS_TEXT[status], error_schema(status), limited=limited, status=status
        )
    spec: Schema = {
        "operationId": rule.endpoint.replace(".", "_"),
        "summary": operation.summary,
        "tags": [rule.endpoint.split(".")[0] if "." in rule.endpoint else "server"],
        "responses": responses,
    }
    if operation.description:
        spec["description"] = operation.description
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": operation.path.get(name, {"type": "string", "minLength": 1}),
        }
        for name in _PATH_PARAM.findall(rule.rule)
    ]
    for parameter in parameters:
        if parameter["name"] in operation.path_examples:
            parameter["example"] = example_of(app, operation.path_examples[parameter["name"]])
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in operation.query.items()
    ]
    if parameters:
        spec["parameters"] = parameters
    if operation.body is not None:
        kinds = ("application/json", "application/x-www-form-urlencoded")
        media: Schema = {"schema": operation.body}
        if operation.example is not None:
            media["example"] = example_of(app, operation.example)
        spec["requestBody"] = {
            "required": True,
            "content": {kind: media for kind in kinds[: 2 if operation.forms else 1]},
        }
    if public:
        spec["security"] = []
    else:
        spec["security"] = [{"bearerAuth": scopes}, {"apiKeyAuth": scopes}]
    return spec


def describe(
    app: Flask,
    *,
    title: str,
    version: str,
    auth_enabled: bool = True,
    description: str | None = None,
) -> Schema:
    """The OpenAPI 3.1 document of every route of `app` (`description`: its introduction,
    Markdown)."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        path = _PATH_PARAM.sub(r"{\1}", rule.rule)
        for method in sorted(rule.methods - _HIDDEN_METHODS):
            paths.setdefault(path, {})[method.lower()] = _operation(
                app, rule, method, auth_enabled=auth_enabled
            )
    components: Schema = {"headers": HEADERS}
    if auth_enabled:
        components["securitySchemes"] = {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "an access token from POST /auth/login or /auth/refresh",
            },
            "apiKeyAuth": {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "an API key from POST /auth/api-keys (sk_live_...)",
            },
        }
    info: Schema = {"title": title, "version": version}
    if description:
        info["description"] = description
    return {
        "openapi": "3.1.0",
        "info": info,
        "paths": paths,
        "components": components,
    }
