"""A real server process for tests: `python run.py` on 127.0.0.1, stopped when the test ends."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 60
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Headless, and quiet: without the background-networking flags Chromium keeps trying hosts this
# machine cannot reach.
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
ENDED = "(the server's output ended)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log: list[str] = []
        self.logged = threading.Condition()

    def note(self, line: str) -> None:
        with self.logged:
            self.log.append(line)
            self.logged.notify_all()

    def wait_for_log(self, text: str, count: int) -> None:
        """Wait until `text` has appeared in `count` lines of the server's output; fails if the
        server ends first."""

        def seen() -> bool:
            return sum(text in line for line in self.log) >= count

        with self.logged:
            self.logged.wait_for(lambda: ENDED in self.log or seen(), READY_TIMEOUT)
            if ENDED in self.log or not seen():
                raise AssertionError(f"{text!r} not seen {count} times:\n" + "".join(self.log))

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: the children of the server's process but its job consumer."""
        pid = self.process.pid
        children = [
            int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]
        return [child for child in children if child not in self.consumer_pids()]

    def consumer_pids(self) -> list[int]:
        """The job consumer the server's master started (`gunicorn_hooks.when_ready`)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [
            int(child)
            for child in children
            if b"jobs\x00worker" in Path(f"/proc/{child}/cmdline").read_bytes()
        ]

    @contextmanager
    def consumer_paused(self, data_dir: Path) -> Iterator[None]:
        """The job consumer stopped (SIGSTOP) for the block, so queued jobs stay queued. It is
        stopped while this process holds the queue's write lock (`data_dir/jobs/queue.db`): a
        consumer stopped inside a write of its own would hold the lock, and every submission
        would wait on it and answer 503."""
        (consumer,) = self.consumer_pids()
        queue = sqlite3.connect(data_dir / "jobs" / "queue.db", timeout=30, isolation_level=None)
        try:
            queue.execute("BEGIN IMMEDIATE")  # waits out a write the consumer is making
            os.kill(consumer, signal.SIGSTOP)
            queue.execute("ROLLBACK")
        finally:
            queue.close()
        try:
            yield
        finally:
            os.kill(consumer, signal.SIGCONT)

    def url(self, path: str) -> str:
        return self.base + path

    def login_admin(self) -> dict[str, Any]:
        """Log in as the default admin (admin123); the token response."""
        response = requests.post(
            self.url("/auth/login"), json={"username": "admin", "password": "admin123"}, timeout=60
        )
        assert response.status_code == 200, response.text
        return response.json()

    def admin_credentials(self) -> dict[str, dict[str, str]]:
        """Log in as the default admin and make an API key: the headers of each, by kind."""
        token = self.login_admin()["access_token"]
        key = requests.post(
            self.url("/auth/api-keys"),
            json={"name": "test-key"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        ).json()["key"]
        return {"api-key": {"X-API-Key": key}, "jwt": {"Authorization": f"Bearer {token}"}}


def server_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment without INFERENCE_* settings, a private data dir, cheap
    bcrypt and `extra`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
    environ.update(
        {
            "INFERENCE_STORAGE__DATA_DIR": str(data_dir),
            "INFERENCE_AUTH__BCRYPT_ROUNDS": "4",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return environ


@contextmanager
def served(
    command: list[str], env: dict[str, str], port: int, workers: int
) -> Iterator[LiveServer]:
    """Run `command` (a server on 127.0.0.1:`port`) from the repo; yield once `workers` workers
    say they are serving; always stop it afterwards."""
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    server = LiveServer(process, port)

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            server.note(line)
        server.note(ENDED)  # let a waiter see it

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        server.wait_for_log("this worker is serving", workers)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


@contextmanager
def live_server(
    data_dir: Path,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[LiveServer]:
    """Start the server and yield once every worker is serving; always stop it afterwards."""
    port = free_port()
    command = [
        sys.executable,
        "run.py",
        *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
        *args,
    ]
    with served(command, server_env(data_dir, **(env or {})), port, workers) as server:
        yield server


class RedisProcess:
    """A real redis-server on 127.0.0.1 that a test may stop and start again on the same port;
    with `directory` it keeps its data there in an append-only file (AOF), so a restart
    keeps every acknowledged write."""

    def __init__(self, directory: Path | None = None) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        persistence = ["--appendonly", "no"]
        if self.directory is not None:
            persistence = ["--appendonly", "yes", "--appendfsync", "always"]
            persistence += ["--dir", str(self.directory)]
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        self._process = process = subprocess.Popen(
            [*command, "--save", "", *persistence],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError("redis-server did not start")
        # Drained from here on, so a chatty server never blocks on a full pipe.
        self._drain = threading.Thread(target=process.stdout.read, daemon=True)
        self._drain.start()

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            process.wait(timeout=20)
            self._drain.join(timeout=5)
            assert process.stdout is not None
            process.stdout.close()


@contextmanager
def redis_server(directory: Path | None = None) -> Iterator[str]:
    """A throwaway redis-server on 127.0.0.1; yields its URI and stops it afterwards."""
    server = RedisProcess(directory)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@contextmanager
def serving_app(app: Any) -> Iterator[str]:
    """`app` served over real HTTP on 127.0.0.1 by a threaded werkzeug server in this process,
    so that the test keeps its clock in hand; yields the base URL; stopped afterwards."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
