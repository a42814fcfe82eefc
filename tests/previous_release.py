"""A data dir as the previous release wrote it, for the upgrade tests and `benchmarks/scale.py`.

That release kept each store as one JSON document, `{"schema_version": 1, "<collection>":
{id: record}}`, written whole with `json.dump(..., separators=(",", ":"), sort_keys=True)` on
every change, with no journal and no change counter beside it. `downgrade` turns a data dir this
release wrote into that: the records are the same, only their files differ.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SEALED_KEYS = {"schema_version", "generation", "seal"}


def downgrade(data_dir: Path) -> list[str]:
    """Rewrite every store in `data_dir` (a snapshot with its journal) as the previous release
    wrote it; returns the store names. Fold the journals first (`storage compact`): only the
    snapshots' records are kept."""
    names = []
    for journal in sorted(data_dir.glob("*.journal.jsonl")):
        name = journal.name.removesuffix(".journal.jsonl")
        if journal.read_bytes().count(b"\n") > 1:
            raise ValueError(f"{journal} holds changes: fold it first")
        snapshot = data_dir / f"{name}.json"
        document = json.loads(snapshot.read_bytes())
        (collection,) = set(document) - SEALED_KEYS
        write_store(snapshot, collection, document[collection])
        journal.unlink()
        (data_dir / f"{name}.json.changes").unlink(missing_ok=True)
        names.append(name)
    return names


def write_store(path: Path, collection: str, records: dict) -> None:
    """One store file of the previous release."""
    with open(path, "w") as fh:
        json.dump(
            {"schema_version": 1, collection: records}, fh, separators=(",", ":"), sort_keys=True
        )
    os.chmod(path, 0o600)
