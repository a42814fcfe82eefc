"""How the server behaves as its data grows: start-up, memory, predictions and writes, by size.

For each size it builds a data dir through the project's own code (users with a key, a live
session and a recorded key use each; one store write per store, so building is not what is
measured), and for each data dir format asked for (`--formats`): `new`, as this release writes
it, or `upgraded`, the same records as the previous release wrote them (one JSON document per
store, schema_version 1, no journal: `tests/previous_release.py`), which the first start
converts, or `redis`: the new data dir's records copied into a redis-server (append-only file
fsynced at every write) by `storage migrate`, served with `storage.backend: redis` and the
limits on a second Redis (without persistence, as README advises). It starts the real server
with 2 workers on it once (the first start, stopped at once) and again for the measurements,
and prints:

- first start and start-up (the second start): from launch until /health answers; the largest
  worker's RSS once the predictions below have run;
- POST /predict req/s and p99 (wrk, medians of alternating rounds) with one API key, quiet and
  while one login a second runs (the login writes a session), with 1,000 distinct keys in
  rotation (each one's first use noted), and with a JWT;
- the median latency of single writes through the API (register, key create, login, refresh,
  logout, admin PATCH; bcrypt at cost 4 so hashing does not hide the store) and of the CLI's
  `keys create`.

    python tests/benchmarks/scale.py [--sizes 10,1000,10000,100000] [--formats new,upgraded,redis]
        [--seconds 3] [--writes 15]

Targets (issue 21), at 100,000 users, for new and upgraded data dirs: start-up <= 2 s, a CLI
write <= 1 s, RSS <= 250 MB per worker; writes <= 5 ms median; on Redis >= 0.9x the JSON
backend's req/s.

Needs wrk (Debian: apt-get install wrk). Not part of pytest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from auth import api_keys, sessions  # noqa: E402
from auth.passwords import hash_password  # noqa: E402
from auth.storage.shapes import iso  # noqa: E402
from auth.tokens import load_secret  # noqa: E402
from auth.users import new_user  # noqa: E402
from inference_server.app import open_auth_state  # noqa: E402
from inference_server.settings import load_settings  # noqa: E402
from tests.benchmarks.auth_overhead import BENCH_ENV, PREDICT, lua, rate_and_p99  # noqa: E402
from tests.live import REPO, RedisProcess, live_server  # noqa: E402
from tests.previous_release import downgrade  # noqa: E402

ADMIN_PASSWORD = "benchmark admin passphrase"
USER_PASSWORD = "benchmark user passphrase"
ROTATION = 1_000


def build(data_dir: Path, size: int) -> list[str]:
    """A data dir of `size` users (plus an admin); returns the keys of the first ROTATION."""
    settings = load_settings(
        environ={},
        overrides={"storage": {"data_dir": str(data_dir)}, "auth": {"default_admin": None}},
    )
    state = open_auth_state(settings)
    load_secret(None, state.storage)  # the server's secret, made before any session exists
    now = int(time.time())
    user_hash = hash_password(USER_PASSWORD, rounds=4)
    users, keys, live, usage, plain = {}, {}, {}, {}, []
    admin = new_user(
        username="admin",
        email="admin@localhost",
        password_hash=hash_password(ADMIN_PASSWORD, rounds=4),
        role="admin",
        now_iso=iso(now),
    )
    users[admin["id"]] = admin
    for i in range(size):
        user = new_user(
            username=f"user{i:06d}",
            email=f"user{i:06d}@example.org",
            password_hash=user_hash,
            role="user",
            now_iso=iso(now),
        )
        users[user["id"]] = user
        key = api_keys.generate_key()
        key_id = f"key_{i:016x}"
        keys[key_id] = {
            "id": key_id,
            "user_id": user["id"],
            "name": "svc",
            "description": None,
            "prefix": key[: api_keys.DISPLAY_LENGTH],
            "hash": api_keys.hash_key(key),
            "scopes": ["models:read", "predict"],
            "is_active": True,
            "created_at": iso(now),
            "expires_at": None,
            "revoked_at": None,
            "parent_id": None,
        }
        if len(plain) < ROTATION:
            plain.append(key)
        live[sessions.new_session_id()] = {
            "user_id": user["id"],
            "refresh_jti": f"jti{i}",
            "created_at": now,
            "refreshed_at": now,
            "expires_at": now + 7 * 86400,
            "revoked_at": None,
            "revoked_reason": None,
            "scopes": None,
            "key_id": None,
        }
        usage[key_id] = {"last_used": iso(now - 3600)}
    for store, records in (
        (state.users, users),
        (state.keys, keys),
        (state.sessions, live),
        (state.key_usage.store, usage),
    ):
        store.update(lambda items, records=records: items.update(records))
        store.compact()  # the steady state: a snapshot and a short journal
    return plain


def rotation_script(path: Path, keys: list[str]) -> Path:
    table = ",".join(f'"{k}"' for k in keys)
    path.write_text(
        f"{lua(PREDICT)}local keys = {{{table}}}\nlocal i = 0\n"
        "request = function()\n  i = i % #keys + 1\n"
        '  local headers = {["Content-Type"] = "application/json", ["X-API-Key"] = keys[i]}\n'
        "  return wrk.format(nil, nil, headers)\nend\n"
    )
    return path


@contextmanager
def logins_every_second(server):
    """One password login a second (each writes a session) for the life of the block."""
    stop = threading.Event()

    def loop():
        while not stop.wait(1.0):
            body = {"username": "user000002", "password": USER_PASSWORD}
            requests.post(server.url("/auth/login"), json=body, timeout=60).raise_for_status()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def worker_rss_mb(master: int) -> list[float]:
    out = subprocess.run(
        ["ps", "-o", "rss=", "--ppid", str(master)], capture_output=True, text=True
    ).stdout
    return [int(line) / 1024 for line in out.split()]


def median_ms(call, times: int) -> float:
    spent = []
    for i in range(times):
        started = time.perf_counter()
        response = call(i)
        spent.append((time.perf_counter() - started) * 1000)
        if response is not None and response.status_code >= 400:
            raise SystemExit(f"benchmark write failed: {response.status_code} {response.text}")
    return statistics.median(spent)


def writes(server, data_dir: Path, times: int, tag: str, env: dict[str, str]) -> dict[str, float]:
    def post(path, body, headers=None):
        return requests.post(server.url(path), json=body, headers=headers or {}, timeout=60)

    def login(name, password):
        return post("/auth/login", {"username": name, "password": password}).json()

    admin = {"Authorization": "Bearer " + login("admin", ADMIN_PASSWORD)["access_token"]}
    users = [f"user{i % int(tag):06d}" for i in range(times)]  # a small data dir: some twice
    user_tokens = [login(name, USER_PASSWORD) for name in users]
    refreshes = [t["refresh_token"] for t in user_tokens]
    fresh = [login(name, USER_PASSWORD)["access_token"] for name in users]
    cli_env = {**os.environ, **env, "INFERENCE_STORAGE__DATA_DIR": str(data_dir)}
    figures = {
        "register": lambda i: post(
            "/auth/register",
            {"username": f"n{tag}{i}", "password": USER_PASSWORD, "email": f"n{tag}{i}@e.org"},
            admin,
        ),
        "key create": lambda i: post("/auth/api-keys", {"name": f"k{i}"}, admin),
        "login": lambda i: post(
            "/auth/login", {"username": "user000000", "password": USER_PASSWORD}
        ),
        "refresh": lambda i: post("/auth/refresh", {"refresh_token": refreshes[i]}),
        "logout": lambda i: post("/auth/logout", {}, {"Authorization": f"Bearer {fresh[i]}"}),
        "admin PATCH": lambda i: requests.patch(
            server.url(f"/admin/users/{admin_target(server, admin)}"),
            json={"full_name": f"name {i}"},
            headers=admin,
            timeout=60,
        ),
        "CLI keys create": lambda i: (
            subprocess.run(
                [
                    sys.executable,
                    "run.py",
                    "keys",
                    "create",
                    "--user",
                    "user000001",
                    "--name",
                    f"c{i}",
                ],
                cwd=REPO,
                env=cli_env,
                capture_output=True,
                check=True,
            )
            and None
        ),
    }
    return {name: median_ms(call, times) for name, call in figures.items()}


def admin_target(server, admin, _cache={}) -> str:  # noqa: B006 (a deliberate memo)
    if server.base not in _cache:
        users = requests.get(server.url("/admin/users?limit=2"), headers=admin, timeout=60).json()
        _cache[server.base] = users["users"][1]["id"]
    return _cache[server.base]


@contextmanager
def started(data_dir: Path, env: dict[str, str]):
    """The server started on `data_dir` with 2 workers, and the seconds until /health answered."""
    began = time.perf_counter()
    with live_server(data_dir, workers=2, env=env) as server:
        while True:
            try:
                if requests.get(server.url("/health"), timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
        yield server, time.perf_counter() - began


@contextmanager
def on_redis(data_dir: Path, tmp: Path):
    """A redis-server (append-only file, fsynced at every write, as README advises) holding the
    records of `data_dir`, copied by `storage migrate`, and a second one without persistence
    for the limits (README: their counters are disposable, and with fsync at every write each
    request would wait on one); yields the settings that use them."""
    directory = tmp / f"redis-{data_dir.name}"
    directory.mkdir()
    stores, limits = RedisProcess(directory), RedisProcess()
    stores.start()
    limits.start()
    env = {
        "INFERENCE_STORAGE__BACKEND": "redis",
        "INFERENCE_STORAGE__REDIS_URL": stores.url,
        "INFERENCE_RATE_LIMITS__STORAGE_URI": limits.url,
    }
    try:
        subprocess.run(
            [sys.executable, "run.py", "storage", "migrate", "--to", "redis"],
            cwd=REPO,
            env={
                **os.environ,
                "INFERENCE_STORAGE__DATA_DIR": str(data_dir),  # from the files, as configured
                "INFERENCE_STORAGE__REDIS_URL": stores.url,
            },
            check=True,
        )
        yield env
    finally:
        stores.stop()
        limits.stop()


def measure(size: int, data_format: str, tmp: Path, opts) -> dict[str, float | str]:
    data_dir = tmp / f"size-{size}-{data_format}"
    keys = build(data_dir, size)
    if data_format == "upgraded":
        downgrade(data_dir)
    with on_redis(data_dir, tmp) if data_format == "redis" else nullcontext({}) as backend:
        return _measure(size, data_format, data_dir, keys, backend, tmp, opts)


def _measure(size, data_format, data_dir, keys, backend, tmp, opts) -> dict[str, float | str]:
    script = tmp / "predict.lua"
    script.write_text(lua(PREDICT))
    rotation = rotation_script(tmp / f"rotation-{size}.lua", keys)
    env = {**BENCH_ENV, "INFERENCE_RATE_LIMITS__LOGIN": "100000000/minute", **backend}
    with started(data_dir, env) as (_, first_start):
        pass  # the first start (which converts an upgraded data dir), and a clean stop
    with started(data_dir, env) as (server, startup):
        one_key = {"X-API-Key": keys[0]}
        token = requests.post(
            server.url("/auth/login"),
            json={"username": "user000000", "password": USER_PASSWORD},
            timeout=60,
        ).json()["access_token"]
        run = {"seconds": opts.seconds, "connections": opts.connections}
        url = server.url("/predict")
        time.sleep(2)  # let the indexes built after start-up settle before measuring
        rate_and_p99(url, one_key, seconds=1, connections=opts.connections, script=script)
        jwt = {"Authorization": f"Bearer {token}"}
        runs: dict[str, list[tuple[float, float]]] = {}
        for _ in range(opts.rounds):  # alternating rounds, so that drift hits every variant
            for name, headers, lua_script, logins in (
                ("key", one_key, script, False),
                ("+login/s", one_key, script, True),
                ("1,000 keys", {}, rotation, False),
                ("JWT", jwt, script, False),
            ):
                with logins_every_second(server) if logins else nullcontext():
                    figures = rate_and_p99(url, headers, script=lua_script, **run)
                runs.setdefault(name, []).append(figures)
        row: dict[str, float | str] = {
            "users": f"{size:,}",
            "data dir": data_format,
            "first start s": first_start,
            "start-up s": startup,
            "RSS/worker MB": max(worker_rss_mb(server.process.pid) or [0.0]),
        }
        for name, figures in runs.items():
            row[f"{name} req/s"] = statistics.median(rate for rate, _ in figures)
            row[f"{name} p99 ms"] = statistics.median(p99 for _, p99 in figures)
        for name, ms in writes(server, data_dir, opts.writes, str(size), backend).items():
            row[f"{name} ms"] = ms
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,1000,10000,100000")
    parser.add_argument(
        "--formats",
        default="new,upgraded",
        help="data dirs as this release writes them (new), as the previous one did "
        "(upgraded: converted by the first start), or the new one's records in Redis (redis: "
        "storage.backend redis, limits on Redis too)",
    )
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--writes", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3, help="quiet / one-login-a-second pairs")
    opts = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in opts.sizes.split(",")):
            for data_format in opts.formats.split(","):
                rows.append(measure(size, data_format, Path(tmp), opts))
                print(f"measured {size:,} users, {data_format}", file=sys.stderr)
    names = list(rows[0])
    print(f"{'':<22}" + "".join(f"{row['users']:>12}" for row in rows))
    for name in names[1:]:
        cells = "".join(
            f"{row[name]:>12{'.2f' if row[name] < 10 else '.1f'}}"
            if isinstance(row[name], float)
            else f"{row[name]:>12}"
            for row in rows
        )
        print(f"{name:<22}{cells}")


if __name__ == "__main__":
    main()
