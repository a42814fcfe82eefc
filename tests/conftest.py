"""Fixtures: apps built from injected settings, a frozen clock, and helpers that act as a user."""

from __future__ import annotations

import copy
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from auth.storage.json import JsonStore
from inference_server.app import create_app
from inference_server.cli import cli
from inference_server.settings import load_settings
from tests.live import RedisProcess

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = {
    "users": "users",
    "api_keys": "keys",
    "sessions": "sessions",
    "api_key_usage": "keys",
    "models_state": "models",
    "usage": "usage",
    "jobs": "jobs",
}
DEMO_MODEL = str(REPO / "data" / "models" / "demo.json")
ADMIN = ("admin", "admin123")
PASSWORD = "correct horse battery staple"


class FrozenClock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def base_overrides(data_dir: Path) -> dict[str, Any]:
    """Settings every test app starts from: a private data dir and cheap bcrypt."""
    return {
        "storage": {"data_dir": str(data_dir), "lock_timeout_seconds": 2},
        # Limits out of the way; the rate limit tests set their own.
        "auth": {
            "bcrypt_rounds": 4,
            "rate_limit_per_minute": 1_000_000,
            "password_hash_slots": 8,
            "failed_login_delay_seconds": 0,  # tests of the delay turn it on
        },
        # The moving window is exact: a test's few requests never straddle a window boundary
        # that the default sliding-window counter would round across.
        "rate_limits": {
            "roles": {"admin": "1000000/minute"},
            "login": "1000000/minute",
            "strategy": "moving-window",
        },
        "models": {"registry": [{"name": "demo", "backend": "builtin", "path": DEMO_MODEL}]},
    }


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def run(data_dir):
    """Invoke the CLI on the test's data dir; returns the click Result."""
    runner = CliRunner()
    env = {"INFERENCE_STORAGE__DATA_DIR": str(data_dir), "INFERENCE_AUTH__BCRYPT_ROUNDS": "4"}

    def invoke(*args: str, input: str | None = None, **more_env: str):
        return runner.invoke(cli, list(args), input=input, env={**env, **more_env})

    return invoke


@pytest.fixture(scope="session")
def redis_url():
    """A real redis-server on 127.0.0.1 for the whole run (each test keeps to its own prefix:
    `on_redis`); skipped where none is installed."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    server = RedisProcess()
    server.start()
    yield server.url
    server.stop()


def on_redis(url: str) -> dict[str, Any]:
    """The config sections of an app whose storage is a data set of its own on `url`."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    return {"storage": {"backend": "redis", "redis_url": url, "redis_prefix": prefix}}


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def make_app(data_dir: Path, clock: FrozenClock) -> Iterator[Callable[..., Flask]]:
    """Build an app over the test's data dir; keyword sections override the config. Apps on
    Redis let go of their connections when the test ends."""
    made: list[Flask] = []

    def factory(**sections: Any) -> Flask:
        overrides = deep_merge(base_overrides(data_dir), sections)
        app = create_app(
            load_settings(overrides=overrides, environ={}), clock=clock, sleep=clock.sleep
        )
        app.testing = True
        made.append(app)
        return app

    yield factory
    for app in made:
        if app.extensions["settings"].storage.backend == "redis" and "jobs" in app.extensions:
            app.extensions["jobs"].close()
        app.extensions["auth"].close()  # the files of its stores and of its slots


@pytest.fixture
def app(make_app) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def on_disk(data_dir: Path, name: str) -> dict[str, dict[str, Any]]:
    """The records of store `name` as a process opening the data dir now would read them."""
    store = JsonStore(data_dir / f"{name}.json", collection=COLLECTIONS[name])
    try:
        return dict(store.records())
    finally:
        store.close()


def disk_text(data_dir: Path, name: str) -> str:
    """Everything store `name` holds on disk (snapshot and journal), as text."""
    files = (data_dir / f"{name}.json", data_dir / f"{name}.journal.jsonl")
    return "".join(f.read_text() for f in files if f.exists())


def compacted(data_dir: Path, name: str) -> Path:
    """Fold the journal of store `name` into its snapshot (as the server does in the
    background) and return the snapshot, ready for a hand edit."""
    store = JsonStore(data_dir / f"{name}.json", collection=COLLECTIONS[name])
    store.compact()
    return store.path


def assert_error(response, status: int, code: str) -> dict[str, Any]:
    """Pin the one error shape: status, code, message, request id, details; returns the error.
    `response` is the test client's or, from a live server, one of `requests`."""
    live = not hasattr(response, "get_json")
    assert response.status_code == status, response.text if live else response.get_data()
    assert response.headers["Content-Type"] == "application/json"
    body = response.json() if live else response.get_json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "request_id", "details"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert error["request_id"] == response.headers["X-Request-ID"]
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    return error


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Actor:
    """Drives the API the way a user with curl would."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def login(self, username: str, password: str, **environ: Any) -> dict[str, Any]:
        response = self.client.post(
            "/auth/login",
            json={"username": username, "password": password},
            environ_base=environ,
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    def admin_headers(self) -> dict[str, str]:
        return bearer(self.login(*ADMIN)["access_token"])

    def register(self, username: str, *, password: str = PASSWORD, role: str = "user") -> str:
        response = self.client.post(
            "/auth/register",
            json={
                "username": username,
                "password": password,
                "email": f"{username}@example.org",
                "role": role,
            },
            headers=self.admin_headers(),
        )
        assert response.status_code == 201, response.get_data(as_text=True)
        return response.get_json()["user_id"]

    def user_headers(self, username: str = "alice", *, role: str = "user") -> dict[str, str]:
        self.register(username, role=role)
        return bearer(self.login(username, PASSWORD)["access_token"])

    def create_key(self, headers: dict[str, str], **body: Any) -> dict[str, Any]:
        response = self.client.post("/auth/api-keys", json={"name": "svc", **body}, headers=headers)
        assert response.status_code == 201, response.get_data(as_text=True)
        return response.get_json()

    def predict(self, headers: dict[str, str], data: Any = ((1.0, 2.0, 3.0),)):
        return self.client.post("/predict", json={"data": [list(r) for r in data]}, headers=headers)


@pytest.fixture
def actor(client: FlaskClient) -> Actor:
    return Actor(client)
