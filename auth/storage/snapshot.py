"""The snapshot file of a store: one JSON document, one record per line, sealed by a hash.

    {"schema_version":2,"generation":7,"seal":"<32 hex digits>","users":{
    "usr_1a2b":{...},
    "usr_3c4d":{...}
    }}

A person can read and edit it like any JSON file. The seal is the first 32 hex digits of the
SHA-256 of the record lines: every byte after the first line up to the closing `}}`. It is a
checksum, not a signature: it says the lines are as this module wrote them, from records that
were checked before they were committed, unless someone recomputed it. A snapshot whose first
line has exactly that form and names the expected collection, that ends with `}}` and whose
seal matches, loads by cutting the lines apart, with no parsing and no per-record check (a line
whose id holds a backslash is parsed). Anything else is parsed whole and every record checked, so
a bad one is named before it is served, and `parse` says which of two kinds it was: the previous
version's single document (`schema_version` 1, an `UPGRADE`) or a file of this format that is no
longer as this module wrote it (an `EDIT` by hand, or a flipped byte that still parses). The store
treats them differently (`json.py`): an upgrade is converted to a sealed snapshot at once, an edit
is first checked against the journal written on top of it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from .base import StoreCorrupt, encode

FORMAT = 2  # schema_version written; 1 (one JSON document, no journal) still loads
# What a snapshot file was found to be.
SEALED = "sealed"  # as this module wrote it: records unchecked, lines cut apart
UPGRADE = "upgrade"  # the previous version's document (schema_version 1)
EDIT = "edit"  # this format, but not as written: edited by hand
_HEADER = re.compile(rb'^\{"schema_version":2,"generation":(\d+),"seal":"([0-9a-f]{32})",')
_END = b"}}\n"

Record = dict[str, Any]
Check = Callable[[Path, str, Any], None]


def _seal(body: bytes | memoryview) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


def render(records: dict[str, bytes], *, generation: int, collection: str) -> list[bytes]:
    """The snapshot of `records` (id -> encoded record), as chunks to write in order."""
    body = b"".join(orjson.dumps(i) + b":" + raw + b",\n" for i, raw in records.items())
    if body:
        body = body[:-2] + b"\n"
    head = orjson.dumps({"schema_version": FORMAT, "generation": generation})[:-1]
    head += f',"seal":"{_seal(body)}","{collection}":{{\n'.encode()
    return [head, body, _END]


def parse(
    raw: bytes,
    *,
    path: Path,
    collection: str,
    check: Check,
    split: bool = True,
    seal_checked: bool = False,
) -> tuple[dict[str, bytes], int, str]:
    """The records (id -> encoded record) and generation of snapshot `raw`, and what it was
    (`SEALED`, `UPGRADE` or `EDIT`); StoreCorrupt (naming `path`, record and field) if it is not
    a valid snapshot of `collection`. With `split` false a sealed snapshot's records are only
    vouched for, not returned; `seal_checked` says this very file's seal was checked already."""
    # Offsets into `raw`, not slices of it: a copy of a 40 MB snapshot would outlive the load
    # in the allocator's heap.
    start = raw.find(b"\n", 0, 4096) + 1
    head = raw[: start - 1] if start else b""
    sealed = _HEADER.match(head)
    end = len(raw) - len(_END)
    if sealed and head.endswith(b'"' + collection.encode() + b'":{') and raw.endswith(_END):
        if seal_checked or _seal(memoryview(raw)[start:end]) == sealed.group(2).decode():
            return (_split_lines(raw, start, end) if split else {}), int(sealed.group(1)), SEALED
    return _parse_document(raw, path=path, collection=collection, check=check)


def sealed_generation(path: str) -> int | None:
    """The generation of the snapshot at `path` read from a sealed first line (its seal is not
    checked), 0 when there is no file, or None when only a full read can tell (an earlier
    format, a hand edit of that line)."""
    try:
        with open(path, "rb") as fh:
            first = fh.read(4096)
    except FileNotFoundError:
        return 0
    header = _HEADER.match(first)
    return int(header.group(1)) if header else None


def _split_lines(raw: bytes, pos: int, size: int) -> dict[str, bytes]:
    """Records of a sealed snapshot (lines between offsets `pos` and `size` of `raw`): one
    `"id":{...},` per line, cut out without parsing."""
    records = {}
    find = raw.find
    while pos < size:
        cut = find(b'":', pos)
        end = find(b"\n", cut)
        raw_id = raw[pos + 1 : cut]
        stop = end - 1 if raw[end - 1] == 44 else end  # 44: the comma between records
        if 92 in raw_id:  # a backslash: an id with escapes, let the parser read the line
            ((record_id, record),) = orjson.loads(b"{" + raw[pos:stop] + b"}").items()
            records[record_id] = encode(record)
        else:
            records[raw_id.decode()] = raw[cut + 2 : stop]
        pos = end + 1
    return records


def _parse_document(
    raw: bytes, *, path: Path, collection: str, check: Check
) -> tuple[dict[str, bytes], int, str]:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StoreCorrupt(f"data file {path} is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise StoreCorrupt(f"data file {path}: expected a JSON object")
    version = document.get("schema_version")
    if version not in (1, FORMAT):
        raise StoreCorrupt(
            f"data file {path}: schema_version {version!r}, this server reads versions 1 and "
            f"{FORMAT}"
        )
    generation = document.get("generation", 0)
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise StoreCorrupt(f"data file {path}: 'generation' must be a whole number")
    items = document.get(collection)
    if not isinstance(items, dict):
        raise StoreCorrupt(f"data file {path}: '{collection}' must map ids to objects")
    for record_id, record in items.items():
        check(path, record_id, record)
    records = {record_id: encode(record) for record_id, record in items.items()}
    return records, generation, UPGRADE if version == 1 else EDIT
