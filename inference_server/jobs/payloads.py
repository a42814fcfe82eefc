"""A job's inputs and its result, private to the server: files under `data/jobs/<id>/` with the
JSON backend, Redis keys with the Redis one (`redis_payloads.py`), behind one interface.

The inputs are stored as they were checked at submission (`predict.check_each`: each input the
array the model takes, or its error), so the consumer neither parses JSON nor checks them again.
They are a few named blobs (`encode_inputs`):

- `rows.npy`: every valid input's samples, one after the other (when they share a sample shape
  and type, as a model's inputs do), with `spans.npy` the rows of each input (-1 for one that
  failed its check); else `inputs.npz`, one array per valid input;
- `errors.json`: the error of each input that failed its check, by index, and their count.

A backend stores them whole or not at all: files are written into `<id>.new/` and renamed to
`<id>/` once whole (each file fsynced), so a record never points at half its inputs. The result
holds one JSON line per input answered, in order (`{"index": 3, "predictions": [...]}` or
`{"index": 4, "error": {...}}`), appended (and made durable) a chunk at a time; the job's record
says how many of its bytes are whole, and an append first cuts what lies beyond them (the part
of a chunk a crash interrupted).
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from auth import StorageUnavailable, fsync_dir, secure_dir

NUMPY = orjson.OPT_SERIALIZE_NUMPY
Checked = np.ndarray | dict[str, Any]  # an input as the model takes it, or its error
ERRORS, ROWS, SPANS, ARRAYS = "errors.json", "rows.npy", "spans.npy", "inputs.npz"
RESULT = "result.jsonl"
JOBS_DIR = "jobs"  # in the data dir: a folder per job, named by its id
JOB_ID = r"job_[0-9a-f]{24}"
PAYLOAD_FILES = (ERRORS, ROWS, SPANS, ARRAYS, RESULT)


class Payloads(Protocol):
    max_bytes: int | None  # the largest result the storage can hold, if it has a limit

    def put_inputs(self, job_id: str, checked: np.ndarray | list[Checked]) -> None:
        """Store `checked` (an array: each row one input), whole or not at all;
        StorageUnavailable if the storage refuses."""
        ...

    def inputs(self, job_id: str) -> StoredInputs: ...

    def append_result(self, job_id: str, done_bytes: int, lines: list[dict[str, Any]]) -> int:
        """Append `lines` after the first `done_bytes` of the result; its size after them."""
        ...

    def result_lines(self, job_id: str, done_bytes: int) -> Iterator[bytes]:
        """The whole lines of a job's result, as written."""
        ...

    def delete(self, job_id: str) -> None: ...

    def close(self) -> None:
        """Let go of any connection."""
        ...


def open_payloads(settings: Any) -> Payloads:
    """The payloads of the server configured by `settings`, beside its other state."""
    storage = settings.storage
    if storage.backend == "redis":
        from .redis_payloads import RedisPayloads  # needs the redis package

        return RedisPayloads(storage.redis_url, prefix=storage.redis_prefix)
    return FilePayloads(settings.data_dir / JOBS_DIR)


class StoredInputs:
    """A job's checked inputs: the blob of their errors, and `load` for the arrays (one by
    name, FileNotFoundError if absent; a backend may map them rather than read them)."""

    def __init__(self, errors: bytes, load: Callable[[str], Any]) -> None:
        self._errors = orjson.loads(errors)
        self._count = self._errors.pop("count")
        try:
            self._rows: Any = load(ROWS)
            self._spans: Any = load(SPANS)
        except FileNotFoundError:
            self._rows, self._arrays = None, load(ARRAYS)

    def __len__(self) -> int:
        return self._count

    def checked(self, start: int, end: int) -> list[Checked]:
        """Inputs `start` to `end` (not included), each an array or its error."""
        out: list[Checked] = []
        for i in range(start, end):
            error = self._errors.get(str(i))
            if error is not None:
                out.append(error)
            elif self._rows is not None:
                first, last = self._spans[i]
                out.append(np.asarray(self._rows[first:last]))
            else:
                out.append(self._arrays[f"i{i}"])
        return out


def encode_inputs(checked: np.ndarray | list[Checked]) -> dict[str, bytes]:
    """The blobs of `checked` (see the module docstring), by name."""
    if isinstance(checked, np.ndarray):
        count = len(checked)
        spans = np.stack([np.arange(count), np.arange(1, count + 1)], axis=1)
        return _blobs(count, {}, rows=checked, spans=spans)
    arrays = [(i, c) for i, c in enumerate(checked) if not isinstance(c, dict)]
    errors = {str(i): c for i, c in enumerate(checked) if isinstance(c, dict)}
    if len({(a.shape[1:], a.dtype) for _, a in arrays}) > 1:
        return _blobs(len(checked), errors, named={f"i{i}": a for i, a in arrays})
    spans = np.full((len(checked), 2), -1, dtype=np.int64)
    row = 0
    for i, a in arrays:
        spans[i] = (row, row + len(a))
        row += len(a)
    rows = np.concatenate([a for _, a in arrays]) if arrays else np.empty((0,))
    return _blobs(len(checked), errors, rows=rows, spans=spans)


def _blobs(
    count: int,
    errors: dict[str, Any],
    *,
    rows: np.ndarray | None = None,
    spans: np.ndarray | None = None,
    named: dict[str, np.ndarray] | None = None,
) -> dict[str, bytes]:
    def saved(save: Callable[[io.BytesIO], None]) -> bytes:
        out = io.BytesIO()
        save(out)
        return out.getvalue()

    blobs = {ERRORS: orjson.dumps({**errors, "count": count})}
    if named is not None:
        blobs[ARRAYS] = saved(lambda out: np.savez(out, **named))
    else:
        blobs[ROWS] = saved(lambda out: np.save(out, rows))
        blobs[SPANS] = saved(lambda out: np.save(out, spans))
    return blobs


def result_bytes(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line, option=NUMPY) + b"\n" for line in lines)


def whole_lines(pieces: Iterable[bytes], done_bytes: int) -> Iterator[bytes]:
    """The lines of the first `done_bytes` of `pieces` (the result read in parts)."""
    remaining, partial = done_bytes, b""
    for piece in pieces:
        piece = piece[: max(0, remaining - len(partial))]
        *lines, partial = (partial + piece).split(b"\n")
        for line in lines:
            remaining -= len(line) + 1
            yield line + b"\n"
        if remaining <= len(partial):
            return


def payload_files(data_dir: Path) -> list[Path]:
    """The files of every whole job payload under `data_dir` (never one half written)."""
    jobs = data_dir / JOBS_DIR
    try:
        folders = sorted(e.path for e in os.scandir(jobs) if re.fullmatch(JOB_ID, e.name))
    except FileNotFoundError:
        return []
    return [Path(f, n) for f in folders for n in PAYLOAD_FILES if os.path.isfile(Path(f, n))]


class FilePayloads:
    """Payloads as files under one directory (`data/jobs/`)."""

    max_bytes = None

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def _job_dir(self, job_id: str) -> Path:
        return self._dir / job_id

    def put_inputs(self, job_id: str, checked: np.ndarray | list[Checked]) -> None:
        final = secure_dir(self._dir) / job_id
        where = final.with_name(f"{job_id}.new")
        try:
            secure_dir(where)
            for name, blob in encode_inputs(checked).items():
                _write(where / name, blob)
            os.replace(where, final)
            fsync_dir(self._dir)
        except OSError as exc:
            self.delete(job_id)
            raise StorageUnavailable(
                f"the data dir cannot take this job's inputs ({exc.strerror}); try again later"
            ) from None
        except BaseException:
            self.delete(job_id)
            raise

    def inputs(self, job_id: str) -> StoredInputs:
        directory = self._job_dir(job_id)
        return StoredInputs(
            (directory / ERRORS).read_bytes(),
            lambda name: np.load(directory / name, mmap_mode="r" if name == ROWS else None),
        )

    def append_result(self, job_id: str, done_bytes: int, lines: list[dict[str, Any]]) -> int:
        path = self._job_dir(job_id) / RESULT
        data = result_bytes(lines)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, done_bytes)
            os.lseek(fd, done_bytes, os.SEEK_SET)
            if os.write(fd, data) != len(data):  # a short write: the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        finally:
            os.close(fd)
        return done_bytes + len(data)

    def result_lines(self, job_id: str, done_bytes: int) -> Iterator[bytes]:
        path = self._job_dir(job_id) / RESULT
        if done_bytes == 0 or not path.exists():
            return
        with open(path, "rb") as source:
            yield from whole_lines(iter(lambda: source.read(1 << 20), b""), done_bytes)

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self._job_dir(job_id), ignore_errors=True)
        shutil.rmtree(self._dir / f"{job_id}.new", ignore_errors=True)

    def close(self) -> None:
        pass  # nothing held open between calls


def _write(path: Path, blob: bytes) -> None:
    with open(path, "wb", opener=lambda p, flags: os.open(p, flags, 0o600)) as out:
        out.write(blob)
        out.flush()
        os.fsync(out.fileno())
