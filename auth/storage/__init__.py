"""Where the auth state lives: one interface (`base.py`), a backend per module.

`open_storage` builds the backend the configuration names; callers then use only the `Storage`
and `Store` interfaces.
"""

from __future__ import annotations

from pathlib import Path

from .base import UNCHANGED, Record, Storage, Store, StoreCorrupt, Transaction
from .json import JsonStorage, secure_dir

__all__ = [
    "UNCHANGED",
    "Record",
    "Storage",
    "Store",
    "StoreCorrupt",
    "Transaction",
    "open_storage",
    "secure_dir",
]


def open_storage(
    *, data_dir: Path, lock_timeout: float = 10.0, maintained: bool = False
) -> Storage:
    """The backend the configuration names. `maintained`: the caller asks for upkeep
    (`Storage.maintain`) off its requests, as the server does; otherwise writes do it."""
    return JsonStorage(data_dir, lock_timeout=lock_timeout, maintained=maintained)
