"""Job payloads in Redis, for servers that share one (`storage.backend: redis`): a job submitted
on one host is run by a consumer on another and read on a third.

    <prefix>:job:<id>:inputs   a hash: blob name -> blob (`payloads.encode_inputs`), one HSET
    <prefix>:job:<id>:result   a string: the result's lines, appended by `APPEND_AT`

The inputs are written by one command (HSET) and read by one (HGETALL), so they are there whole
or not at all; the result is read in parts of `PART` bytes. A Redis string holds at most 512 MB:
a result is kept below that (`MAX_BYTES`) whatever `jobs.max_result_mb` says.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import redis

from auth import StorageUnavailable

from .payloads import ERRORS, Checked, StoredInputs, encode_inputs, result_bytes, whole_lines

log = logging.getLogger(__name__)
PART = 1 << 20
MAX_BYTES = 512 * 1024 * 1024 - PART

# Cut the result to the bytes the record calls whole (ARGV[1]), then append ARGV[2]: one step,
# so a reader never sees the tail of an interrupted chunk followed by its retry.
APPEND_AT = """
local done = tonumber(ARGV[1])
local size = redis.call('STRLEN', KEYS[1])
if size < done then
    return redis.error_reply('the result is shorter than its record says: it was lost')
end
if size > done then
    if done == 0 then
        redis.call('DEL', KEYS[1])
    else
        redis.call('SET', KEYS[1], redis.call('GETRANGE', KEYS[1], 0, done - 1))
    end
end
return redis.call('APPEND', KEYS[1], ARGV[2])
"""


class RedisPayloads:
    max_bytes = MAX_BYTES

    def __init__(self, url: str, *, prefix: str, timeout: float = 10.0) -> None:
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=min(timeout, 2.0)
        )
        self._prefix = prefix
        self._append_at = self._client.register_script(APPEND_AT)

    def _key(self, job_id: str, part: str) -> str:
        return f"{self._prefix}:job:{job_id}:{part}"

    def put_inputs(self, job_id: str, checked: np.ndarray | list[Checked]) -> None:
        try:
            self._client.hset(self._key(job_id, "inputs"), mapping=encode_inputs(checked))
        except redis.RedisError as exc:
            log.warning("job %s: its inputs could not be stored in Redis: %s", job_id, exc)
            raise StorageUnavailable(
                "Redis cannot take this job's inputs now; try again later",
                headers={"Retry-After": "5"},
            ) from None

    def inputs(self, job_id: str) -> StoredInputs:
        blobs: dict[bytes, bytes] = self._client.hgetall(self._key(job_id, "inputs"))
        if ERRORS.encode() not in blobs:
            raise FileNotFoundError(f"job {job_id} has no inputs in Redis")

        def load(name: str) -> Any:
            blob = blobs.get(name.encode())
            if blob is None:
                raise FileNotFoundError(name)
            return np.load(io.BytesIO(blob))

        return StoredInputs(blobs[ERRORS.encode()], load)

    def append_result(self, job_id: str, done_bytes: int, lines: list[dict[str, Any]]) -> int:
        return int(
            self._append_at(
                keys=[self._key(job_id, "result")], args=[done_bytes, result_bytes(lines)]
            )
        )

    def result_lines(self, job_id: str, done_bytes: int) -> Iterator[bytes]:
        key = self._key(job_id, "result")
        parts = (
            self._client.getrange(key, start, min(start + PART, done_bytes) - 1)
            for start in range(0, done_bytes, PART)
        )
        yield from whole_lines(parts, done_bytes)

    def delete(self, job_id: str) -> None:
        self._client.delete(self._key(job_id, "inputs"), self._key(job_id, "result"))

    def close(self) -> None:
        self._client.close()
