"""The Redis backend: the same records and guarantees as the JSON files, shared by many hosts.

Each store is three keys under one hash tag:

    {<prefix>:users}:records   a hash: record id -> the record's JSON
    {<prefix>:users}:version   a counter, one up per committed change
    {<prefix>:users}:log       a stream: entry `<version>-0` lists the ids that change touched
    {<prefix>:users}:seal      a checksum of the records, kept up by every commit (`seal_of`)

plus, for the whole data set, `<prefix>:epoch` (a random value, made whenever a Redis without it
is met: new, emptied, or restarted without persistence) and `<prefix>:changes` (one up for every
commit to any store). The scripts touch keys of several stores: Redis Cluster is not supported.

A change is committed by one Lua script (`COMMIT`): it compares the version the change was made
against with the stored one (optimistic: a change made on an older copy is refused and run
again on a fresh one, never under a client-side lock), writes the records, bumps the version and
appends the ids to the log, atomically. So of concurrent refreshes of one token on any number
of hosts exactly one wins, and a username is unique across hosts: the second writer finds the
first one's record when its change runs again. Each commit leaves a receipt for ten minutes: a
commit whose answer was lost and that is sent again answers what it made instead of running a
second time (a refresh would otherwise find its own rotation and take it for a reuse).

Every process keeps a copy of each store (records as JSON bytes, and the same indexes as the
JSON backend, `indexes.py`) and brings it up to date once per request, before anything is read
(`RedisStorage.sync`). Redis tells each process when the change counter moves (its
server-assisted client-side caching, in broadcast mode: `_Invalidations`), so a request of a
quiet data set costs no round trip at all; when a message came, and at least once a second
anyway, one MGET of the epoch and the counter says whether anything changed, and when it did
one script (`SYNC`) answers, for the stores that moved, the records their log names since the
copy's version. So a change is read once per process, not once per read. (redis-py's own
client-side cache needs Redis 7.4, and caches replies, not the indexes built from them.) A copy
that fell behind the log (trimmed to `LOG_LENGTH` entries), of a data set replaced (a new epoch),
or of a version that went back (a restore) is loaded again. Reads outside a request (the
command line, background jobs) sync before every read.

When Redis cannot be reached, writes answer 503 STORAGE_UNAVAILABLE; reads are served from the
copy for `stale_seconds` after the last sync that worked, then 503 too; Redis is tried again at
most once a second per process, and the first request after it is back syncs as usual: nothing
to restart. Redis must not evict these keys (`maxmemory-policy noeviction`).
"""

from __future__ import annotations

import contextvars
import errno
import hashlib
import json
import logging
import os
import secrets
import select
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..errors import StorageBusy, StorageUnavailable
from ..offload import under_gevent
from ..signals import timed_write
from .base import (
    UNCHANGED,
    Backend,
    ReadsCopy,
    Record,
    StoreCorrupt,
    StoreSpec,
    check_record,
    decode,
    encode,
)
from .indexes import Index, Indexes
from .shapes import Shape
from .staged import StagedRecords

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # What Redis answers when it cannot do what was asked: down, too slow, or refusing.
    TROUBLE: tuple[type[Exception], ...] = (
        redis.ConnectionError,
        redis.TimeoutError,
        redis.ResponseError,
    )
except ImportError:  # an optional dependency: only this backend needs it
    redis = None  # type: ignore[assignment]
    TROUBLE = ()

log = logging.getLogger(__name__)

R = TypeVar("R")
LOG_LENGTH = 10_000  # changes kept per store; a copy further behind loads again
MOST_CHANGES = 1_000  # beyond this many changes to catch up on, a whole load is cheaper
COMMIT_ATTEMPTS = 100  # a change refused this often in a row (others always first): 503
RECHECK_SECONDS = 1.0  # how long a sync trusts Redis's invalidation messages alone

# KEYS: records, version, log, the data set's change counter, this commit's receipt, the seal
# (see `seal_of`: kept up as records are put and deleted, so no read of the store). ARGV: the
# version the change was made on ("" for a blind write), the log length, the number of puts,
# then id, JSON for each put, then ids to delete. Answers the new version; the version a
# commit with this receipt made already (its answer was lost, and it is asked again); -1 when
# the stored version is not the one expected; -2 when the version is gone but the log is not
# (evicted: nothing is written over that).
COMMIT = """
local done = redis.call('GET', KEYS[5])
if done then return tonumber(done) end
local stored = redis.call('GET', KEYS[2])
if not stored and redis.call('EXISTS', KEYS[3]) == 1 then return -2 end
local version = tonumber(stored or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= version then return -1 end
local seal = {0, 0, 0}
local kept = redis.call('GET', KEYS[6])
if kept then
  local i = 1
  for part in string.gmatch(kept, '%d+') do seal[i] = tonumber(part); i = i + 1 end
end
local function mix(id, json)
  local h = redis.sha1hex(id .. '\\n' .. json)
  for i = 1, 3 do
    seal[i] = bit.bxor(seal[i], tonumber(string.sub(h, i * 6 - 5, i * 6), 16))
  end
end
local ids = {}
local at = 4
for _ = 1, tonumber(ARGV[3]) do
  local old = redis.call('HGET', KEYS[1], ARGV[at])
  if old then mix(ARGV[at], old) end
  mix(ARGV[at], ARGV[at + 1])
  redis.call('HSET', KEYS[1], ARGV[at], ARGV[at + 1])
  ids[#ids + 1] = ARGV[at]
  at = at + 2
end
while at <= #ARGV do
  local old = redis.call('HGET', KEYS[1], ARGV[at])
  if old then mix(ARGV[at], old) end
  redis.call('HDEL', KEYS[1], ARGV[at])
  ids[#ids + 1] = ARGV[at]
  at = at + 1
end
version = version + 1
redis.call('SET', KEYS[2], version)
redis.call('SET', KEYS[6], seal[1] .. ',' .. seal[2] .. ',' .. seal[3])
redis.call('SET', KEYS[5], version, 'EX', 600)
redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], version .. '-0', 'ids', cjson.encode(ids))
return version
"""

# KEYS: the epoch, the change counter, then version, log and records of each store. ARGV: the
# most changes worth catching up on, then the version each store's copy holds (-1: none).
# Answers the epoch, the change counter and, per store, 0 when its copy is current, {version}
# when it must load whole, or {version, id, JSON or false, ...} with the records changed since
# the copy's version.
SYNC = """
local answer = {redis.call('GET', KEYS[1]) or false, redis.call('GET', KEYS[2]) or false}
for i = 2, #ARGV do
  local k = 3 + (i - 2) * 3
  local held = tonumber(ARGV[i])
  local version = tonumber(redis.call('GET', KEYS[k]) or '0')
  if version == held then
    answer[#answer + 1] = 0
  elseif held < 0 or version < held or version - held > tonumber(ARGV[1]) then
    answer[#answer + 1] = {version}
  else
    local entries = redis.call('XRANGE', KEYS[k + 1], (held + 1) .. '-0', version .. '-0')
    if #entries == 0 or entries[1][1] ~= (held + 1) .. '-0' then
      answer[#answer + 1] = {version}
    else
      local seen, ids = {}, {}
      for _, entry in ipairs(entries) do
        for _, id in ipairs(cjson.decode(entry[2][2])) do
          if not seen[id] then seen[id] = true; ids[#ids + 1] = id end
        end
      end
      if #ids > tonumber(ARGV[1]) then
        answer[#answer + 1] = {version}
      else
        local values = redis.call('HMGET', KEYS[k + 2], unpack(ids))
        local found = {version}
        for j, id in ipairs(ids) do
          found[#found + 1] = id
          found[#found + 1] = values[j]
        end
        answer[#answer + 1] = found
      end
    end
  end
end
return answer
"""

# KEYS: version, records. Answers the version and every id, JSON: one consistent version.


def seal_of(records: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The seal of a store holding `records` (id, JSON), as COMMIT keeps it: three 24-bit
    parts of the SHA-1 of each id, a newline and its JSON, XORed together, so that a record
    put or deleted changes it by its own hash alone. Like the seal of a JSON snapshot it is a
    checksum, not a signature: it says the records are as this code wrote them (checked before
    they were written), unless someone computed it again, and a whole load that finds it
    matching need not check every record against its shape."""
    parts = [0, 0, 0]
    for record_id, raw in records:
        digest = hashlib.sha1(record_id + b"\n" + raw).hexdigest()
        for i in range(3):
            parts[i] ^= int(digest[i * 6 : i * 6 + 6], 16)
    return ",".join(map(str, parts)).encode()


# Set in the context of a request once its sync ran, until it is answered: reads then trust
# the copies.
_synced: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "redis_storage_synced", default=False
)


def shown_url(url: str) -> str:
    """`url` without its password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass
class _Copy:
    """What one process holds of a store: the records as JSON bytes, their indexes, the
    version they are as of, and how often this process saw Redis go back to an earlier
    version of it (`version()`: after that, a version number comes again with other records)."""

    records: dict[str, bytes]
    indexes: Indexes
    version: int
    epoch: bytes | None
    rewinds: int = 0


class RedisStore(ReadsCopy):
    """One collection in Redis, read through this process's copy (see the module's top)."""

    def __init__(
        self,
        storage: RedisStorage,
        name: str,
        *,
        collection: str,
        shape: Shape,
        indexes: Mapping[str, Index],
        intern_ids: bool = False,
    ) -> None:
        self.name = name
        self.collection = collection
        # Ids that other stores' indexes are keyed by (users): held once in memory.
        self.intern_ids = intern_ids
        self.shape = shape
        self.indexes = indexes
        self._storage = storage
        tag = f"{{{storage.prefix}:{name}}}"
        self.keys = (f"{tag}:records", f"{tag}:version", f"{tag}:log")
        self.seal_key = f"{tag}:seal"
        self._copy: _Copy | None = None
        self._broken: str | None = None
        self._mutex = threading.RLock()

    # -- reading ---------------------------------------------------------------------------

    def open(self) -> None:
        """Load the store, checking every record (StoreCorrupt naming key, record, field)."""
        with self._mutex:
            self._load(self._storage.epoch())

    def records(self) -> list[tuple[str, Record]]:
        return [(i, decode(raw)) for i, raw in list(self._current().records.items())]

    def __len__(self) -> int:
        return len(self._current().records)

    def version(self) -> Any:
        copy = self._current()
        return (copy.epoch, copy.rewinds, copy.version)

    def problem(self) -> str | None:
        try:
            self._storage.refresh([self])
        except StorageUnavailable as exc:
            return exc.description
        return self._broken

    def close(self) -> None:
        with self._mutex:
            self._copy = None

    def _current(self) -> _Copy:
        """The copy, synced first unless this request synced already."""
        if not _synced.get() or self._copy is None:
            self._storage.refresh(self._storage.stores())
        copy = self._copy
        if copy is None:
            raise StorageUnavailable(
                f"the {self.name} store could not be read from {self._storage.describe()}",
                headers={"Retry-After": "5"},
            )
        return copy

    # -- keeping the copy in step ------------------------------------------------------------

    def _load(self, epoch: bytes | None) -> None:
        """Read the whole store (one consistent version), checking every record."""
        version, seal, stored = self._storage.load(self.keys[1], self.seal_key, self.keys[0])
        held = self._copy
        rewinds = held.rewinds if held is not None and held.epoch == epoch else 0
        if held is not None and held.epoch == epoch and held.version > int(version):
            # Every load runs under the mutex: this is Redis going back (a restore, the lost
            # tail of an append-only file), not a late answer. What it holds now is the truth.
            rewinds += 1
            log.warning(
                "the %s store in %s went back from version %d to %d: reloaded",
                self.name,
                self._storage.describe(),
                held.version,
                int(version),
            )
        sealed = seal is not None and seal == seal_of(stored.items())
        records: dict[str, bytes] = {}
        for raw_id, raw in stored.items():
            record_id = self._id(raw_id)
            if self.intern_ids:
                record_id = sys.intern(record_id)
            if not sealed:  # written or changed by something else than a commit of ours
                self._check(record_id, raw)
            records[record_id] = raw
        self._copy = _Copy(records, Indexes(self.indexes), int(version), epoch, rewinds)
        self._broken = None

    def _apply(self, answer: Any, epoch: bytes | None) -> None:
        """Apply this store's part of a SYNC answer (see the script)."""
        copy = self._copy
        if answer == 0 and copy is not None and copy.epoch == epoch:
            return
        with self._mutex:
            copy = self._copy
            whole = answer == 0 or len(answer) == 1 or self._broken is not None
            if copy is None or copy.epoch != epoch or whole:
                try:
                    self._load(epoch)
                except StoreCorrupt as exc:
                    if copy is None:
                        raise StorageBusy(f"{exc}; refusing to serve it") from None
                    self._mark_broken(exc)
                return
            version = int(answer[0])
            if version <= copy.version:
                return  # a commit of this process got there first
            try:
                changes = {self._id(answer[at]): answer[at + 1] for at in range(1, len(answer), 2)}
                for record_id, raw in changes.items():
                    if raw is not None:
                        self._check(record_id, raw)
            except StoreCorrupt as exc:
                self._mark_broken(exc)
                return
            self._commit(
                copy,
                {i: r for i, r in changes.items() if r is not None},
                [i for i, r in changes.items() if r is None],
                version,
            )

    def _mark_broken(self, exc: StoreCorrupt) -> None:
        """A record that does not fit came from Redis: the last good copy serves, writes are
        refused, and every sync loads the store whole until it is repaired."""
        self._broken = f"{exc}; serving the last good copy and refusing writes"
        log.error("%s", self._broken)

    def _commit(
        self, copy: _Copy, puts: dict[str, bytes], deletes: Iterable[str], version: int
    ) -> None:
        copy.indexes.apply(copy.records, puts, deletes)
        copy.version = version

    def _id(self, raw: bytes) -> str:
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise StoreCorrupt(
                f"redis key {self.keys[0]}: record id {raw!r} is not UTF-8 text"
            ) from None

    def _check(self, record_id: str, raw: bytes) -> None:
        where = f"redis key {self.keys[0]}"
        try:
            record = decode(raw)
        except ValueError as exc:
            raise StoreCorrupt(f"{where}: record {record_id!r} is not valid JSON ({exc})") from None
        check_record(where, self.shape, record_id, record)

    def check_new(self, record_id: str, record: Record) -> None:
        """A record about to be written must fit (else: a bug of the code writing it)."""
        try:
            check_record(f"redis key {self.keys[0]}", self.shape, record_id, record)
        except StoreCorrupt as exc:
            raise ValueError(f"refusing to write {exc}") from None

    # -- writing ---------------------------------------------------------------------------

    def update(self, change: Callable[[Any], R], *, timeout: float | None = None) -> R:
        """Run `change` on a fresh copy and commit what it changed if nobody committed to this
        store meanwhile; else run it again on the newer copy (see COMMIT)."""
        for _ in range(COMMIT_ATTEMPTS):
            with self._mutex:
                self._storage.refresh([self], stale_ok=False)
                copy = self._writable()
                records = StagedRecords(copy.records, copy.indexes, check=self.check_new)
                result = change(records)
                if result is UNCHANGED:
                    return result
                puts, deletes = records.changes()
                if not puts and not deletes:
                    return result
                if self._write(copy, puts, deletes, expected=copy.version):
                    return result
        raise StorageBusy(
            f"the {self.name} store is changed by too many writers at once; try again",
            headers={"Retry-After": "1"},
        )

    def put_unread(self, puts: Mapping[str, Record]) -> None:
        encoded = {}
        for record_id, record in puts.items():
            self.check_new(record_id, record)
            encoded[record_id] = encode(record)
        with self._mutex:
            self._write(self._copy, encoded, [], expected=None)

    def _writable(self) -> _Copy:
        if self._broken:
            raise StorageBusy(
                f"{self._broken.partition(';')[0]}; changes are refused until an operator "
                "repairs it"
            )
        assert self._copy is not None
        return self._copy

    def _write(
        self,
        copy: _Copy | None,
        puts: dict[str, bytes],
        deletes: list[str],
        *,
        expected: int | None,
    ) -> bool:
        args: list[Any] = ["" if expected is None else expected, LOG_LENGTH, len(puts)]
        for record_id, raw in puts.items():
            args += [record_id, raw]
        args += deletes
        receipt = f"{self.keys[1]}:commit:{secrets.token_hex(8)}"
        keys = [*self.keys, self._storage.changes_key, receipt, self.seal_key]
        with timed_write(self.name):
            version = int(self._storage.run(self._storage.commit_script, keys, args, write=True))
        if version == -2:
            raise StorageUnavailable(
                f"the {self.name} store in {self._storage.describe()} lost its version key but "
                "not its log (evicted? Redis must run with maxmemory-policy noeviction); "
                "nothing was written: an operator must repair it"
            )
        if version < 0:
            return False
        if copy is not None and version == copy.version + 1:
            self._commit(copy, puts, deletes, version)  # our own change: no need to read it
        return True


class _Invalidations:
    """Redis's word that the change counter moved, without asking it on every request.

    Server-assisted client-side caching in broadcast mode: one connection of this process is
    subscribed to `__redis__:invalidate`, and a second one asks Redis (CLIENT TRACKING ... BCAST
    PREFIX) to publish there whenever the counter's key is written. `heard` polls the subscribed
    socket without waiting (a `poll`, no round trip) and counts the messages; the poll is the
    operating system's own even under gevent, whose stand-in answers a zero-timeout poll by
    starting watchers and a turn of its loop (4% of a request's time). Redis sends the
    message while it runs the commit, before it answers the writer, so a request that follows
    an acknowledged write on another host finds it waiting, but for a network that delivers the
    later packet first; `RedisStorage.sync` also asks Redis itself at least every
    `RECHECK_SECONDS`, and then checks that the tracking connection is alive (an idle
    connection a server or a NAT dropped would end the messages silently). Connections made in
    another process (before a fork), or lost (Redis restarted), are made again, at most once a
    second; until they are, `heard` answers None: nobody can say."""

    def __init__(self, url: str, key: str, timeout: float, clock: Callable[[], float]) -> None:
        self._url, self._key, self._timeout, self._clock = url, key, timeout, clock
        self._pool: Any = None
        self._pid: int | None = None
        self._subscribed: Any = None
        self._tracking: Any = None
        self._poll: Any = None  # the subscribed socket's, where it is a plain one
        self._retry_at = 0.0
        self._count = 0
        self._lock = threading.Lock()  # one reader of the subscribed socket at a time

    def heard(self) -> int | None:
        """How many messages came so far (any change since a look at this number moved
        it), or None when not listening."""
        with self._lock:
            if self._subscribed is None or self._pid != os.getpid():
                self._listen()
                return None
            subscribed = self._subscribed
            if self._poll is not None and not self._poll.poll(0):
                return self._count  # nothing came (what came before was all read)
            try:
                while subscribed.can_read(timeout=0):
                    subscribed.read_response()
                    self._count += 1
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._close()
                return None
            return self._count

    def alive(self) -> bool:
        """Whether the tracking connection still answers (a round trip: once a second)."""
        with self._lock:
            if self._tracking is None:
                return False
            try:
                self._tracking.send_command("PING")
                self._tracking.read_response()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._close()
                return False
            return True

    def _listen(self) -> None:
        if self._clock() < self._retry_at and self._pid == os.getpid():
            return
        self._close()
        self._pid = os.getpid()
        self._retry_at = self._clock() + 1.0
        # RESP2: the subscribed connection reads the messages as replies.
        self._pool = redis.ConnectionPool.from_url(
            self._url, protocol=2, socket_timeout=self._timeout, socket_connect_timeout=2
        )
        try:
            subscribed = self._pool.make_connection()
            subscribed.send_command("CLIENT", "ID")
            client_id = subscribed.read_response()
            subscribed.send_command("SUBSCRIBE", "__redis__:invalidate")
            subscribed.read_response()
            tracking = self._pool.make_connection()
            tracking.send_command(
                "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", "PREFIX", self._key
            )
            tracking.read_response()
        except (*TROUBLE, OSError):
            self._close()  # tried again in a second; until then every sync asks Redis
            return
        self._subscribed, self._tracking = subscribed, tracking
        self._poll = _poll_of(subscribed._sock)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._pool is not None and self._pid == os.getpid():
            self._pool.disconnect()
        self._pool = self._subscribed = self._tracking = self._poll = None


def _poll_of(sock: Any) -> Any:
    """A poll of `sock` for something to read, by the operating system's own `select.poll`
    (not gevent's); None for a TLS socket, whose layer may hold bytes the socket no longer
    shows."""
    if isinstance(sock, ssl.SSLSocket):
        return None
    make = select.poll
    if under_gevent():
        from gevent.monkey import get_original

        make = get_original("select", "poll")
    poll = make()
    poll.register(sock.fileno(), select.POLLIN)
    return poll


class RedisAudit:
    """The audit trail in Redis: a stream capped at about `max_entries` events (XADD MAXLEN ~),
    each one field holding the event's JSON. Every host appends to it; `audit tail` reads it."""

    def __init__(self, storage: RedisStorage, key: str, max_entries: int) -> None:
        self.storage = storage
        self.key = key
        self.max_entries = max_entries
        self.name = f"the Redis stream {key}"

    def append(self, entry: Record) -> None:
        data = json.dumps(entry, sort_keys=True)
        try:
            self.storage.client.xadd(
                self.key, {"e": data}, maxlen=self.max_entries, approximate=True
            )
        except TROUBLE as exc:
            raise OSError(
                errno.EIO, f"{self.storage.describe()} cannot be reached ({exc})"
            ) from None

    def entries(self) -> Iterator[Record]:
        start = "-"
        while True:
            try:
                chunk = self.storage.client.xrange(self.key, min=start, count=1000)
            except TROUBLE as exc:
                raise self.storage.unreachable(exc) from None
            for _, fields in chunk:
                try:
                    yield json.loads(fields[b"e"])
                except (KeyError, ValueError):
                    continue  # not an event of ours: skipped, as a torn line of the file is
            if len(chunk) < 1000:
                return
            start = "(" + chunk[-1][0].decode()

    def copy_to(self, directory: Path) -> list[str]:
        with open(directory / "audit.log", "w", encoding="utf-8", opener=_private) as fh:
            for entry in self.entries():
                fh.write(json.dumps(entry, sort_keys=True) + "\n")
        return ["audit.log"]


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


class RedisStorage(Backend):
    """The stores of one Redis data set (see the top of this module)."""

    backend = "redis"
    blocking = False  # its sockets cooperate with an event loop (gevent)

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "inference",
        stale_seconds: float = 30.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        audit_entries: int = 100_000,
    ) -> None:
        if redis is None:
            raise StorageUnavailable(
                "storage.backend redis needs the redis package: pip install 'redis>=5'"
            )
        self.url = url
        self.prefix = prefix
        self.stale_seconds = stale_seconds
        self.clock = clock
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=min(timeout, 2.0),
            retry=Retry(NoBackoff(), 1),  # one quick retry: a reconnect, not a wait
            health_check_interval=30,
        )
        self.commit_script = self.client.register_script(COMMIT)
        self._sync_script = self.client.register_script(SYNC)
        super().__init__()
        self.audit = RedisAudit(self, f"{prefix}:audit", audit_entries)
        self._epoch_key = f"{prefix}:epoch"
        self._secret_key = f"{prefix}:jwt_secret"
        self.changes_key = f"{prefix}:changes"  # one up for every commit to any store
        self._seen: tuple[Any, Any] | None = None  # (epoch, changes) all copies are as of
        self._recheck_at = 0.0
        self._clean_as_of: int | None = None  # the invalidation count the copies are as of
        self._next_try = 0.0
        self._invalidations = _Invalidations(url, self.changes_key, timeout, clock)
        self._synced_at: float | None = None
        self._down_since: float | None = None

    def _make(self, spec: StoreSpec) -> RedisStore:
        return RedisStore(
            self,
            spec.name,
            collection=spec.collection,
            shape=spec.shape,
            indexes=spec.indexes,
            intern_ids=spec.intern_ids,
        )

    def describe(self) -> str:
        return f"Redis at {shown_url(self.url)}"

    def run(
        self, script: Any, keys: Iterable[str], args: Iterable[Any], *, write: bool = False
    ) -> Any:
        """Run a registered script, Redis trouble answered as 503 STORAGE_UNAVAILABLE. A
        commit whose answer was lost may have been made: the message does not say otherwise
        (asked again, a commit answers what it made: see COMMIT)."""
        try:
            return script(keys=list(keys), args=list(args))
        except TROUBLE as exc:
            outcome = "the change may or may not have been made" if write else "nothing changed"
            raise self.unreachable(exc, f"; {outcome}: try again") from None

    def load(self, version_key: str, seal_key: str, records_key: str) -> tuple[int, Any, dict]:
        """A store's version, seal and records (id -> JSON), read as one version (MULTI)."""
        try:
            with self.client.pipeline(transaction=True) as pipe:
                version, seal, records = (
                    pipe.get(version_key).get(seal_key).hgetall(records_key).execute()
                )
        except TROUBLE as exc:
            raise self.unreachable(exc) from None
        return int(version or 0), seal, records

    def epoch(self) -> bytes:
        """The data set's epoch, made when there is none (a new or emptied Redis)."""
        try:
            self.client.set(self._epoch_key, secrets.token_hex(8), nx=True)
            return self.client.get(self._epoch_key)
        except TROUBLE as exc:
            raise self.unreachable(exc) from None

    def unreachable(self, exc: Exception, more: str = "") -> StorageUnavailable:
        """The 503 of Redis trouble `exc` (`more` says what became of the request)."""
        return StorageUnavailable(
            f"the storage ({self.describe()}) cannot be reached ({exc}){more}",
            headers={"Retry-After": "5"},
        )

    def sync(self) -> None:
        """Bring every store's copy up to date (a request's first step); the rest of the
        request then reads the copies without asking Redis. While Redis has sent no message
        that the change counter moved (`_Invalidations`), which is most requests, that costs
        no round trip at all; else, and at least every `RECHECK_SECONDS`, one MGET of the epoch
        and the counter, and when they moved one script that answers what changed. While Redis
        is unreachable it is tried at most once a second; the copies serve in between (within
        `stale_seconds`)."""
        stores = self.stores()
        now = self.clock()
        if self._down_since is not None and now < self._next_try:
            if not self._serve_stale(stores):
                raise self.unreachable(OSError("tried again in a moment"))
            _synced.set(True)
            return
        heard = self._invalidations.heard()
        if heard is not None and heard == self._clean_as_of and now < self._recheck_at:
            _synced.set(True)
            return
        if now >= self._recheck_at and not self._invalidations.alive():
            heard = None  # not listening: nothing to trust until a sync says so
        seen = self._seen
        if seen is not None and all(store._copy is not None for store in stores):
            try:
                current = tuple(self.client.mget(self._epoch_key, self.changes_key))
            except TROUBLE:
                current = None  # the script's attempt below answers as Redis trouble does
            if current == seen:
                self._mark_synced(now, whole=True, heard=heard)
                _synced.set(True)
                return
        self.refresh(stores, heard=heard)
        _synced.set(True)

    def end_request(self) -> None:
        """The request is answered: reads outside a request sync again before each read."""
        _synced.set(False)

    def refresh(
        self, stores: list[RedisStore], *, stale_ok: bool = True, heard: int | None = None
    ) -> None:
        """Bring the copies of `stores` up to date in one round trip. With Redis down, the
        copies serve reads for `stale_seconds` after the last sync that worked (`stale_ok`);
        then, and for writes at once, StorageUnavailable. `heard`: the invalidation count
        looked at before, which a whole sync makes the one its copies are as of."""
        keys = [self._epoch_key, self.changes_key]
        args: list[Any] = [MOST_CHANGES]
        for store in stores:
            keys += [store.keys[1], store.keys[2], store.keys[0]]
            args.append(store._copy.version if store._copy is not None else -1)
        self._next_try = self.clock() + 1.0  # while down: the next attempt, not before
        try:
            answer = self.run(self._sync_script, keys, args)
            epoch = answer[0] or self.epoch()
            for store, part in zip(stores, answer[2:], strict=True):
                store._apply(part, epoch)
        except StorageUnavailable:
            if not (self._serve_stale(stores) and stale_ok):
                raise
        else:
            whole = len(stores) == len(self._stores) and not any(s._broken for s in stores)
            if whole and answer[0]:
                self._seen = (answer[0], answer[1])  # every copy is as of this change count
            self._mark_synced(self.clock(), whole=whole and bool(answer[0]), heard=heard)

    def _mark_synced(self, now: float, *, whole: bool, heard: int | None) -> None:
        """A round trip worked; with `whole`, every copy is as of the invalidation count
        `heard` and needs no round trip until it moves or `RECHECK_SECONDS` pass."""
        self._synced_at = now
        if whole:
            self._clean_as_of = heard
            self._recheck_at = now + RECHECK_SECONDS
        if self._down_since is not None:
            log.warning("%s is reachable again", self.describe())
            self._down_since = None

    def _serve_stale(self, stores: list[RedisStore]) -> bool:
        now = self.clock()
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "%s cannot be reached: reads are served from this process's copy for %g s, "
                "writes answer 503",
                self.describe(),
                self.stale_seconds,
            )
        fresh = self._synced_at is not None and now - self._synced_at <= self.stale_seconds
        return fresh and all(store._copy is not None for store in stores)

    def secret_place(self) -> str:
        return f"key {self._secret_key} of {self.describe()}"

    def replace_secret(self, secret: str) -> None:
        try:
            self.client.set(self._secret_key, secret)
        except TROUBLE as exc:
            raise self.unreachable(exc) from None

    def kept_secret(self, make: Callable[[], str] | None = None) -> str | None:
        """The secret kept under `<prefix>:jwt_secret`; made with `make` when there is none
        (SET NX: of several hosts starting at once, one secret wins)."""
        try:
            if make is not None:
                self.client.set(self._secret_key, make(), nx=True)
            kept = self.client.get(self._secret_key)
        except TROUBLE as exc:
            raise self.unreachable(exc) from None
        return kept.decode() if kept is not None else None

    def maintain(self) -> None:
        """Nothing to fold: Redis trims each store's log as it appends."""

    def shutdown(self) -> list[str]:
        """Nothing to leave whole: every change is in Redis once acknowledged."""
        self.close()
        return []

    def close(self) -> None:
        """Let go of the copies and the connections."""
        super().close()
        self._invalidations.close()
        self.client.close()

    def problems(self) -> list[str]:
        try:
            self.client.ping()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return [self.unreachable(exc).description]
        return super().problems()

    def backup(self, target: Path) -> list[str]:
        """Write every store into `target` as the JSON backend's files (each snapshot whole,
        its journal empty), as a restore of a JSON data dir expects them."""
        from .json import JsonStorage
        from .migrate import migrate

        files = JsonStorage(target)
        try:
            copied = migrate(self, files, whole=False)
            files.shutdown()
        finally:
            files.close()
        for leftover in [*target.glob("*.lock"), *target.glob("*.changes")]:
            leftover.unlink()  # the copy's own bookkeeping, not data
        names = [(f"{c.store}.json", f"{c.store}.journal.jsonl") for c in copied]
        return [name for pair in names for name in pair]
