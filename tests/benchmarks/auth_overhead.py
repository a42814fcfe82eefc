"""What authentication and rate limiting cost on POST /predict, measured side by side in one run.

Part 1, throughput. Real servers under gunicorn with 2 workers each, for each rate-limit storage
(memory, and Redis when redis-server is installed): one with `auth.enabled: false` (the baseline,
limited per client address) and one with auth on (limited per user). Budgets are too large to
trip, so what is measured is the cost of checking. wrk drives POST /predict, alternating the
variants for several rounds so drift of the machine hits all alike; the table gives per variant
the median and the best run and their ratios to the auth-disabled server of the same storage
(target >= 0.8), and the median against the memory baseline.

Part 2, login flood. /predict latency (wrk --latency, p50 and p99) of steady prediction traffic
(4 connections, each pausing 20 ms between requests: about a tenth of what the server can answer)
alone, then while 50 connections send wrong-password logins back to back: with the defaults,
with the per-address login limits lifted (only the bounded password hashing and the failed-login
delay stand between the flood and the predictions), and with the delay turned off as well
(target: p99 within 2x of the quiet p99). For comparison, a flood of GET /health: plain request
volume, which no login rule touches. Each situation has its own server, probed quiet and then
flooded in every round; the table gives medians over the rounds.

    python tests/benchmarks/auth_overhead.py [--rounds 7] [--seconds 3] [--connections 64]

Needs wrk (Debian: apt-get install wrk); redis-server for the Redis rows. Not part of pytest.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.live import live_server, redis_server  # noqa: E402

PREDICT = '{"data": [[1.0, 2.0, 3.0]]}'
BAD_LOGIN = '{"username": "admin", "password": "not the password"}'
HUGE = "100000000"
BENCH_ENV = {  # limits on, but never reached
    "INFERENCE_AUTH__RATE_LIMIT_PER_MINUTE": HUGE,
    "INFERENCE_RATE_LIMITS__ROLES": f"{{admin: {HUGE}/minute, user: {HUGE}/minute}}",
}


def lua(body: str) -> str:
    return (
        f"wrk.method = \"POST\"\nwrk.body = '{body}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )


def run_wrk(url, headers, *, seconds, connections, script, latency=False, allow_errors=False):
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script)]
    if latency:
        args.append("--latency")
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out and not allow_errors:
        raise SystemExit(f"wrk saw error responses:\n{out}")
    return out


def wrk(url: str, headers: dict[str, str], *, seconds: int, connections: int, script: Path):
    """Requests per second of one wrk run."""
    out = run_wrk(url, headers, seconds=seconds, connections=connections, script=script)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def rate_and_p99(url, headers, *, seconds, connections, script) -> tuple[float, float]:
    """Requests per second and p99 latency (ms) of one wrk run."""
    out = run_wrk(
        url, headers, seconds=seconds, connections=connections, script=script, latency=True
    )
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return rate, _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise AttributeError(text)
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def latency(url, headers, *, seconds, script) -> tuple[float, float]:
    out = run_wrk(
        url, headers, seconds=seconds, connections=4, script=script, latency=True, allow_errors=True
    )
    try:
        return tuple(_ms(re.search(rf"^\s+{p}%\s+(\S+)", out, re.M).group(1)) for p in (50, 99))
    except AttributeError:  # no request completed: wrk printed no percentiles
        raise SystemExit(f"no latency figures from wrk:\n{out}") from None


def throughput(stack: ExitStack, tmp: Path, opts) -> None:
    script = tmp / "predict.lua"
    script.write_text(lua(PREDICT))
    storages = {"memory": "memory://"}
    if shutil.which("redis-server"):
        storages["redis"] = stack.enter_context(redis_server())
    variants: dict[str, tuple[str, dict[str, str]]] = {}
    for label, uri in storages.items():
        env = {**BENCH_ENV, "INFERENCE_RATE_LIMITS__STORAGE_URI": uri}
        baseline = stack.enter_context(
            live_server(
                tmp / f"open-{label}", workers=2, env={**env, "INFERENCE_AUTH__ENABLED": "false"}
            )
        )
        variants[f"no-auth/{label}"] = (baseline.url("/predict"), {})
        server = stack.enter_context(live_server(tmp / label, workers=2, env=env))
        for kind, headers in server.admin_credentials().items():
            variants[f"{kind}/{label}"] = (server.url("/predict"), headers)

    for url, headers in variants.values():  # warm up every worker and cache
        wrk(url, headers, seconds=1, connections=opts.connections, script=script)
    results: dict[str, list[float]] = {name: [] for name in variants}
    print(
        f"POST /predict, gunicorn 2 workers, wrk {opts.connections} connections, "
        f"{opts.seconds}s per run, {opts.rounds} rounds, per-user rate limiting on "
        "(per client address without auth)"
    )
    for r in range(opts.rounds):
        row = []
        for name, (url, headers) in variants.items():
            rps = wrk(
                url, headers, seconds=opts.seconds, connections=opts.connections, script=script
            )
            results[name].append(rps)
            row.append(f"{name} {rps:.0f}")
        print(f"round {r + 1}: " + "  ".join(row))

    # Each ratio is to the auth-disabled server with the same limit storage (only auth differs);
    # the last column compares with the memory baseline, to show what Redis itself costs.
    median = {name: statistics.median(values) for name, values in results.items()}
    best = {name: max(values) for name, values in results.items()}
    print(
        f"\n{'variant':<16}{'median req/s':>14}{'ratio':>8}{'best req/s':>14}{'ratio':>8}"
        f"{'median vs no-auth/memory':>26}"
    )
    for name in results:
        base = f"no-auth/{name.split('/')[1]}"
        print(
            f"{name:<16}{median[name]:>14.1f}{median[name] / median[base]:>8.2f}"
            f"{best[name]:>14.1f}{best[name] / best[base]:>8.2f}"
            f"{median[name] / median['no-auth/memory']:>26.2f}"
        )


def login_flood(stack: ExitStack, tmp: Path, opts) -> None:
    predict, bad_login = tmp / "flood-predict.lua", tmp / "flood-login.lua"
    predict.write_text(lua(PREDICT) + "function delay() return 20 end\n")
    bad_login.write_text(lua(BAD_LOGIN))
    health = tmp / "flood-health.lua"
    health.write_text('wrk.method = "GET"\n')
    print(
        f"\nLogin flood: /predict latency, 4 connections pausing 20 ms between requests, "
        f"{opts.seconds * 2}s per run, bcrypt cost 12, gunicorn 2 workers, while 50 connections "
        "send requests back to back"
    )
    lifted = {
        "INFERENCE_RATE_LIMITS__LOGIN": f"{HUGE}/minute",
        "INFERENCE_RATE_LIMITS__LOGIN_FAILURES": f"{HUGE}/hour",
    }
    no_delay = {**lifted, "INFERENCE_AUTH__FAILED_LOGIN_DELAY_SECONDS": "0"}
    setups = [  # (label, server env, flood path, flood script)
        ("bad logins, default settings", {}, "/auth/login", bad_login),
        ("bad logins, login limits lifted", lifted, "/auth/login", bad_login),
        ("bad logins, limits lifted, no failed-login delay", no_delay, "/auth/login", bad_login),
        ("GET /health (no auth work), for comparison", {}, "/health", health),
    ]
    servers = []
    for i, (_, extra, _, _) in enumerate(setups):
        env = {**BENCH_ENV, "INFERENCE_AUTH__BCRYPT_ROUNDS": "12", **extra}
        server = stack.enter_context(live_server(tmp / f"flood-{i}", workers=2, env=env))
        headers = server.admin_credentials()["api-key"]
        run_wrk(server.url("/predict"), headers, seconds=1, connections=4, script=predict)
        servers.append((server, headers))

    def probe(server, headers) -> tuple[float, float]:
        return latency(server.url("/predict"), headers, seconds=opts.seconds * 2, script=predict)

    # Each situation has its own server, measured quiet and then flooded, so every ratio compares
    # one server with itself; rounds alternate the situations so drift hits all alike.
    quiet: list[list[tuple[float, float]]] = [[] for _ in setups]
    flooded: list[list[tuple[float, float, float]]] = [[] for _ in setups]
    for r in range(opts.rounds):
        for i, (_, _, path, script) in enumerate(setups):
            server, headers = servers[i]
            quiet[i].append(probe(server, headers))
            seconds = opts.seconds * 2 + 2
            flooder = subprocess.Popen(
                ["wrk", "-t1", "-c50", f"-d{seconds}s", "-s", str(script), server.url(path)],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                p50, p99 = probe(server, headers)
            finally:
                flood_out = flooder.communicate()[0]
            rate = float(re.search(r"Requests/sec:\s+([\d.]+)", flood_out).group(1))
            flooded[i].append((p50, p99, rate))
        pairs = zip(quiet, flooded, strict=True)
        print(
            f"round {r + 1}: p99 quiet -> flooded "
            + ", ".join(f"{q[-1][1]:.2f} -> {f[-1][1]:.2f}" for q, f in pairs)
        )

    def median(values, column):
        return statistics.median(v[column] for v in values)

    print(f"\nmedians of {opts.rounds} rounds")
    print(
        f"{'flood of':<52}{'quiet p50':>10}{'p99':>8}{'flooded p50':>13}{'p99':>8}"
        f"{'p99 ratio':>11}{'flood/s':>9}"
    )
    for (label, *_), calm, runs in zip(setups, quiet, flooded, strict=True):
        print(
            f"{label:<52}{median(calm, 0):>10.2f}{median(calm, 1):>8.2f}"
            f"{median(runs, 0):>13.2f}{median(runs, 1):>8.2f}"
            f"{median(runs, 1) / median(calm, 1):>11.2f}{median(runs, 2):>9.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--skip-flood", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--strategy", help="rate_limits.strategy (default: the server's)")
    opts = parser.parse_args()
    if opts.strategy:
        BENCH_ENV["INFERENCE_RATE_LIMITS__STRATEGY"] = opts.strategy
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp:
        if not opts.skip_throughput:
            with ExitStack() as stack:
                throughput(stack, Path(tmp), opts)
        if not opts.skip_flood:
            with ExitStack() as stack:
                login_flood(stack, Path(tmp), opts)


if __name__ == "__main__":
    main()
