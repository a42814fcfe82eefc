"""The journal file of a store: a first line naming its generation, then one line per change.

    {"generation":7,"snapshot":[ino, mtime_ns, size]}
    {"put":{"usr_1a2b":{...}}}
    {"put":{"key_3c4d":{...}},"delete":["key_5e6f"]}

`snapshot` is there after a compaction: the stamp of the snapshot written with this journal, so
that a process that applied the previous journal knows the new snapshot holds nothing else.
A change is one line, so a change of several records (revoking a key and the keys made through
it) is applied whole or not at all; a line without its newline is a torn write and not a change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from .base import StoreCorrupt

Record = dict[str, Any]


def header_line(generation: int, snapshot: tuple[int, int, int] | None = None) -> bytes:
    header: dict[str, Any] = {"generation": generation}
    if snapshot is not None:
        header["snapshot"] = snapshot
    return orjson.dumps(header) + b"\n"


def read_header(fd: int, path: Path) -> tuple[dict[str, Any], int]:
    """The first line of the journal open as `fd`, and where the changes start."""
    first = os.pread(fd, 4096, 0).partition(b"\n")
    try:
        if not first[1]:
            raise ValueError("no complete first line")
        header = orjson.loads(first[0])
        if not isinstance(header["generation"], int):
            raise ValueError("generation must be a number")
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreCorrupt(f"data file {path}: bad first line ({exc})") from None
    return header, len(first[0]) + 1


def change_line(puts: dict[str, bytes], deletes: list[str]) -> bytes:
    """The line of one change: records to put (already encoded) and ids to delete."""
    parts = []
    if puts:
        body = b",".join(orjson.dumps(i) + b":" + raw for i, raw in puts.items())
        parts.append(b'"put":{' + body + b"}")
    if deletes:
        parts.append(b'"delete":' + orjson.dumps(deletes))
    return b"{" + b",".join(parts) + b"}\n"


def parse_change(line: bytes, path: Path, offset: int) -> tuple[dict[str, Any], list[Any]]:
    """The puts and deletes of one line (found at byte `offset` of `path`)."""
    try:
        change = orjson.loads(line)
        puts, deletes = change.get("put", {}), change.get("delete", [])
        if not isinstance(puts, dict) or not isinstance(deletes, list):
            raise ValueError("'put' must be an object and 'delete' a list")
    except (ValueError, AttributeError) as exc:
        raise StoreCorrupt(f"data file {path}: bad line at byte {offset} ({exc})") from None
    return puts, deletes


def complete_lines(fd: int, start: int, end: int) -> list[bytes]:
    """The complete lines between byte `start` (a line start) and `end` of the file `fd`."""
    chunk = os.pread(fd, end - start, start)
    return chunk[: chunk.rfind(b"\n") + 1].split(b"\n")[:-1]


def end_of_last_line(fd: int) -> int:
    """Where the last complete line of the file open as `fd` ends (a torn line after it is a
    writer that died mid-append)."""
    end = os.fstat(fd).st_size
    while end > 0:
        start = max(0, end - 65536)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0
