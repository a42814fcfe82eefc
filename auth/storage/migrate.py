"""Copying every record from one backend to another (`python run.py storage migrate`).

The target gets the same stores (names, shapes, indexes) as the source. Nothing is written until
every store of the target has been found empty (or `force` says to replace what it holds); each
store is then written in one change, and read back through a fresh view of the target and
compared with the source record by record, so a copy that differs in any record is reported,
never taken for done. The token signing secret goes along, so tokens signed before the move stay
valid after it, and so do the audit events (appended after any the target holds, with `force`:
a second run after a failed one repeats them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import Record, Storage, Store, Transaction


class MigrationRefused(Exception):
    """The target holds data (without force), or the copy does not match; the message says."""


@dataclass(frozen=True)
class Copied:
    store: str
    records: int


def migrate(
    source: Storage,  # stopped, or serving (a backup): each store is copied as one version
    target: Storage,
    *,
    force: bool = False,
    reopen: Callable[[], Storage] | None = None,
    whole: bool = True,
) -> list[Copied]:
    """Copy every store of `source` into `target`, and when `whole` the kept secret and the
    audit events too; `reopen` makes a fresh view of the target to verify through (default:
    `target` itself)."""
    pairs = [(store, _twin(target, store)) for store in source.stores()]
    held = [f"{twin.name} ({len(twin)} records)" for _, twin in pairs if len(twin)]
    secret = source.kept_secret() if whole else None
    kept = target.kept_secret() if whole else None
    if kept is not None and kept != secret:
        held.append("a different token signing secret")
    events = list(source.audit.entries()) if whole else []
    if events and next(iter(target.audit.entries()), None) is not None:
        held.append("audit events (the copied ones would follow them)")
    if held and not force:
        raise MigrationRefused(
            f"{target.describe()} already holds {', '.join(held)}; pass --force to replace it"
        )
    copied, written = [], []
    for store, twin in pairs:
        records = dict(store.records())  # one version: the source may be serving meanwhile
        twin.update(_replace_all(records))
        copied.append(Copied(store.name, len(records)))
        written.append(records)
    if secret is not None:
        target.replace_secret(secret)
    for event in events:
        target.audit.append(event)
    if events:
        copied.append(Copied("audit", len(events)))
    check = reopen() if reopen is not None else target
    try:
        for (store, _), records in zip(pairs, written, strict=True):
            _verify(store.name, records, _twin(check, store))
        if secret is not None and check.kept_secret() != secret:
            raise MigrationRefused(f"the token signing secret in {target.describe()} differs")
    finally:
        if check is not target:
            check.close()
    return copied


def _twin(target: Storage, store: Store) -> Store:
    twin = target.store(
        store.name, collection=store.collection, shape=store.shape, indexes=store.indexes
    )
    twin.open()
    return twin


def _replace_all(records: dict[str, Record]) -> Callable[[Transaction], Any]:
    def change(items: Transaction) -> None:
        for record_id in [i for i in items if i not in records]:
            del items[record_id]
        for record_id, record in records.items():
            items[record_id] = record

    return change


def _verify(name: str, expected: dict[str, Record], twin: Store) -> None:
    found = dict(twin.records())
    for record_id in sorted(expected.keys() | found.keys()):
        if expected.get(record_id) != found.get(record_id):
            raise MigrationRefused(
                f"record {record_id!r} of {name} differs after the copy; the target is "
                "left as it is: run the migration again with --force"
            )
