"""API keys: format, storage and lookup.

A key looks like `sk_live_` + 32 base62 characters (190 random bits) + a 6-character base62
CRC32 of those 32 characters. The fixed prefix and the checksum let secret scanners recognise a
leaked key without asking us, and let the server refuse a mistyped key before any lookup.

Only the SHA-256 of the key is stored (the key is already high-entropy, so a slow hash would add
cost without adding safety) together with a short display prefix. `KEY_INDEXES["hash"]` is a
unique index of the keys store (`indexes.py`) from that hash to the key id, built on first use
(a server worker builds it before its first request) and then updated by every change the
process applies, so looking a hash up is one dict access whatever the number of keys. The
other two indexes list a user's keys and the keys made through a key (`parent_id`).

`last_used` lives in a separate store so that recording use never writes to the keys store,
whose every change each worker reads and applies; it is noted at most once a minute per key and
written in batches (`usage.py`).
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import string
import zlib
from typing import Any

from .access import pattern_list
from .config import rate_limit_problem
from .storage.indexes import Index
from .storage.shapes import Field, list_of, timestamp

PREFIX = "sk_live_"
BODY_LENGTH = 32
CHECKSUM_LENGTH = 6
DISPLAY_LENGTH = len(PREFIX) + 4
KEY_LENGTH = len(PREFIX) + BODY_LENGTH + CHECKSUM_LENGTH
LAST_USED_EVERY_SECONDS = 60
MAX_CONCURRENT = 1000  # predictions in flight per key, at most
_ALPHABET = string.digits + string.ascii_letters


def key_shape(scopes: frozenset[str]) -> dict[str, Field]:
    """The shape of a key record, its scopes drawn from `scopes`."""
    return {
        "id": Field((str,)),
        "user_id": Field((str,)),
        "name": Field((str,)),
        "description": Field((str, None), required=False),
        "prefix": Field((str,)),
        "hash": Field((str,)),
        "scopes": Field((list,), check=list_of(scopes)),
        "is_active": Field((bool,)),
        "created_at": Field((str,), check=timestamp),
        "expires_at": Field((str, None), check=timestamp),
        "revoked_at": Field((str, None), required=False, check=timestamp),
        "parent_id": Field((str, None), required=False),
        "models": Field((list, None), required=False, check=pattern_list),
        "rate_limit": Field((str, None), required=False, check=rate_limit_problem),
        "max_concurrent": Field((int, None), required=False, check=concurrency),
    }


def concurrency(value: Any) -> str | None:
    """The check of a key's `max_concurrent`."""
    if type(value) is int and 1 <= value <= MAX_CONCURRENT:
        return None
    return f"an integer from 1 to {MAX_CONCURRENT}"


USAGE_SHAPE = {"last_used": Field((str,), check=timestamp)}


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def generate_key() -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(BODY_LENGTH))
    return PREFIX + body + _checksum(body)


def well_formed(key: str) -> bool:
    """True if `key` has our prefix, length, alphabet and a matching checksum."""
    if len(key) != KEY_LENGTH or not key.isascii() or not key.startswith(PREFIX):
        return False
    body, check = key[len(PREFIX) : -CHECKSUM_LENGTH], key[-CHECKSUM_LENGTH:]
    return all(c in _ALPHABET for c in body) and secrets.compare_digest(check, _checksum(body))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


@functools.lru_cache(maxsize=4096)
def lookup_digest(key: str) -> str | None:
    """The stored form of a presented key, or None if it is not well formed.

    Cached because services present the same key on every request; a miss costs a checksum and
    a SHA-256, a hit one dict access.
    """
    return hash_key(key) if well_formed(key) else None


KEY_INDEXES = {
    "hash": Index(lambda r: (r["hash"],)),
    "user": Index(lambda r: (r["user_id"],), unique=False),
    "parent": Index(
        lambda r: (r["parent_id"],) if r.get("parent_id") else (),
        unique=False,
        only_if=b'"parent_id":"',
    ),
}


def public_view(record: dict[str, Any], last_used: str | None) -> dict[str, Any]:
    """What a key's owner may see about it: never the hash."""
    return {
        "id": record["id"],
        "name": record["name"],
        "description": record.get("description"),
        "prefix": record["prefix"],
        "scopes": record["scopes"],
        "is_active": record["is_active"],
        "created_at": record["created_at"],
        "expires_at": record.get("expires_at"),
        "revoked_at": record.get("revoked_at"),
        "last_used": last_used,
        "user_id": record["user_id"],
        "models": record.get("models"),
        "rate_limit": record.get("rate_limit"),
        "max_concurrent": record.get("max_concurrent"),
    }
