"""How long /health takes to answer while one worker runs a million-row prediction.

One real server (gunicorn, one gevent worker) gets a prediction of `--rows` samples; /health is
probed back to back while it runs, and each probe that started and ended during the prediction
counts. Prints, per round, the prediction's time, the number of probes and their median and
slowest answer. The issue that moved the work off the event loop set the bar: within 200 ms.
(tests/test_inference_threads.py checks that the probes are answered at all, without timing.)

    python tests/benchmarks/health_during_prediction.py [--rows 1000000] [--rounds 3]

Not part of pytest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.live import live_server  # noqa: E402


def one_round(server, headers: dict[str, str], body: bytes) -> tuple[float, list[float]]:
    """The prediction's duration and the answer times of the probes made during it."""
    answer: dict[str, requests.Response] = {}

    def predict() -> None:
        answer["big"] = requests.post(
            server.url("/predict"), data=body, headers=headers, timeout=300
        )

    started = time.perf_counter()
    big = threading.Thread(target=predict)
    big.start()
    waits = []
    while big.is_alive():
        asked = time.perf_counter()
        health = requests.get(server.url("/health"), timeout=60)
        if big.is_alive():  # only probes that overlapped the prediction count
            waits.append(time.perf_counter() - asked)
        assert health.status_code == 200, health.text
    big.join()
    took = time.perf_counter() - started
    assert answer["big"].status_code == 200, answer["big"].text[:300]
    return took, waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    env = {
        "INFERENCE_SERVER__MAX_REQUEST_MB": "64",
        "INFERENCE_MODELS__MAX_SAMPLES_PER_REQUEST": str(opts.rows),
    }
    body = ('{"data": [' + ",".join(["[1,2,3]"] * opts.rows) + "]}").encode()
    with tempfile.TemporaryDirectory() as tmp, live_server(Path(tmp), workers=1, env=env) as server:
        headers = {**server.admin_credentials()["api-key"], "Content-Type": "application/json"}
        print(f"/health during a {opts.rows:,}-row prediction, one worker")
        print(f"{'round':<7}{'prediction s':>13}{'probes':>8}{'median ms':>11}{'slowest ms':>12}")
        for r in range(opts.rounds):
            took, waits = one_round(server, headers, body)
            median = statistics.median(waits) * 1000 if waits else float("nan")
            slowest = max(waits) * 1000 if waits else float("nan")
            print(f"{r + 1:<7}{took:>13.2f}{len(waits):>8}{median:>11.1f}{slowest:>12.1f}")


if __name__ == "__main__":
    main()
