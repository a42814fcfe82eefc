"""A job's inputs and its result: files under `data/jobs/<id>/`, private to the server.

The inputs are stored as they were checked at submission (`predict.check_each`: each input the
array the model takes, or its error), so the consumer neither parses JSON nor checks them again:

- `rows.npy`: every valid input's samples, one after the other (when they share a sample shape
  and type, as a model's inputs do), with `spans.npy` the rows of each input (-1 for one that
  failed its check); else `inputs.npz`, one array per valid input;
- `errors.json`: the error of each input that failed its check, by index.

They are written into `<id>.new/` and renamed to `<id>/` once whole (each file fsynced), so a
record never points at half its inputs. `result.jsonl` holds one line per input answered, in
order (`{"index": 3, "predictions": [...]}` or `{"index": 4, "error": {...}}`), appended and
fsynced a chunk at a time; the job's record says how many of its bytes are whole.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from auth import fsync_dir, secure_dir

RESULT = "result.jsonl"
NUMPY = orjson.OPT_SERIALIZE_NUMPY
Checked = np.ndarray | dict[str, Any]  # an input as the model takes it, or its error


class StoredInputs:
    """A job's checked inputs, read from its files (arrays mapped, not loaded)."""

    def __init__(self, directory: Path) -> None:
        self._errors = orjson.loads((directory / "errors.json").read_bytes())
        self._count = self._errors.pop("count")
        rows = directory / "rows.npy"
        if rows.exists():
            self._rows: Any = np.load(rows, mmap_mode="r")
            self._spans: Any = np.load(directory / "spans.npy")
        else:
            self._rows, self._arrays = None, np.load(directory / "inputs.npz")

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


class Payloads:
    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def _job_dir(self, job_id: str) -> Path:
        return self._dir / job_id

    def put_inputs(self, job_id: str, checked: np.ndarray | list[Checked]) -> None:
        """Store `checked` (see the module docstring; an array: each row one input); OSError
        if the disk refuses."""
        final = secure_dir(self._dir) / job_id
        where = secure_dir(final.with_name(f"{job_id}.new"))
        try:
            if isinstance(checked, np.ndarray):
                count = len(checked)
                spans = np.stack([np.arange(count), np.arange(1, count + 1)], axis=1)
                _save_inputs(where, count, {}, rows=checked, spans=spans)
            else:
                _save_checked(where, checked)
            os.replace(where, final)
            fsync_dir(self._dir)
        except BaseException:
            shutil.rmtree(where, ignore_errors=True)
            raise

    def inputs(self, job_id: str) -> StoredInputs:
        return StoredInputs(self._job_dir(job_id))

    def append_result(self, job_id: str, done_bytes: int, lines: list[dict[str, Any]]) -> int:
        """Append `lines` after the first `done_bytes` of the result (what is beyond them is
        the part of a chunk a crash interrupted); the result's size after them."""
        path = self._job_dir(job_id) / RESULT
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, done_bytes)
            os.lseek(fd, done_bytes, os.SEEK_SET)
            data = b"".join(orjson.dumps(line, option=NUMPY) + b"\n" for line in lines)
            if os.write(fd, data) != len(data):  # a short write: the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        finally:
            os.close(fd)
        return done_bytes + len(data)

    def result_lines(self, job_id: str, done_bytes: int) -> Iterator[bytes]:
        """The whole lines of a job's result, as written."""
        path = self._job_dir(job_id) / RESULT
        if done_bytes == 0 or not path.exists():
            return
        with open(path, "rb") as source:
            remaining = done_bytes
            for line in source:
                if remaining <= 0:
                    return
                remaining -= len(line)
                yield line

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self._job_dir(job_id), ignore_errors=True)
        shutil.rmtree(self._dir / f"{job_id}.new", ignore_errors=True)


def _save_checked(where: Path, checked: list[Checked]) -> None:
    arrays = [(i, c) for i, c in enumerate(checked) if not isinstance(c, dict)]
    errors = {str(i): c for i, c in enumerate(checked) if isinstance(c, dict)}
    if len({(a.shape[1:], a.dtype) for _, a in arrays}) > 1:
        _save_inputs(where, len(checked), errors, named={f"i{i}": a for i, a in arrays})
        return
    spans = np.full((len(checked), 2), -1, dtype=np.int64)
    row = 0
    for i, a in arrays:
        spans[i] = (row, row + len(a))
        row += len(a)
    rows = np.concatenate([a for _, a in arrays]) if arrays else np.empty((0,))
    _save_inputs(where, len(checked), errors, rows=rows, spans=spans)


def _save_inputs(
    where: Path,
    count: int,
    errors: dict[str, Any],
    *,
    rows: np.ndarray | None = None,
    spans: np.ndarray | None = None,
    named: dict[str, np.ndarray] | None = None,
) -> None:
    index = orjson.dumps({**errors, "count": count})
    _write(where / "errors.json", lambda out: out.write(index))
    if named is not None:
        _write(where / "inputs.npz", lambda out: np.savez(out, **named))
    else:
        _write(where / "rows.npy", lambda out: np.save(out, rows))
        _write(where / "spans.npy", lambda out: np.save(out, spans))


def _write(path: Path, fill: Any) -> None:
    with open(path, "wb", opener=lambda p, flags: os.open(p, flags, 0o600)) as out:
        fill(out)
        out.flush()
        os.fsync(out.fileno())
