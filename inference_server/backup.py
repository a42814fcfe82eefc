"""Backups of a data dir, and their restore onto this host or another.

A backup is a directory holding what makes a data dir: every store (written by the storage
backend, each under its lock so that its snapshot and journal are one consistent version), the
token signing secret (from wherever the backend keeps it), the audit log with its rotated
generations (under the audit lock), the downloaded models and the jobs' inputs and results
(copied after the job records, so a running job's result holds at least what its record
counts: the rest is cut when it resumes); plus `backup-manifest.json`: the
size and SHA-256 of each file and the data dir they came from. It is written into a hidden
folder beside its destination, synced, and renamed into place once complete, so a backup that
failed half-way never looks like one.

A restore copies the backup into a staging folder inside the data dir, checks every file
against the manifest and opens the stores there, all before anything of the data dir changes;
then it moves what the data dir held aside (into `replaced-<time>-*/`, never deleted) and the
restored files in, each with one rename. Model paths that point into the data dir the backup
came from are stored relative to it (`models.registry.rebase_paths`), so the downloaded models
are found in the data dir they are restored into, wherever it is.

A restore under a running server would be overwritten by it, or serve stale copies: it is
refused while another process has the data dir's stores open. Every server worker and command
maps each store's change counter (`NAME.json.changes`) into its memory, and Linux lists the
files a process maps in `/proc/PID/maps`: a scan of those costs a few milliseconds and finds
processes of the same user (all of them as root). Where there is no /proc it finds nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auth import (
    SECRET_FILE,
    ApiError,
    AuthState,
    MigrationRefused,
    StoreCorrupt,
    fsync_dir,
    secure_dir,
)

from .jobs.payloads import JOB_ID, JOBS_DIR, PAYLOAD_FILES, payload_files
from .models import state_store
from .models.download import MODELS_DIR, downloaded_files
from .models.registry import rebase_paths
from .settings import Settings

MANIFEST = "backup-manifest.json"
FORMAT = 1
# What a data dir holds that a backup carries, by its path inside the data dir. A restore copies
# nothing else, whatever else a backup directory (or its manifest) names.
STORE_FILE = re.compile(r"[A-Za-z0-9_]+\.(?:json|journal\.jsonl)")
DATA_FILE = re.compile(
    rf"{STORE_FILE.pattern}|{re.escape(SECRET_FILE)}|audit\.log(?:\.[0-9]+)?"
    rf"|{MODELS_DIR}/[A-Za-z0-9][A-Za-z0-9_.-]*"
    rf"|{JOBS_DIR}/{JOB_ID}/(?:{'|'.join(map(re.escape, PAYLOAD_FILES))})"
)
CHUNK = 1 << 20


class BackupError(Exception):
    """A backup or restore refused or failed; the message says why and what was left."""


@dataclass(frozen=True)
class Restored:
    files: list[str]
    checked: bool  # against a manifest (a backup of an older release has none)
    aside: Path | None  # where what the data dir held was moved
    replaced: list[str]
    rebased: list[str]  # models whose stored path was made relative to the data dir


def data_files(directory: Path) -> list[str]:
    """What `directory` holds of a data dir (stores, secret, audit log, downloaded models), by
    path inside it; lock files, change counters and temp files are not data."""
    try:
        top = sorted(e.name for e in os.scandir(directory) if e.is_file(follow_symlinks=False))
    except FileNotFoundError:
        return []
    models = [f"{MODELS_DIR}/{p.name}" for p in downloaded_files(directory)]
    jobs = [p.relative_to(directory).as_posix() for p in payload_files(directory)]
    found = top + models + jobs
    return [name for name in found if DATA_FILE.fullmatch(name) and name != MANIFEST]


def make_backup(state: AuthState, data_dir: Path, target: Path) -> list[str]:
    """Copy the data of `data_dir` (through `state`, under the stores' and the audit log's
    locks) into the new or empty directory `target`; returns the names copied."""
    target = target.resolve()
    if target == data_dir or data_dir in target.parents:
        raise BackupError(
            f"{target} is inside the data dir {data_dir}: a backup there is lost with it; "
            "choose a directory elsewhere"
        )
    if target.is_dir() and any(target.iterdir()):
        raise BackupError(
            f"{target} is not empty: a backup goes into a new or empty directory, so that no "
            "file of an older backup mixes with it"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        )
    except OSError as exc:
        raise BackupError(f"cannot write a backup into {target}: {exc.strerror}") from None
    try:
        copied = state.storage.backup(partial)
        secret = state.storage.kept_secret()  # data/jwt_secret, or Redis's
        if secret is not None:
            _write_new(partial / SECRET_FILE, secret.encode())
            copied.append(SECRET_FILE)
        models = downloaded_files(data_dir)
        if models:
            secure_dir(partial / MODELS_DIR)
        for model in models:
            _copy(model, partial / MODELS_DIR / model.name)
            copied.append(f"{MODELS_DIR}/{model.name}")
        for payload in payload_files(data_dir):  # after the job records: see the docstring
            name = payload.relative_to(data_dir).as_posix()
            secure_dir((partial / name).parent)
            _copy(payload, partial / name)
            copied.append(name)
        copied += state.storage.audit.copy_to(partial)
        _write_manifest(partial, copied, data_dir)
        os.rename(partial, target)  # over an empty directory too
        fsync_dir(target.parent)
    except (OSError, ApiError, MigrationRefused) as exc:  # the disk, Redis, a copy that differs
        reason = exc.description if isinstance(exc, ApiError) else exc.strerror or exc
        raise BackupError(
            f"backup into {target} failed ({reason}); nothing was left there"
        ) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already when it was renamed
    return copied


def restore_backup(settings: Settings, origin: Path, *, force: bool = False) -> Restored:
    """Copy the backup in `origin` into the data dir of `settings` (see the module's notes)."""
    data_dir, origin = settings.data_dir, origin.resolve()
    if settings.storage.backend != "json":
        raise BackupError(
            f"restore writes the files of a data dir, and storage.backend is "
            f"{settings.storage.backend}: restore into a data dir with storage.backend: json, "
            "then copy its records with `python run.py storage migrate --to redis`"
        )
    if origin == data_dir:
        raise BackupError(f"{origin} is the data dir itself, not a backup of it")
    manifest = _manifest(origin)
    names = sorted(manifest["files"]) if manifest else data_files(origin)
    if not any(STORE_FILE.fullmatch(n) for n in names):
        raise BackupError(f"{origin} is not a backup: it holds neither {MANIFEST} nor a store")
    users = processes_using(data_dir)
    if users:
        raise BackupError(
            f"the data dir {data_dir} is in use by process {', '.join(map(str, users))} (a "
            "server or a command): stop it first, a restore under it would be overwritten"
        )
    held = data_files(data_dir)
    if not force and any(STORE_FILE.fullmatch(n) or n == SECRET_FILE for n in held):
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise BackupError(
            f"the data dir {data_dir} holds data ({shown}): restore into an empty data dir, "
            "or give --force to replace it (what it holds is moved aside, not deleted)"
        )
    try:
        secure_dir(data_dir)
        staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=data_dir))
    except OSError as exc:
        raise BackupError(f"cannot write into the data dir {data_dir}: {exc.strerror}") from None
    aside = None
    try:
        for name in names:
            _stage(origin, staging, name, manifest)
        rebased = _open_staged(settings, staging, origin, manifest)
        restored = data_files(staging)  # a rebase may have started a journal
        replaced = [n for n in held if not _same(data_dir / n, staging / n)]
        aside = _move_aside(data_dir, replaced) if replaced else None
        for name in restored:
            if "/" in name:
                secure_dir((data_dir / name).parent)
            os.replace(staging / name, data_dir / name)
        for folder in {(data_dir / name).parent for name in restored}:
            fsync_dir(folder)
    except OSError as exc:
        kept = f"; what it held is in {aside}" if aside else "; nothing was changed"
        raise BackupError(f"restore into {data_dir} failed ({exc.strerror or exc}){kept}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Restored(restored, manifest is not None, aside, replaced, rebased)


def processes_using(data_dir: Path) -> list[int]:
    """Other processes that map a file of `data_dir` (a store's change counter), from
    /proc/PID/maps; none where there is no /proc or it is not readable."""
    prefix = b" " + os.fsencode(data_dir) + b"/"
    found = []
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return []
    for pid in entries:
        if int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/maps", "rb") as fh:
                maps = fh.read()
        except OSError:  # gone, or not ours to read
            continue
        for line in maps.splitlines():
            at = line.find(prefix)
            if at >= 0 and b"/" not in line[at + len(prefix) :]:
                found.append(int(pid))
                break
    return sorted(found)


def _manifest(origin: Path) -> dict[str, Any] | None:
    """The manifest of the backup in `origin`, checked for shape; None when it has none (a
    backup made before backups had one)."""
    path = origin / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path} cannot be read as a backup manifest ({exc})") from None
    try:
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"'format' must be {FORMAT}")
        files = manifest.get("files")
        if not isinstance(files, dict):
            raise ValueError("'files' must be an object")
        for name, digest in files.items():
            if not DATA_FILE.fullmatch(name):
                raise ValueError(f"{name!r} is not a file of a data dir")
            if not (
                isinstance(digest, dict)
                and set(digest) == {"size", "sha256"}
                and isinstance(digest["size"], int)
                and isinstance(digest["sha256"], str)
            ):
                raise ValueError(f"{name!r} must have a 'size' and a 'sha256'")
        if not isinstance(manifest.get("data_dir"), str):
            raise ValueError("'data_dir' must be a path")
    except ValueError as exc:
        raise BackupError(f"{path} is not a backup manifest: {exc}; nothing was restored") from None
    return manifest


def _stage(origin: Path, staging: Path, name: str, manifest: dict[str, Any] | None) -> None:
    """Copy file `name` of the backup into `staging`, checked against the manifest."""
    if "/" in name:
        secure_dir((staging / name).parent)
    try:
        digest = _copy(origin / name, staging / name)
    except FileNotFoundError:
        raise BackupError(
            f"the backup in {origin} is incomplete: {name} is missing; nothing was restored"
        ) from None
    if manifest and digest != manifest["files"][name]:
        raise BackupError(
            f"the backup in {origin} is damaged: {name} does not match its manifest (size or "
            "SHA-256); nothing was restored"
        )


def _open_staged(
    settings: Settings, staging: Path, origin: Path, manifest: dict[str, Any] | None
) -> list[str]:
    """Open the stores restored into `staging` as the server would (StoreCorrupt refuses the
    restore) and make model paths into the backup's data dir relative; returns those models."""
    from .app import open_auth_state

    staged = dataclasses.replace(
        settings, storage=dataclasses.replace(settings.storage, data_dir=str(staging))
    )
    try:
        state = open_auth_state(staged)
    except StoreCorrupt as exc:
        reason = str(exc).replace(str(staging), str(origin))
        raise BackupError(f"the backup does not open: {reason}; nothing was restored") from None
    try:
        return rebase_paths(state_store(state.storage), manifest["data_dir"]) if manifest else []
    finally:
        state.storage.close()


def _move_aside(data_dir: Path, names: list[str]) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = Path(tempfile.mkdtemp(prefix=f"replaced-{stamp}-", dir=data_dir))
    for name in names:
        if "/" in name:
            secure_dir((aside / name).parent)
        os.replace(data_dir / name, aside / name)
    return aside


def _same(held: Path, restored: Path) -> bool:
    """Whether the restore brings `held` back byte for byte (then it need not be moved)."""
    try:
        return _digest(held) == _digest(restored)
    except FileNotFoundError:
        return False


def _copy(source: Path, target: Path) -> dict[str, Any]:
    """Copy `source` to a new private file `target`, synced; returns its size and SHA-256."""
    digest, size = hashlib.sha256(), 0
    with open(source, "rb") as src:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    return {"size": size, "sha256": digest.hexdigest()}


def _digest(path: Path, *, sync: bool = False) -> dict[str, Any]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(fh.fileno())
    return {"size": size, "sha256": digest.hexdigest()}


def _write_manifest(directory: Path, names: list[str], data_dir: Path) -> None:
    """The manifest of the files `names` in `directory`, each synced as it is read."""
    manifest = {
        "format": FORMAT,
        "made_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data_dir": str(data_dir),
        "files": {name: _digest(directory / name, sync=True) for name in names},
    }
    _write_new(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    for folder in {(directory / name).parent for name in names} | {directory}:
        fsync_dir(folder)


def _write_new(path: Path, data: bytes) -> None:
    """A new private file holding `data`, synced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
