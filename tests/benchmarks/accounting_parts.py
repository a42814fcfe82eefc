"""What each part of usage accounting costs on POST /predict, one part at a time, in-process.

`peers.py --accounting` measures the whole (metrics, quotas and a limited key, on against off)
through real servers; this splits it. One app per variant, each served through Flask's test
client in this process (no server, no network: the request pipeline itself), an API key of the
default admin on each; the variants take turns for several rounds so that drift of the machine
hits all alike, and the table gives each one's best microseconds per request and what it adds
to `off`:

- off: metrics off, no quota tier, a key without limits;
- metrics, quotas (a tier for every user), key models (an allowlist), key rate (a rate of its
  own: one more window), key slots (`max_concurrent`): each alone;
- all on: every one of them.

With `--busy`, the user has already used the server all day through 5 keys and 3 models (a
usage record of 360 rows for today), as a busy service's owner has by the evening.

    python tests/benchmarks/accounting_parts.py [--rounds 5] [--requests 1500] [--busy]

Not part of pytest.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from inference_server.app import create_app  # noqa: E402
from inference_server.settings import load_settings  # noqa: E402
from tests.conftest import Actor, base_overrides, deep_merge  # noqa: E402

HUGE = 10**9
QUOTAS = {
    "tiers": {"bench": {"requests_per_day": HUGE, "samples_per_month": HUGE}},
    "default_tier": "bench",
}
OFF = {"metrics": {"enabled": False}}
KEY_LIMITS = {"models": ["demo", "churn-*"], "rate_limit": "1000000/minute", "max_concurrent": 64}
VARIANTS = {
    "off": (OFF, {}),
    "metrics": ({"metrics": {"enabled": True}}, {}),
    "quotas": ({**OFF, "quotas": QUOTAS}, {}),
    "key models": (OFF, {"models": KEY_LIMITS["models"]}),
    "key rate": (OFF, {"rate_limit": KEY_LIMITS["rate_limit"]}),
    "key slots": (OFF, {"max_concurrent": KEY_LIMITS["max_concurrent"]}),
    "all on": ({"metrics": {"enabled": True}, "quotas": QUOTAS}, KEY_LIMITS),
}
BODY = b'{"data": [[1.0, 2.0, 3.0]]}'


def client_of(root: Path, sections: dict, limits: dict, *, busy: bool = False):
    overrides = deep_merge(base_overrides(root), sections)
    # The default strategy, as a server runs it (the tests' base pins an exact one).
    overrides["rate_limits"] = {**overrides["rate_limits"], "strategy": "sliding-window-counter"}
    app = create_app(load_settings(overrides=overrides, environ={}))
    actor = Actor(app.test_client())
    key = actor.create_key(actor.admin_headers(), **limits)["key"]
    if busy:
        state = app.extensions["auth"]
        admin = state.users.find("name", "admin")["id"]
        today = time.time() // 86400 * 86400
        for hour, credential, model in itertools.product(range(24), range(5), range(3)):
            state.ledger.add(
                admin,
                credential=f"key_{credential}",
                model=f"model-{model}",
                status=200,
                samples=1,
                inference_ms=0.1,
                now=today + hour * 3600,
            )
        state.ledger.flush()
    return app.test_client(), {"X-API-Key": key, "Content-Type": "application/json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--busy", action="store_true", help="a day of usage already recorded")
    opts = parser.parse_args()
    logging.disable(logging.WARNING)  # the default admin's warning, once per app
    with tempfile.TemporaryDirectory() as tmp:
        clients = {
            name: client_of(Path(tmp) / name.replace(" ", "-"), sections, limits, busy=opts.busy)
            for name, (sections, limits) in VARIANTS.items()
        }
        best = dict.fromkeys(clients, float("inf"))
        for _ in range(opts.rounds):
            for name, (client, headers) in clients.items():
                for _ in range(100):  # warm
                    client.post("/predict", data=BODY, headers=headers)
                started = time.perf_counter()
                for _ in range(opts.requests):
                    answer = client.post("/predict", data=BODY, headers=headers)
                spent = (time.perf_counter() - started) / opts.requests * 1e6
                assert answer.status_code == 200, answer.get_data(as_text=True)
                best[name] = min(best[name], spent)
    base = best["off"]
    print(f"best of {opts.rounds} rounds x {opts.requests} requests, in-process:")
    for name, spent in best.items():
        print(
            f"  {name:<11} {spent:7.1f} us/request  {spent - base:+6.1f} us  {base / spent:5.2f}x"
        )


if __name__ == "__main__":
    main()
