"""This server's POST /predict beside a bare Flask app and the common Flask-JWT-Extended stack.

Every variant serves the same demo model to the same request (`{"data": [[1.0, 2.0, 3.0]]}`)
under the same gunicorn (2 gevent workers, no keep-alive, as `python run.py` runs), and wrk
drives each in turn with the same load; rounds alternate the variants so that drift of the
machine hits all alike. The table gives each variant's median req/s and p99 and their ratios to
the bare Flask app (SPEC targets: API key and JWT >= 0.9x req/s and p99 <= 1.2x; auth disabled
>= 0.95x; Redis >= 0.85x of the same server on memory). No prediction is cached: each request
runs the model.

- bare flask: Flask + NumPy, no auth, no limits (`peers/bare_app.py`): the ceiling of the stack;
- flask-jwt-extended: `@jwt_required()` + a Flask-Limiter limit per identity (`peers/jwt_app.py`);
- this server with auth disabled (limited per client address), with an API key and with a JWT
  (limited per user), with memory:// limit storage and the JSON files; with `--redis` also with
  the limits on Redis (`redis limits`, the stores in files) and with Redis holding both the
  limits and the stores (`redis`: `storage.backend: redis`), each given as a ratio to the same
  variant on memory and files, and the last also to the one with its limits on Redis; and the
  yardstick of those rows, this server with an API key on memory and files plus one Redis PING
  a request in an app hook (`memory + PING`: `peers/round_trip.py`), the least a trip costs;
  with `--no-access-log` also with its access log off (bare Flask writes none);
- with `--floor`, the floor (`peers/floor_app.py`): bare Flask plus the plainest way of doing
  an API key, a per-user budget, the standard headers, metrics and an access line, and nothing
  else; and the same with the plainest usage accounting, quotas and per-key limits too, also
  as a ratio to the floor;
- with `--hooked`, bare Flask and this server (API key) each with one app-level after_request
  hook of an app owner's (`peers/hooked.py`);
- with `--accounting`, this server (API key) with no quota and a key without limits, with
  metrics off (`accounting off`) and on, as it ships (`accounting off, metrics on`); and with
  metrics on, a quota tier for every user and a key limited to models, a rate of its own and a
  number of predictions in flight (`accounting on`), never reached, also as a ratio to each of
  the first two: to the second, quotas and per-key limits alone, as SPEC words its target
  (>= 0.95x of the same server with them off); to the first, metrics too. The usage ledger
  counts in all three: it is not optional.

    pip install -r tests/benchmarks/peers/requirements.txt   # the peers' own packages
    python tests/benchmarks/peers.py [--rounds 5] [--seconds 5] [--connections 8] [--redis]
        [--floor] [--hooked] [--no-access-log] [--accounting]

About 3 minutes with the defaults (5 variants x 5 rounds x 5 s, plus start-up and warm-up); each
option adds variants. Needs wrk (Debian: apt-get install wrk). Not part of pytest.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.auth_overhead import BENCH_ENV, HUGE, lua, rate_and_p99  # noqa: E402
from tests.live import free_port, live_server, redis_server  # noqa: E402

PEERS = Path(__file__).resolve().parent / "peers"
PREDICT = '{"data": [[1.0, 2.0, 3.0]]}'


@contextmanager
def peer(module: str, env: dict[str, str] | None = None):
    """gunicorn serving `peers/<module>.py` as `python run.py` serves ours; yields its base URL."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        f"--bind=127.0.0.1:{port}",
        "--workers=2",
        "--worker-class=gevent",
        "--keep-alive=0",
        f"--chdir={PEERS}",
        f"{module}:app",
    ]
    log = tempfile.TemporaryFile()  # read only if it fails to start; a pipe would fill up
    process = subprocess.Popen(
        command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # up to a minute for both workers to answer
            try:
                requests.post(f"{base}/predict", json={}, timeout=1)
                break
            except (requests.ConnectionError, requests.Timeout):  # not up, or still loading
                if process.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"{module} did not start:\n{log.read().decode()}") from None
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def variants(stack: ExitStack, tmp: Path, opts) -> dict[str, tuple[str, dict[str, str]]]:
    found: dict[str, tuple[str, dict[str, str]]] = {}
    bare = stack.enter_context(peer("bare_app"))
    found["bare flask"] = (f"{bare}/predict", {})
    jwt_peer = stack.enter_context(peer("jwt_app", {"PEER_JWT_SECRET": secrets.token_urlsafe(48)}))
    login = requests.post(
        f"{jwt_peer}/login", json={"username": "admin", "password": "admin123"}, timeout=30
    )
    bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
    found["flask-jwt-extended"] = (f"{jwt_peer}/predict", bearer)
    if opts.floor:
        key = f"sk_live_{secrets.token_hex(16)}"
        floor = stack.enter_context(peer("floor_app", {"PEER_API_KEY": key}))
        found["floor, api-key"] = (f"{floor}/predict", {"X-API-Key": key})
        env = {"PEER_API_KEY": key, "PEER_ACCOUNTING": "1"}
        accounted = stack.enter_context(peer("floor_app", env))
        found["floor, accounting"] = (f"{accounted}/predict", {"X-API-Key": key})
    if opts.hooked:
        found["bare flask + hook"] = (f"{stack.enter_context(peer('hooked'))}/predict", {})
        hooked = stack.enter_context(
            peer("hooked", {**_peer_env(tmp / "hooked"), "PEER_APP": "ours"})
        )
        found["ours, api-key + hook"] = (f"{hooked}/predict", _api_key(hooked))
    storages = {"memory": "memory://"}
    if opts.redis:
        uri = stack.enter_context(redis_server())
        storages |= {"redis limits": uri, "redis": uri}
        env = {**_peer_env(tmp / "round-trip"), "PEER_REDIS_URL": uri}
        pinging = stack.enter_context(peer("round_trip", env))
        found["ours, api-key/memory + PING"] = (f"{pinging}/predict", _api_key(pinging))
    for label, uri in storages.items():
        env = {**BENCH_ENV, "INFERENCE_RATE_LIMITS__STORAGE_URI": uri}
        if label == "redis":  # the limits and the stores: users, keys, sessions, model state
            env |= {"INFERENCE_STORAGE__BACKEND": "redis", "INFERENCE_STORAGE__REDIS_URL": uri}
        off = {
            **env,
            "INFERENCE_AUTH__ENABLED": "false",
            "INFERENCE_STORAGE__REDIS_PREFIX": "auth-off",
        }
        open_server = stack.enter_context(live_server(tmp / f"off-{label}", workers=2, env=off))
        found[f"ours, auth off/{label}"] = (open_server.url("/predict"), {})
        server = stack.enter_context(live_server(tmp / label, workers=2, env=env))
        for kind, headers in server.admin_credentials().items():
            found[f"ours, {kind}/{label}"] = (server.url("/predict"), headers)
    if opts.accounting:
        found |= _accounting_variants(stack, tmp)
    if opts.no_access_log:
        env = {**BENCH_ENV, "INFERENCE_SERVER__ACCESS_LOG": "false"}
        quiet = stack.enter_context(live_server(tmp / "quiet", workers=2, env=env))
        found["ours, api-key, no access log"] = (
            quiet.url("/predict"),
            quiet.admin_credentials()["api-key"],
        )
    return found


def _peer_env(data_dir: Path) -> dict[str, str]:
    """The settings of this server served from `peers/` (as `hooked` and `round_trip` serve it)."""
    demo = PEERS.parents[2] / "data" / "models" / "demo.json"  # gunicorn runs in PEERS
    return {
        **BENCH_ENV,
        "INFERENCE_STORAGE__DATA_DIR": str(data_dir),
        "INFERENCE_MODELS__REGISTRY": f"[{{name: demo, backend: builtin, path: {demo}}}]",
    }


def _accounting_variants(stack: ExitStack, tmp: Path) -> dict[str, tuple[str, dict[str, str]]]:
    off = {**BENCH_ENV, "INFERENCE_METRICS__ENABLED": "false"}
    quotas = f"{{requests_per_day: {HUGE}, samples_per_month: {HUGE}}}"
    on = {
        **BENCH_ENV,
        "INFERENCE_QUOTAS__TIERS": f"{{bench: {quotas}}}",
        "INFERENCE_QUOTAS__DEFAULT_TIER": "bench",
    }
    limited = {"models": ["demo", "churn-*"], "rate_limit": f"{HUGE}/minute", "max_concurrent": 64}
    found = {}
    for label, env, limits in (
        ("off", off, {}),
        ("off, metrics on", BENCH_ENV, {}),
        ("on", on, limited),
    ):
        data_dir = tmp / f"accounting-{label.replace(', ', '-').replace(' ', '-')}"
        server = stack.enter_context(live_server(data_dir, workers=2, env=env))
        headers = _api_key(server.base, **limits)
        found[f"ours, api-key, accounting {label}"] = (server.url("/predict"), headers)
    return found


def _api_key(base: str, **limits: object) -> dict[str, str]:
    """The X-API-Key header of a new key of the default admin of the server at `base`, with
    `limits` (models, rate_limit, max_concurrent)."""
    login = requests.post(
        f"{base}/auth/login", json={"username": "admin", "password": "admin123"}, timeout=60
    )
    key = requests.post(
        f"{base}/auth/api-keys",
        json={"name": "bench", **limits},
        headers={"Authorization": f"Bearer {login.json()['access_token']}"},
        timeout=60,
    )
    assert key.status_code == 201, key.text
    return {"X-API-Key": key.json()["key"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--redis", action="store_true", help="also with Redis for the limits and the stores"
    )
    parser.add_argument(
        "--floor", action="store_true", help="also bare Flask with the plainest pipeline's parts"
    )
    parser.add_argument("--hooked", action="store_true", help="also with an app-level hook")
    parser.add_argument(
        "--no-access-log", action="store_true", help="also this server with its access log off"
    )
    parser.add_argument(
        "--accounting",
        action="store_true",
        help="also this server with metrics, quotas and per-key limits off and on",
    )
    opts = parser.parse_args()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        script = tmp / "predict.lua"
        script.write_text(lua(PREDICT))
        found = variants(stack, tmp, opts)

        def run(url, headers, seconds):
            return rate_and_p99(
                url, headers, seconds=seconds, connections=opts.connections, script=script
            )

        for url, headers in found.values():  # warm every worker
            run(url, headers, 2)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in found}
        print(
            f"POST /predict {PREDICT}, gunicorn 2 gevent workers each, wrk -c{opts.connections}, "
            f"{opts.seconds}s per run, {opts.rounds} alternating rounds"
        )
        for r in range(opts.rounds):
            for name, (url, headers) in found.items():
                results[name].append(run(url, headers, opts.seconds))
            print(f"round {r + 1}: " + "  ".join(f"{n} {v[-1][0]:.0f}" for n, v in results.items()))

    rate = {n: statistics.median(v[0] for v in runs) for n, runs in results.items()}
    p99 = {n: statistics.median(v[1] for v in runs) for n, runs in results.items()}
    base = "bare flask"
    print(
        f"\n{'variant':<44}{'req/s':>10}{'x bare':>8}{'p99 ms':>9}{'x bare':>8}{'x memory':>10}"
        f"{'x redis limits':>16}"
    )
    for name in results:
        # On Redis as a ratio to the same variant on memory:// and the JSON files, and (stores
        # on Redis too) to the same with only its limits on Redis.
        kind, _, label = name.rpartition("/")
        versus = ""
        if label in ("redis", "redis limits", "memory + PING"):
            versus = f"{rate[name] / rate[f'{kind}/memory']:>10.2f}"
        if label == "redis":
            versus += f"{rate[name] / rate[f'{kind}/redis limits']:>16.2f}"
        if name.endswith("accounting on"):
            off, metered = name.replace(" on", " off"), name.replace(" on", " off, metrics on")
            versus = (
                f"{rate[name] / rate[off]:>10.2f} x off"
                f"{rate[name] / rate[metered]:>8.2f} x off, metrics on"
            )
        if name == "floor, accounting":
            versus = f"{rate[name] / rate['floor, api-key']:>10.2f} x floor"
        print(
            f"{name:<44}{rate[name]:>10.0f}{rate[name] / rate[base]:>8.2f}"
            f"{p99[name]:>9.2f}{p99[name] / p99[base]:>8.2f}{versus}"
        )


if __name__ == "__main__":
    main()
