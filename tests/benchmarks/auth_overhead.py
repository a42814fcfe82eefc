"""What authentication costs on POST /predict, measured side by side in one run.

Starts two real servers under gunicorn with 2 workers each (one with auth enabled, one with
`auth.enabled: false`), then drives POST /predict with wrk, alternating no-auth, API key and JWT
for several rounds so that drift of the machine hits every variant alike. Prints requests/s per
round, then per variant the median and the best run with their ratios to no-auth (target >= 0.8).
On a shared machine whole rounds can slow down together; the best run is the figure least touched
by such outside noise, the median the more conservative one.

    python tests/benchmarks/auth_overhead.py [--rounds 7] [--seconds 3] [--connections 64]

Needs wrk (Debian: apt-get install wrk). Not part of the pytest run.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.live import live_server  # noqa: E402

BODY = '{"data": [[1.0, 2.0, 3.0]]}'
LUA = f"""
wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""
# Generous limits so the benchmark measures auth, not 429s, once rate limiting exists.
BENCH_ENV = {
    "INFERENCE_AUTH__RATE_LIMIT_PER_MINUTE": "100000000",
    "INFERENCE_RATE_LIMITS__ROLES": "{admin: 100000000/minute, user: 100000000/minute}",
}


def wrk(
    url: str, headers: dict[str, str], *, seconds: int, connections: int, script: Path
) -> float:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script)]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw error responses:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    opts = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        tmp_path = Path(tmp)
        script = tmp_path / "post.lua"
        script.write_text(LUA)
        secured = stack.enter_context(live_server(tmp_path / "auth", workers=2, env=BENCH_ENV))
        open_server = stack.enter_context(
            live_server(
                tmp_path / "open", workers=2, env={**BENCH_ENV, "INFERENCE_AUTH__ENABLED": "false"}
            )
        )

        login = requests.post(
            secured.url("/auth/login"),
            json={"username": "admin", "password": "admin123"},
            timeout=60,
        )
        token = login.json()["access_token"]
        key = requests.post(
            secured.url("/auth/api-keys"),
            json={"name": "bench"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        ).json()["key"]
        variants = {
            "no-auth": (open_server.url("/predict"), {}),
            "api-key": (secured.url("/predict"), {"X-API-Key": key}),
            "jwt": (secured.url("/predict"), {"Authorization": f"Bearer {token}"}),
        }
        for url, headers in variants.values():  # warm up every worker and cache
            wrk(url, headers, seconds=1, connections=opts.connections, script=script)

        results: dict[str, list[float]] = {name: [] for name in variants}
        print(
            f"POST /predict, gunicorn 2 workers, wrk {opts.connections} connections, "
            f"{opts.seconds}s per run, {opts.rounds} rounds"
        )
        for r in range(opts.rounds):
            row = []
            for name, (url, headers) in variants.items():
                rps = wrk(
                    url, headers, seconds=opts.seconds, connections=opts.connections, script=script
                )
                results[name].append(rps)
                row.append(f"{name} {rps:8.1f}")
            print(f"round {r + 1}: " + "  ".join(row))

    median = {name: statistics.median(values) for name, values in results.items()}
    best = {name: max(values) for name, values in results.items()}
    print(f"\n{'variant':<10}{'median req/s':>14}{'ratio':>8}{'best req/s':>14}{'ratio':>8}")
    for name in results:
        print(
            f"{name:<10}{median[name]:>14.1f}{median[name] / median['no-auth']:>8.2f}"
            f"{best[name]:>14.1f}{best[name] / best['no-auth']:>8.2f}"
        )


if __name__ == "__main__":
    main()
