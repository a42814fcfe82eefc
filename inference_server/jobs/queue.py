"""The task queue that carries jobs: Huey, a well-kept queue with one API over several storages.

On one host it is embedded: `SqliteHuey` in `data/jobs/queue.db`, nothing else to start. With
`storage.backend: redis` it is `RedisHuey` on the same Redis, so that a job submitted on any host
is run by a consumer on any host. The server's workers put a job's id on it; a consumer
(`python run.py` starts one beside the server, `python run.py jobs worker` runs more) takes ids
off it and runs the jobs (`service.Jobs.run`). The queue holds nothing else: the job's record and
its payloads are the app's own (`records.py`, `payloads.py`), so what a client sees never
depends on the queue's internals.

Huey's messages are pickles by default, and a pickle read is code run: whoever can write to the
queue (a Redis shared by many hosts) could run code in every consumer. Ours are JSON
(`JsonMessages`), of the few fields our tasks use.

Each consumer process has a name of its own (`RUNNER`: host, pid namespace, pid and a random
part, so that two containers sharing a hostname, or a pid used again, never share one) and says
it is alive in the queue's key-value space (`beat`, every `BEAT_SECONDS`), so that a consumer
elsewhere can tell a job whose consumer died from one still running (`runner_alive`). On the
same host and pid namespace a process that is gone is dead at once, without waiting for its
beat to age. Hosts' clocks must agree within a few seconds.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey
from huey.consumer import Consumer
from huey.registry import Message
from huey.serializer import Serializer

from auth import secure_dir

from ..settings import Settings

log = logging.getLogger(__name__)

QUEUE_NAME = "inference-jobs"


def _place() -> str:
    """This host and pid namespace (a container's pids are its own)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}/{namespace}"


PLACE = _place()
RUNNER = f"{PLACE}:{os.getpid()}:{secrets.token_hex(4)}"  # this process, as job records name it
BEAT_SECONDS = 15.0
# Huey's consumer polls an idle queue less and less often, up to every 10 s by default: a job
# submitted after a quiet spell would wait that long to start. An SQLite query twice a second
# costs nothing next to that (a Redis queue blocks on the list instead: no polling).
IDLE_POLL_SECONDS = 0.5
DEAD_AFTER_SECONDS = 4 * BEAT_SECONDS
_TIMES = ("eta", "expires_resolved")  # the fields of a message that hold a datetime


class _OneLine(logging.Filter):
    """Huey logs an error with its traceback (a queue it cannot read: Redis down, once a poll);
    our log lines never carry one: the error is named on the line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {error}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


for _name in ("huey", "huey.consumer", "huey.consumer.Worker", "huey.consumer.Scheduler"):
    logging.getLogger(_name).addFilter(_OneLine())


class JsonMessages(Serializer):
    """Huey's task messages as JSON: plain values, and datetimes as ISO text."""

    def _serialize(self, data: Any) -> bytes:
        fields = data._asdict()
        for name in _TIMES:
            if fields[name] is not None:
                fields[name] = fields[name].isoformat()
        return json.dumps(fields).encode()  # TypeError for anything else: never a pickle

    def _deserialize(self, data: bytes) -> Any:
        fields = json.loads(data)
        for name in _TIMES:
            if fields.get(name) is not None:
                fields[name] = datetime.fromisoformat(fields[name])
        fields["args"] = tuple(fields.get("args") or ())
        return Message(**{name: fields.get(name) for name in Message._fields})


def open_queue(settings: Settings) -> Huey:
    options: dict[str, Any] = {"results": False, "utc": True, "serializer": JsonMessages()}
    storage = settings.storage
    if storage.backend == "redis":
        return RedisHuey(f"{storage.redis_prefix}.{QUEUE_NAME}", url=storage.redis_url, **options)
    directory = secure_dir(secure_dir(settings.data_dir) / "jobs")
    return SqliteHuey(QUEUE_NAME, filename=str(directory / "queue.db"), **options)


def close_queue(huey: Huey) -> None:
    huey.storage.close()
    pool = getattr(huey.storage, "pool", None)  # Huey's Redis storage: close() leaves it open
    if pool is not None:
        pool.disconnect()


def beat(huey: Huey, clock: Callable[[], float] = time.time) -> None:
    """Say that this consumer process is alive, now."""
    huey.storage.put_data(f"consumer:{RUNNER}", str(clock()).encode())


def runner_alive(huey: Huey, runner: str | None, clock: Callable[[], float] = time.time) -> bool:
    """Whether `runner` (a `RUNNER`) is a consumer process alive now, other than this one."""
    if not runner or runner == RUNNER:
        return False
    place, _, rest = runner.partition(":")
    pid = rest.partition(":")[0]
    if place == PLACE and pid.isdigit() and not _exists(int(pid)):
        return False  # gone from this host: no need to wait for its beat to age
    last = huey.storage.peek_data(f"consumer:{runner}")
    try:
        return clock() - float(last) < DEAD_AFTER_SECONDS
    except (TypeError, ValueError):
        return False  # no beat at all


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Consumer(Consumer):
    """Huey's consumer, telling the jobs when it is asked to stop (SIGINT, SIGTERM), so that a
    running job stops after its current chunk instead of holding the stop up, and beating."""

    def __init__(self, huey: Huey, on_stop: Callable[[], None], **options: Any) -> None:
        super().__init__(huey, **options)
        self._on_stop = on_stop
        self._stopped = threading.Event()

    def start(self) -> None:
        self._say_alive()  # before the first job is taken
        super().start()
        threading.Thread(target=self._beat, name="consumer-beat", daemon=True).start()

    def _beat(self) -> None:
        while not self._stopped.wait(BEAT_SECONDS):
            self._say_alive()

    def _say_alive(self) -> None:
        try:
            beat(self.huey)
        except Exception as exc:  # the queue is down: the next beat tries again
            log.warning("the job consumer could not say it is alive: %s", exc)

    def stop(self, graceful: bool = False) -> None:
        self._stopped.set()
        self._on_stop()
        super().stop(graceful=True)  # the jobs stop between chunks: let them get there
        try:
            self.huey.storage.pop_data(f"consumer:{RUNNER}")
        except Exception:
            pass  # its beat ages out


def run_consumer(huey: Huey, *, workers: int, on_stop: Callable[[], None]) -> None:
    """Run jobs until SIGTERM or SIGINT (threads; call from a process's main thread)."""
    consumer = _Consumer(
        huey,
        on_stop,
        workers=workers,
        worker_type="thread",
        periodic=True,
        max_delay=IDLE_POLL_SECONDS,
    )
    log.info("the job consumer runs with %d thread(s)", workers)
    consumer.run()
