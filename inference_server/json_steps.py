"""Parsing and encoding large JSON documents in small steps.

`json.loads` and `json.dumps` are single C calls that hold the GIL from start to end: 0.8 s and
0.3 s for a body of a million rows. Moving them to a thread does not help the worker's event
loop, which needs the GIL to answer anything. Here the outer levels of a document (the body
object and the arrays in it) are walked in Python and each element is decoded or encoded by the
C code on its own, so the GIL changes hands between elements and the loop is never held for
more than a few milliseconds. Results are the same as `json.loads` / `json.dumps` compact.
"""

from __future__ import annotations

import gc
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson

SPLIT_LEVELS = 2  # the body object, then the arrays it holds; deeper values decode whole
ROWS_PER_STEP = 10_000

_DECODER = json.JSONDecoder()
_SCAN = _DECODER.scan_once
_SPACE = re.compile(r"[ \t\n\r]*")
_pauses = {"count": 0, "was_enabled": True}
_pause_lock = threading.Lock()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause automatic cyclic garbage collection while large documents are built.

    A full collection walks every tracked object while holding the GIL: 80 ms and more once a
    million rows of lists exist, long enough to stall the event loop on its own. Reference
    counting still frees everything these documents leave behind (they hold no cycles).
    """
    with _pause_lock:
        if _pauses["count"] == 0:
            _pauses["was_enabled"] = gc.isenabled()
            gc.disable()
        _pauses["count"] += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses["count"] -= 1
            if _pauses["count"] == 0 and _pauses["was_enabled"]:
                gc.enable()


def loads(raw: bytes | str) -> Any:
    """Like `json.loads` (UTF-8 only); raises ValueError for text that is not JSON."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    value, end = _value(text, _skip(text, 0), 0)
    if _skip(text, end) != len(text):
        raise ValueError("extra data after the JSON value")
    return value


def _skip(text: str, at: int) -> int:
    return _SPACE.match(text, at).end()  # type: ignore[union-attr]


def _value(text: str, at: int, level: int) -> tuple[Any, int]:
    opener = text[at : at + 1]
    if level < SPLIT_LEVELS and opener == "[":
        return _array(text, at, level)
    if level < SPLIT_LEVELS and opener == "{":
        return _object(text, at, level)
    return _scan(text, at)


def _scan(text: str, at: int) -> tuple[Any, int]:
    try:
        return _SCAN(text, at)
    except StopIteration:
        raise ValueError(f"invalid JSON at character {at}") from None


def _array(text: str, at: int, level: int) -> tuple[list[Any], int]:
    items: list[Any] = []

    def read(at: int) -> int:
        item, at = _value(text, at, level + 1)
        items.append(item)
        return at

    return items, _members(text, at, "]", read)


def _object(text: str, at: int, level: int) -> tuple[dict[str, Any], int]:
    members: dict[str, Any] = {}

    def read(at: int) -> int:
        if text[at : at + 1] != '"':
            raise ValueError(f"expected a property name at character {at}")
        key, at = _scan(text, at)
        at = _skip(text, at)
        if text[at : at + 1] != ":":
            raise ValueError(f"expected ':' at character {at}")
        members[key], at = _value(text, _skip(text, at + 1), level + 1)
        return at

    return members, _members(text, at, "}", read)


def _members(text: str, at: int, closer: str, read: Callable[[int], int]) -> int:
    """Read the comma-separated members of the container opened at `at` with `read` (which
    returns where a member ends) up to `closer`; returns the position after it."""
    at = _skip(text, at + 1)
    if text[at : at + 1] == closer:
        return at + 1
    while True:
        at = _skip(text, read(at))
        mark = text[at : at + 1]
        if mark == closer:
            return at + 1
        if mark != ",":
            raise ValueError(f"expected ',' or {closer!r} at character {at}")
        at = _skip(text, at + 1)


class _Large(TypeError):
    """An array too large to encode in one C call (`dumps` then goes a slice at a time)."""


def _small_array(value: Any) -> Any:
    if isinstance(value, np.ndarray) and (value.ndim == 0 or len(value) <= ROWS_PER_STEP):
        return value.tolist()
    raise _Large


def dumps(value: Any) -> str:
    """Compact JSON of dicts, lists, scalars and NumPy arrays, arrays encoded a slice of rows at
    a time. A document whose arrays are all small is encoded in one orjson call (most answers:
    a few microseconds instead of a walk in Python); numbers come out as Python writes them
    (`tolist`), and a NaN or infinity as null, which JSON can hold."""
    try:
        return orjson.dumps(value, default=_small_array).decode()
    except TypeError:
        return _stepped(value)


def _stepped(value: Any) -> str:
    if isinstance(value, np.ndarray):
        if value.ndim == 0 or len(value) <= ROWS_PER_STEP:
            return json.dumps(value.tolist(), separators=(",", ":"))
        steps = (
            json.dumps(value[i : i + ROWS_PER_STEP].tolist(), separators=(",", ":"))[1:-1]
            for i in range(0, len(value), ROWS_PER_STEP)
        )
        return "[" + ",".join(steps) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_stepped(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_stepped(v) for v in value) + "]"
    return json.dumps(value, separators=(",", ":"))
