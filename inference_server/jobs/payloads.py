"""A job's inputs and its result: files under `data/jobs/<id>/`, private to the server.

`inputs.json` is written whole (temp file, fsync, rename) before the job's record exists, so a
record never points at missing inputs. `result.jsonl` holds one line per input answered, in
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

import orjson

from auth import ValidationError, fsync_dir, secure_dir

INPUTS, RESULT = "inputs.json", "result.jsonl"
NUMPY = orjson.OPT_SERIALIZE_NUMPY


class Payloads:
    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def _job_dir(self, job_id: str) -> Path:
        return self._dir / job_id

    def put_inputs(self, job_id: str, inputs: list[Any]) -> None:
        try:
            encoded = orjson.dumps(inputs)
        except orjson.JSONEncodeError:  # text with a lone surrogate, which JSON cannot carry
            raise ValidationError(
                "'inputs' hold text that is not valid Unicode", details={"field": "inputs"}
            ) from None
        where = secure_dir(secure_dir(self._dir) / job_id)
        temporary = where / f"{INPUTS}.new"
        with open(temporary, "wb", opener=_private) as out:
            out.write(encoded)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, where / INPUTS)
        fsync_dir(where)

    def inputs(self, job_id: str) -> list[Any]:
        return orjson.loads((self._job_dir(job_id) / INPUTS).read_bytes())

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


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)
