"""The journal file of a store: a first line naming its generation, then one line per change.

    {"generation":7,"snapshot":[ino, mtime_ns, size],"from":[ino, mtime_ns, size]}
    {"put":{"usr_1a2b":{...}},"was":{"usr_1a2b":"<16 hex digits>"}}
    {"put":{"key_3c4d":{...}},"delete":["key_5e6f"],"was":{"key_3c4d":null,"key_5e6f":"..."}}

`snapshot` and `from` are there after a compaction: the stamps of the snapshot written with this
journal and of the one it was folded from, so that a process that applied the previous journal
on top of that very snapshot knows the new one holds nothing else (one that loaded another, a
snapshot edited by hand, reads the new one instead).
A change is one line, so a change of several records (revoking a key and the keys made through
it) is applied whole or not at all; a line without its newline is a torn write and not a change.

`was` holds, for each record the line puts or deletes, a short hash of the record's encoded bytes
before the change (`digest`), or null when it did not exist. It costs nothing to write (the writer
has those bytes at hand) and is only read when the snapshot below the journal was edited by hand:
then the first change of each record must start from the record the snapshot holds, else the
operator edited a record the journal also changed, and replaying the journal would silently drop
the edit (`json.py` refuses instead). Lines written without it (by an earlier version, or by a
writer that did not read the store first: key use) are applied as they are.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson

from .base import StoreCorrupt

Record = dict[str, Any]


Stamp = tuple[int, int, int]  # (inode, mtime_ns, size) of a file


def header_line(
    generation: int, snapshot: Stamp | None = None, *, folded_from: Stamp | None = None
) -> bytes:
    header: dict[str, Any] = {"generation": generation}
    if snapshot is not None:
        header["snapshot"] = snapshot
    if folded_from is not None:
        header["from"] = folded_from
    return orjson.dumps(header) + b"\n"


def digest(raw: bytes) -> str:
    """The short hash of a record's encoded bytes that `was` holds."""
    return hashlib.sha256(raw).hexdigest()[:16]


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


def change_line(
    puts: dict[str, bytes], deletes: list[str], was: dict[str, str | None] | None = None
) -> bytes:
    """The line of one change: records to put (already encoded), ids to delete and, when the
    writer knows them, the digests of those records before the change (None: did not exist)."""
    parts = []
    if puts:
        body = b",".join(orjson.dumps(i) + b":" + raw for i, raw in puts.items())
        parts.append(b'"put":{' + body + b"}")
    if deletes:
        parts.append(b'"delete":' + orjson.dumps(deletes))
    if was:
        parts.append(b'"was":' + orjson.dumps(was))
    return b"{" + b",".join(parts) + b"}\n"


def parse_change(
    line: bytes, path: Path, offset: int
) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
    """The puts, deletes and `was` digests of one line (found at byte `offset` of `path`)."""
    try:
        change = orjson.loads(line)
        puts, deletes = change.get("put", {}), change.get("delete", [])
        was = change.get("was", {})
        if not isinstance(puts, dict) or not isinstance(deletes, list):
            raise ValueError("'put' must be an object and 'delete' a list")
        if not isinstance(was, dict):
            raise ValueError("'was' must be an object")
    except (ValueError, AttributeError) as exc:
        raise StoreCorrupt(f"data file {path}: bad line at byte {offset} ({exc})") from None
    return puts, deletes, was


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
