"""Instructions per POST /predict, counted by valgrind's callgrind: bare Flask beside this server.

Wall-clock figures of one process moved by ±15% between identical runs on a shared machine, too
much to show a change of a few percent in the request pipeline. callgrind counts instructions:
the same for the same code and inputs whatever else the machine is doing. Each variant runs in
a process of its own under valgrind, twice: its app built, 200 requests to warm it, then 0 and
then `--requests` more, each through the app's WSGI callable with a prepared environ (no
server, no network: the pipeline and the model); (total at N - total at 0) / N is its cost per
request, given also as a multiple of bare Flask's. Runs two processes at a time.

- bare flask: `peers/bare_app.py`, as `peers.py` serves it;
- floor: `peers/floor_app.py`, bare Flask plus the plainest way of doing an API key, a per-user
  budget, the standard headers, metrics and an access line (`peers.py --floor`); floor-acct,
  the same with the plainest accounting too (`PEER_ACCOUNTING=1`), also as a multiple of floor;
- ours, auth off / api-key / jwt: this server with the tests' base settings, the default
  strategy, the access log written as a server writes it (to /dev/null here), metrics on;
- accounting off / on (`peers.py --accounting` in instructions): an API key with metrics off,
  no quota and a key without limits, then with metrics on, a quota tier for every user and a
  key limited to models, a rate of its own and a number of predictions in flight (never
  reached); `on` is also given as a multiple of `off` and of `key` (the server as it ships, metrics
  on: quotas and per-key limits alone, as SPEC words its target of >= 0.95x the throughput).

The background jobs that run on the wall clock (writing usage and key use, sweeping sessions)
are set to run hourly: under valgrind, fifty times slower, they would otherwise fall into the
count fifty times as often as they do in a server. Children run with PYTHONHASHSEED=0.

    python tests/benchmarks/instructions.py [--requests 1000]
        [--variants bare,floor,floor-acct,off,key,jwt,acct-off,acct-on]

Needs valgrind (Debian: apt-get install valgrind). About 8 minutes with the defaults. Not part
of pytest; use it to compare two trees of the code (run it in each), not to claim throughput:
`peers.py` measures that.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from werkzeug.test import EnvironBuilder

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

BODY = b'{"data": [[1.0, 2.0, 3.0]]}'
WARM = 200
VARIANTS = {
    "bare": "bare flask",
    "floor": "floor, api-key",
    "floor-acct": "floor, accounting",
    "off": "ours, auth off",
    "key": "ours, api-key",
    "jwt": "ours, jwt",
    "acct-off": "accounting off",
    "acct-on": "accounting on",
}
# Accounting on: limits that hold but are never reached.
TIER = {"requests_per_day": 10**12, "samples_per_month": 10**12}
KEY_LIMITS = {"models": ["demo", "churn-*"], "rate_limit": "1000000/minute", "max_concurrent": 64}
HOURLY = {  # the jobs that run on the wall clock (see the module's docstring)
    "usage": {"flush_seconds": 3600},
    "storage": {"usage_flush_seconds": 3600, "session_sweep_minutes": 60},
}


def environ(headers: dict[str, str]) -> dict[str, Any]:
    """A WSGI environ of `POST /predict` with `headers` from a loopback client."""
    return EnvironBuilder(
        "/predict",
        method="POST",
        data=BODY,
        content_type="application/json",
        headers=headers,
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    ).get_environ()


def build(variant: str, data_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The WSGI app of `variant` and the environ of its requests."""
    if variant in ("bare", "floor", "floor-acct"):
        sys.path.insert(0, str(ROOT / "tests" / "benchmarks" / "peers"))
        if variant == "bare":
            from bare_app import app  # type: ignore[import-not-found]

            return app, environ({})
        os.environ["PEER_ACCOUNTING"] = "1" if variant == "floor-acct" else "0"
        import floor_app  # type: ignore[import-not-found]

        for handler in floor_app.logs.ACCESS.handlers:  # as below: the line, to /dev/null
            handler.setStream(open(os.devnull, "w"))  # lives as long as the process
        return floor_app.app, environ({"X-API-Key": floor_app.KEY})
    from inference_server import logs
    from inference_server.app import create_app
    from inference_server.settings import load_settings
    from tests.conftest import Actor, base_overrides, deep_merge

    logs.configure("text")
    for handler in logs.ACCESS.handlers:  # the access line written as a server writes it
        handler.setStream(open(os.devnull, "w"))  # lives as long as the process
    logging.getLogger().setLevel(logging.ERROR)  # the default admin's warning
    sections = {
        "off": {"auth": {"enabled": False}},
        "acct-off": {"metrics": {"enabled": False}},
        "acct-on": {"quotas": {"tiers": {"bench": TIER}, "default_tier": "bench"}},
    }.get(variant, {})
    overrides = deep_merge(deep_merge(base_overrides(data_dir), HOURLY), sections)
    overrides["rate_limits"] = {**overrides["rate_limits"], "strategy": "sliding-window-counter"}
    app = create_app(load_settings(overrides=overrides, environ={}))
    actor = Actor(app.test_client())
    if variant in ("key", "acct-off", "acct-on"):
        limits = KEY_LIMITS if variant == "acct-on" else {}
        key = actor.create_key(actor.admin_headers(), **limits)["key"]
        return app, environ({"X-API-Key": key})
    if variant == "jwt":
        return app, environ(actor.admin_headers())
    return app, environ({})


def serve(app: Any, env: dict[str, Any], requests: int) -> None:
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    for _ in range(requests):
        b"".join(app({**env, "wsgi.input": io.BytesIO(BODY)}, start_response))
        if not statuses.pop().startswith("200"):
            raise SystemExit("a request was not answered 200")


def child(variant: str, requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app, env = build(variant, Path(tmp))
        serve(app, env, WARM)
        serve(app, env, requests)


def counted(variant: str, requests: int) -> int:
    """Instructions callgrind counts in a child that serves `requests` after warming up."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={tmp}/out",
            sys.executable,
            __file__,
            "--child",
            variant,
            str(requests),
        ]
        environ = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environ)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return int(found.group(1))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    opts = parser.parse_args()
    chosen = opts.variants.split(",")
    unknown = set(chosen) - set(VARIANTS)
    if unknown or "bare" not in chosen:
        raise SystemExit(f"--variants: choose from {', '.join(VARIANTS)}, bare included")
    runs = [(variant, n) for variant in chosen for n in (0, opts.requests)]
    with ThreadPoolExecutor(2) as pool:
        totals = dict(zip(runs, pool.map(lambda run: counted(*run), runs), strict=True))
    per_request = {v: (totals[v, opts.requests] - totals[v, 0]) / opts.requests for v in chosen}
    print(f"POST /predict through the WSGI callable, {opts.requests} requests after {WARM}:")
    print(f"{'variant':<16} {'instructions':>13} {'x bare':>7}")
    for variant in chosen:
        cost = per_request[variant]
        print(f"{VARIANTS[variant]:<16} {cost:13,.0f} {cost / per_request['bare']:7.2f}")
    for base in ("acct-off", "key"):  # metrics off; on, as the server ships
        if {base, "acct-on"} <= set(chosen):
            ratio = per_request["acct-on"] / per_request[base]
            print(f"accounting on: {ratio:.2f}x the instructions of {VARIANTS[base]}")
    if {"floor", "floor-acct"} <= set(chosen):
        ratio = per_request["floor-acct"] / per_request["floor"]
        print(f"the floor with accounting: {ratio:.2f}x the instructions of the floor")


if __name__ == "__main__":
    main()
