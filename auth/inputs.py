"""Reading request bodies: one place that turns bad input into a 400 naming the field."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import date
from typing import Any

from flask import current_app, request

from .errors import ValidationError
from .ledger import usage_range
from .openapi import body_schema

_MISSING = object()
FORM = "application/x-www-form-urlencoded"
DEFAULT_MAX_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_EMPTY_PAIR = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nested_deeper_than(raw: bytes, limit: int) -> bool:
    """True if the JSON text `raw` nests arrays and objects more than `limit` deep.

    Found without recursion and at C speed, before any parser recurses: strings are blanked (they
    may hold brackets), everything but brackets dropped, then each pass deletes the innermost
    empty pairs, so `limit` passes empty any document no deeper than `limit`. Text whose
    brackets do not pair up is left for the parser to refuse.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    skeleton = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        shorter = _EMPTY_PAIR.sub(b"", skeleton)
        if not shorter or shorter == skeleton:
            return False
        skeleton = shorter
    return True


def json_body(*, allow_form: bool = False) -> dict[str, Any]:
    """The request body as a dict: JSON, or form-urlencoded where `allow_form`; a field the
    view does not declare is refused (`refuse_unknown_fields`)."""
    if allow_form and request.mimetype == FORM:
        body = request.form.to_dict()
    else:
        body = parse_json_object(json_bytes(allow_form=allow_form), max_depth=max_json_depth())
    return refuse_unknown_fields(body)


def refuse_unknown_fields(body: dict[str, Any]) -> dict[str, Any]:
    """`body`, if it holds only the fields the current view declares (`openapi.doc`): a
    misspelt field, or a body meant for another API, must be an error rather than a guess."""
    schema = body_schema(current_app.view_functions.get(request.endpoint or ""))
    if schema is None or schema.get("additionalProperties", True):
        return body
    allowed = schema["properties"]
    unknown = [name for name in body if name not in allowed]
    if unknown:
        raise ValidationError(
            f"unknown field {unknown[0]!r}; this endpoint takes: {', '.join(allowed)}"
            + _form_hint(),
            details={"field": unknown[0], "allowed": list(allowed)},
        )
    return body


def max_json_depth() -> int:
    return current_app.config.get("MAX_JSON_DEPTH", DEFAULT_MAX_DEPTH)


def json_bytes(*, allow_form: bool = False) -> bytes:
    """The raw body of a request that says it is JSON; 400 for any other content type."""
    if not request.is_json:
        expected = "a JSON object" + (" or a form-urlencoded body" if allow_form else "")
        raise ValidationError(
            f"request body must be {expected} with Content-Type: application/json",
            details={"expected": expected},
        )
    return request.get_data(cache=True)


def parse_json_object(
    raw: bytes, *, max_depth: int, loads: Callable[[bytes], Any] = json.loads
) -> dict[str, Any]:
    """`raw` parsed by `loads` as a JSON object, its depth checked before any parser recurses.

    Needs no request context, so a large body can be parsed on a worker thread.
    """
    if nested_deeper_than(raw, max_depth):
        raise ValidationError(
            f"request body nests arrays or objects more than {max_depth} levels deep",
            details={"max_depth": max_depth},
        )
    try:
        body = loads(raw)
    except (ValueError, RecursionError):
        raise ValidationError(
            "request body is not valid JSON", details={"expected": "a JSON object"}
        ) from None
    if not isinstance(body, dict):
        raise ValidationError("request body must be a JSON object", details={"expected": "object"})
    return body


def _form_hint() -> str:
    # `curl -d '{"username": ...}'` sends a form: the JSON arrives as one form field's name.
    if request.mimetype == FORM:
        return " (the body was read as form data; send Content-Type: application/json)"
    return ""


def text(
    body: dict[str, Any],
    name: str,
    *,
    required: bool = True,
    max_len: int = 256,
    min_len: int = 1,
) -> str | None:
    """A string field of `body`, stripped of nothing, bounded in length."""
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise ValidationError(f"'{name}' is required{_form_hint()}", details={"field": name})
        return None
    if not isinstance(value, str):
        raise ValidationError(f"'{name}' must be a string", details={"field": name})
    if not min_len <= len(value) <= max_len:
        raise ValidationError(
            f"'{name}' must be {min_len} to {max_len} characters long", details={"field": name}
        )
    return value


def integer(body: dict[str, Any], name: str, *, low: int, high: int) -> int | None:
    """An optional integer field of `body` within [low, high]."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(
            f"'{name}' must be an integer from {low} to {high}", details={"field": name}
        )
    return value


def string_list(body: dict[str, Any], name: str, *, choices: frozenset[str]) -> list[str] | None:
    """An optional list of strings of `body`, each one of `choices`."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v in choices for v in value):
        raise ValidationError(
            f"'{name}' must be a list drawn from: {', '.join(sorted(choices))}",
            details={"field": name},
        )
    return sorted(set(value))


def query_int(name: str, default: int, *, low: int, high: int) -> int:
    """The integer query parameter `name` within [low, high] (`default` when absent)."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ValidationError(
            f"'{name}' must be an integer from {low} to {high}", details={"field": name}
        )
    return int(raw)


def usage_query(now: float) -> tuple[date, date, str]:
    """The days and grouping of a usage request's query (`from`, `to`, `group_by`)."""
    args = request.args
    return usage_range(args.get("from"), args.get("to"), args.get("group_by"), now=now)
