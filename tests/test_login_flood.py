"""A login flood against the real server (gevent workers): predictions are still answered.

Two properties, each proven by the order of answers rather than by timing:
- failed logins held back by `auth.failed_login_delay_seconds` do not occupy a worker;
- a password hash runs beside the worker's other requests (on a thread of its own), and a login
  beyond `auth.password_hash_slots` is refused at once instead of queueing.
"""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.live import live_server

pytestmark = pytest.mark.slow

WRONG_PASSWORD = {"username": "admin", "password": "not the password"}
BAD_LOGIN = json.dumps(WRONG_PASSWORD)
PREDICT = {"data": [[1.0, 2.0, 3.0]]}


def _send_login(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        (
            "POST /auth/login HTTP/1.1\r\n"
            f"Host: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BAD_LOGIN)}\r\nConnection: close\r\n\r\n{BAD_LOGIN}"
        ).encode()
    )
    return sock


def _answered(sockets: list[socket.socket]) -> list[socket.socket]:
    return select.select(sockets, [], [], 0)[0]


def test_held_failed_logins_do_not_occupy_the_worker(tmp_path):
    env = {"INFERENCE_AUTH__FAILED_LOGIN_DELAY_SECONDS": "3"}
    with live_server(tmp_path / "data", workers=1, env=env) as server:
        key = server.admin_credentials()["api-key"]
        held = [_send_login(server.base) for _ in range(40)]
        try:
            # One worker, 40 logins waiting out their delay: a worker per request would make
            # this prediction wait for them; a gevent worker answers it while they still wait.
            predict = requests.post(server.url("/predict"), json=PREDICT, headers=key, timeout=20)
            assert predict.status_code == 200
            assert _answered(held) == []
            for sock in held:  # and each login is answered in the end, in the error shape
                sock.settimeout(60)
                answer = b"".join(iter(lambda s=sock: s.recv(65536), b""))
                status = int(answer.split(b" ", 2)[1])
                body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
                assert status in (401, 429) and body["error"]["code"] in (
                    "INVALID_CREDENTIALS",
                    "RATE_LIMIT_EXCEEDED",
                )
        finally:
            for sock in held:
                sock.close()


def _lock_held(path: Path) -> bool:
    """Whether any process holds a flock on `path` (Linux /proc/locks), without touching it."""
    try:
        inode = path.stat().st_ino
    except FileNotFoundError:
        return False
    return (
        re.search(rf"\s[0-9a-f]+:[0-9a-f]+:{inode}\s", Path("/proc/locks").read_text()) is not None
    )


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_password_hash_runs_beside_predictions_and_extra_logins_are_refused(tmp_path):
    env = {
        "INFERENCE_AUTH__BCRYPT_ROUNDS": "14",  # about a second per hash: a wide window
        "INFERENCE_AUTH__FAILED_LOGIN_DELAY_SECONDS": "0",
        "INFERENCE_AUTH__PASSWORD_HASH_SLOTS": "1",
    }
    data_dir = tmp_path / "data"
    with live_server(data_dir, workers=1, env=env) as server:
        key = server.admin_credentials()["api-key"]
        slot = data_dir / "slots" / "password-hash-0.lock"
        first: dict[str, requests.Response] = {}
        hashing = threading.Thread(
            target=lambda: first.update(
                answer=requests.post(server.url("/auth/login"), json=WRONG_PASSWORD, timeout=60)
            )
        )
        hashing.start()
        deadline = time.monotonic() + 30
        while not _lock_held(slot):  # the first login is now inside bcrypt
            assert time.monotonic() < deadline, "the login never took the hash slot"
        predict = requests.post(server.url("/predict"), json=PREDICT, headers=key, timeout=60)
        second = requests.post(
            server.url("/auth/login"),
            json={"username": "admin", "password": "admin123"},
            timeout=60,
        )
        still_hashing = _lock_held(slot)
        hashing.join(timeout=60)
    assert predict.status_code == 200
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert "password checks" in second.json()["error"]["message"]
    assert still_hashing, "the prediction and the refusal waited for the hash"
    assert first["answer"].status_code == 401
