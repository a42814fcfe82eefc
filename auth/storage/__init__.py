"""Where the auth state lives: one interface (`base.py`), a backend per module.

`open_storage` builds the backend the configuration names; callers then use only the `Storage`
and `Store` interfaces.
"""

from __future__ import annotations

from pathlib import Path

from .base import UNCHANGED, AuditTrail, Record, Storage, Store, StoreCorrupt, Transaction
from .json import JsonStorage, fsync_dir, secure_dir

__all__ = [
    "AuditTrail",
    "UNCHANGED",
    "Record",
    "Storage",
    "Store",
    "StoreCorrupt",
    "Transaction",
    "open_storage",
    "fsync_dir",
    "secure_dir",
]


def open_storage(
    *,
    backend: str = "json",
    data_dir: Path,
    lock_timeout: float = 10.0,
    maintained: bool = False,
    redis_url: str | None = None,
    redis_prefix: str = "inference",
    redis_stale_seconds: float = 30.0,
    audit_max_bytes: int = 10 * 1024 * 1024,
    audit_backups: int = 5,
    redis_audit_entries: int = 100_000,
) -> Storage:
    """The backend the configuration names: `json` (files in `data_dir`) or `redis`
    (`redis_url`). `maintained`: the caller asks for upkeep (`Storage.maintain`) off its
    requests, as the server does; otherwise writes do it. The audit trail keeps `audit.log`
    and `audit_backups` rotated files of `audit_max_bytes`, or `redis_audit_entries` events."""
    if backend == "json":
        return JsonStorage(
            data_dir,
            lock_timeout=lock_timeout,
            maintained=maintained,
            audit_max_bytes=audit_max_bytes,
            audit_backups=audit_backups,
        )
    if backend == "redis" and redis_url:
        from .redis import RedisStorage  # imports the redis package, needed only here

        return RedisStorage(
            redis_url,
            prefix=redis_prefix,
            stale_seconds=redis_stale_seconds,
            timeout=lock_timeout,
            audit_entries=redis_audit_entries,
        )
    raise ValueError(f"unknown storage backend {backend!r} (or no redis_url): json or redis")
