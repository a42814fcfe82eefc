"""A job against the synchronous route, and /predict for others while a job runs.

One server (`python run.py`, 2 gevent workers, its own job consumer) serves both sides:

1. throughput: the same samples of the demo model (`--inputs` inputs of `--rows` rows each)
   through one job (submitted, then polled until completed; the answers fetched) and through
   `/predict/batch` in requests of its largest size (`models.max_batch_size` inputs), one after
   the other, in alternating rounds; the job's samples per second as a ratio to the
   synchronous ones (target >= 0.8x);
2. interference: another user's `POST /predict` p99 under wrk, quiet and while a large job
   runs, as a ratio (target <= 1.5x).

    python tests/benchmarks/jobs.py [--rounds 3] [--inputs 1000] [--rows 100] [--seconds 5]

Needs wrk (Debian: apt-get install wrk). Not part of pytest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.auth_overhead import BENCH_ENV, lua, rate_and_p99  # noqa: E402
from tests.live import live_server  # noqa: E402

BATCH = 64  # models.max_batch_size, the default


def inputs_of(count: int, rows: int) -> list[list[list[float]]]:
    return [[[float(i % 7), 2.0, 3.0] for _ in range(rows)] for i in range(count)]


def synchronous(base: str, headers: dict[str, str], bodies: list[bytes]) -> float:
    """Seconds to answer `bodies` (/predict/batch requests, encoded beforehand) in turn."""
    started = time.perf_counter()
    sent = {**headers, "Content-Type": "application/json"}
    with requests.Session() as session:
        for body in bodies:
            answer = session.post(f"{base}/predict/batch", data=body, headers=sent, timeout=600)
            answer.raise_for_status()
    return time.perf_counter() - started


def as_job(base: str, headers: dict[str, str], body: bytes) -> float:
    """Seconds from submitting `body` (a job's JSON, encoded beforehand: a client on this
    machine would take the server's CPU) to holding its answers."""
    started = time.perf_counter()
    with requests.Session() as session:
        sent = {**headers, "Content-Type": "application/json"}
        job = session.post(f"{base}/jobs", data=body, headers=sent, timeout=600)
        job.raise_for_status()
        job_id = job.json()["id"]
        while True:
            state = session.get(f"{base}/jobs/{job_id}", headers=headers, timeout=60).json()
            if state["status"] == "completed":
                break
            if state["status"] in ("failed", "cancelled"):
                raise SystemExit(f"the job ended {state['status']}: {state['error']}")
            time.sleep(0.02)  # a client polling, as the client library will
        result = session.get(f"{base}/jobs/{job_id}/result", headers=headers, timeout=600)
        result.raise_for_status()
        session.delete(f"{base}/jobs/{job_id}", headers=headers, timeout=60)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inputs", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=5)
    opts = parser.parse_args()
    inputs = inputs_of(opts.inputs, opts.rows)
    samples = opts.inputs * opts.rows
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        env = {**BENCH_ENV, "INFERENCE_JOBS__MAX_QUEUED_PER_USER": "100"}
        server = stack.enter_context(live_server(tmp / "data", workers=2, env=env))
        credentials = server.admin_credentials()
        owner, other = credentials["api-key"], credentials["jwt"]

        batches = [
            json.dumps({"inputs": inputs[start : start + BATCH]}).encode()
            for start in range(0, len(inputs), BATCH)
        ]
        whole = json.dumps({"inputs": inputs}).encode()
        sync_s, job_s = [], []
        for r in range(opts.rounds):
            sync_s.append(synchronous(server.base, owner, batches))
            job_s.append(as_job(server.base, owner, whole))
            print(
                f"round {r + 1}: /predict/batch {samples / sync_s[-1]:,.0f} samples/s, "
                f"job {samples / job_s[-1]:,.0f} samples/s"
            )
        sync_rate = samples / statistics.median(sync_s)
        job_rate = samples / statistics.median(job_s)

        script = tmp / "predict.lua"
        script.write_text(lua('{"data": [[1.0, 2.0, 3.0]]}'))

        def p99() -> float:
            return rate_and_p99(
                server.url("/predict"), other, seconds=opts.seconds, connections=4, script=script
            )[1]

        quiet, busy = [], []
        for _ in range(opts.rounds):
            quiet.append(p99())
            big = json.dumps({"inputs": inputs_of(opts.inputs * 4, opts.rows)}).encode()
            runner = threading.Thread(target=as_job, args=(server.base, owner, big))
            runner.start()
            busy.append(p99())
            runner.join()

    print(f"\n{samples:,} samples ({opts.inputs} inputs x {opts.rows} rows), medians:")
    print(f"  /predict/batch, {BATCH} inputs a request  {sync_rate:>12,.0f} samples/s")
    print(f"  one job                               {job_rate:>12,.0f} samples/s")
    print(f"  job / synchronous                     {job_rate / sync_rate:>12.2f} x")
    print(f"  /predict p99 quiet                    {statistics.median(quiet):>12.2f} ms")
    print(f"  /predict p99 while a job runs         {statistics.median(busy):>12.2f} ms")
    ratio = statistics.median(busy) / statistics.median(quiet)
    print(f"  busy / quiet                          {ratio:>12.2f} x")


if __name__ == "__main__":
    main()
