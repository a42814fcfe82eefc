"""Per-backend throughput of POST /predict and POST /predict/batch, side by side in one run.

Builds the same small affine model (3 inputs, 2 outputs) for every backend installed (builtin
always; onnx and torchscript when their packages are), serves them from one real server under
gunicorn with 2 workers and authentication off (this measures the models, not auth), and drives
it with wrk: one sample per /predict call against a batch of 32 samples per /predict/batch call.
Rounds alternate the variants; the table shows medians.

    python tests/benchmarks/model_throughput.py [--rounds 3] [--seconds 3] [--connections 32]

Needs wrk (Debian: apt-get install wrk). Not part of the pytest run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.auth_overhead import wrk  # noqa: E402
from tests.live import live_server  # noqa: E402
from tests.models import write_builtin, write_onnx, write_torchscript  # noqa: E402

BATCH = 32
SAMPLE = [1.0, 2.0, 3.0]


def lua(body: dict) -> str:
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = '{json.dumps(body)}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )


def build_models(folder: Path) -> list[dict]:
    models = [
        {"name": "builtin", "backend": "builtin", "path": str(write_builtin(folder / "m.json"))}
    ]
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        models.append(
            {
                "name": "onnx",
                "backend": "onnx",
                "path": str(write_onnx(folder / "m.onnx")),
                "options": {"threads": 1},
            }
        )
    if importlib.util.find_spec("torch"):
        models.append(
            {
                "name": "torchscript",
                "backend": "torchscript",
                "path": str(write_torchscript(folder / "m.pt")),
                "input": {"shape": [3]},
                "options": {"threads": 1},
            }
        )
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    opts = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = build_models(folder)
        config = folder / "bench.yaml"
        config.write_text(
            yaml.safe_dump(
                {"models": {"default": "builtin", "registry": models, "max_batch_size": BATCH}}
            )
        )
        env = {
            "INFERENCE_AUTH__ENABLED": "false",
            "INFERENCE_AUTH__RATE_LIMIT_PER_MINUTE": "100000000",
        }
        with live_server(folder / "data", workers=2, env=env, args=("--config", str(config))) as s:
            variants: dict[tuple[str, str], tuple[str, Path]] = {}
            for m in models:
                name = m["name"]
                one, many = folder / f"{name}-single.lua", folder / f"{name}-batch.lua"
                one.write_text(lua({"data": [SAMPLE]}))
                many.write_text(lua({"model": name, "inputs": [[SAMPLE]] * BATCH}))
                variants[(name, "single")] = (s.url(f"/{name}/predict"), one)
                variants[(name, "batch")] = (s.url("/predict/batch"), many)
            runs: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
            for url, script in variants.values():  # warm-up
                wrk(url, {}, seconds=1, connections=opts.connections, script=script)
            for r in range(opts.rounds):
                for key, (url, script) in variants.items():
                    runs[key].append(
                        wrk(
                            url,
                            {},
                            seconds=opts.seconds,
                            connections=opts.connections,
                            script=script,
                        )
                    )
                print(f"round {r + 1} done", file=sys.stderr)

    print(
        f"gunicorn 2 workers, auth off, wrk {opts.connections} connections, "
        f"{opts.seconds}s x {opts.rounds} rounds (medians)"
    )
    header = (
        f"{'backend':<12}{'/predict req/s':>16}{'batch req/s':>14}"
        f"{'samples/s single':>18}{'samples/s batch':>17}{'batch gain':>12}"
    )
    print(header)
    for m in models:
        one = statistics.median(runs[(m["name"], "single")])
        many = statistics.median(runs[(m["name"], "batch")])
        print(
            f"{m['name']:<12}{one:>16.1f}{many:>14.1f}{one:>18.1f}{many * BATCH:>17.1f}"
            f"{many * BATCH / one:>11.1f}x"
        )


if __name__ == "__main__":
    main()
