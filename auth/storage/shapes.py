"""The shape of every record the stores hold, checked when a record is read from disk or written.

Data on disk is input too: an operator may edit a file by hand, a disk may flip a byte, an older
or newer version may have written it. A store checks each record against its shape when it
parses a snapshot, when it applies a journal line and before it writes a record, so a record
that would make a route fail (an unknown role, a missing `is_active`, a timestamp that does not
parse) is found at once and named (file, record id, field) instead of answering 500 later. The
records of a sealed snapshot (`snapshot.py`) are not checked again: they were checked before
they were written, and the seal says the lines are unchanged. Unknown fields are refused too: a
misspelt field must never be silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso(ts: float) -> str:
    """`ts` (seconds since the epoch) as the UTC timestamp the stores hold."""
    return datetime.fromtimestamp(int(ts), timezone.utc).strftime(TIMESTAMP_FORMAT)


def epoch(value: str) -> int:
    """A stored UTC timestamp as seconds since the epoch."""
    return int(datetime.strptime(value, TIMESTAMP_FORMAT).replace(tzinfo=timezone.utc).timestamp())


@dataclass(frozen=True)
class Field:
    """What one field must hold: one of `kinds` (None allowed only if listed), optionally
    passing `check`, which returns what was expected when the value does not fit."""

    kinds: tuple[type | None, ...]
    required: bool = True
    check: Callable[[Any], str | None] | None = None


Shape = Mapping[str, Field]


def one_of(choices: Any) -> Callable[[Any], str | None]:
    allowed = sorted(choices)

    def check(value: Any) -> str | None:
        return None if value in allowed else f"one of {', '.join(map(repr, allowed))}"

    return check


def list_of(choices: Any) -> Callable[[Any], str | None]:
    allowed = frozenset(choices)

    def check(value: Any) -> str | None:
        if all(isinstance(v, str) and v in allowed for v in value):
            return None
        return f"a list drawn from {', '.join(sorted(allowed))}"

    return check


def timestamp(value: Any) -> str | None:
    return None if TIMESTAMP.match(value) else "a UTC time such as 2026-01-31T12:00:00Z"


def strings(value: Any) -> str | None:
    return None if all(isinstance(v, str) for v in value) else "a list of strings"


def _kind_name(kind: type | None) -> str:
    names = {str: "a string", bool: "true or false", int: "an integer", list: "a list"}
    return "null" if kind is None else names.get(kind, "an object")


def _fits(value: Any, kind: type | None) -> bool:
    if kind is None:
        return value is None
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def record_problem(shape: Shape, record_id: str, record: dict[str, Any]) -> str | None:
    """Why `record` does not fit `shape` (naming the field), or None."""
    for name in record:
        if name not in shape:
            return f"field {name!r} is not one this server knows"
    for name, field in shape.items():
        if name not in record:
            if field.required:
                return f"field {name!r} is missing"
            continue
        value = record[name]
        if not any(_fits(value, kind) for kind in field.kinds):
            expected = " or ".join(_kind_name(k) for k in field.kinds)
            return f"field {name!r} must be {expected}, not {value!r}"
        if value is not None and field.check is not None:
            problem = field.check(value)
            if problem:
                return f"field {name!r} must be {problem}, not {value!r}"
    if "id" in shape and record["id"] != record_id:
        return f"field 'id' must equal the record's key {record_id!r}"
    return None
