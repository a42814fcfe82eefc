"""A long prediction runs off the event loop: the worker's other requests keep being answered.

A real one-worker server (gunicorn, gevent worker) holds a prediction in its model until the test
lets it go (`tests/held_model.py`); /health is probed meanwhile and must answer while the
prediction is still running. How fast it answers beside a million-row prediction is a figure for
`tests/benchmarks/health_during_prediction.py`, not an assertion here.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import requests

from auth.errors import ValidationError
from inference_server import json_steps
from inference_server.models.base import InputSpec, to_batch, to_batch_in_steps
from tests.conftest import assert_error
from tests.held_model import HELD, held_model_server


@pytest.mark.slow
def test_health_answers_while_a_prediction_runs(tmp_path):
    with held_model_server(tmp_path) as (server, release):
        headers = server.admin_credentials()["api-key"]
        answer: dict[str, requests.Response] = {}

        def predict() -> None:
            answer["held"] = requests.post(
                server.url("/predict"),
                json={"model": "held", "data": [[1, 2, 3]]},
                headers=headers,
                timeout=120,
            )

        predicting = threading.Thread(target=predict)
        predicting.start()
        server.wait_for_log(HELD, 1)  # the prediction is in the model, on the worker
        probes = []
        for _ in range(5):
            # A worker whose event loop ran the model would not answer before the release.
            probes.append(requests.get(server.url("/health"), timeout=30).status_code)
            assert predicting.is_alive() and not answer  # the prediction is still running
        release()
        predicting.join(timeout=120)
        assert probes == [200] * 5
        assert answer["held"].status_code == 200, answer["held"].text[:300]
        assert answer["held"].json()["model"] == "held"
        assert "Traceback" not in "".join(server.log)


def test_more_samples_than_the_limit_is_413(make_app, actor):
    client = make_app(models={"max_samples_per_request": 2}).test_client()
    admin = actor.__class__(client).admin_headers()
    error = assert_error(
        client.post("/predict", json={"data": [[1, 2, 3]] * 3}, headers=admin),
        413,
        "PAYLOAD_TOO_LARGE",
    )
    assert error["details"]["max_samples_per_request"] == 2
    response = client.post("/predict/batch", json={"inputs": [[[1, 2, 3]] * 3]}, headers=admin)
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert client.post("/predict", json={"data": [[1, 2, 3]] * 2}, headers=admin).status_code == 200


DOCUMENTS = [
    '{"data": [[1, 2.5, -3e2], [4, 5, 6]], "model": "demo"}',
    ' { "a" : [ ] , "b" : { } , "c" : [ { "d" : [1, {"e": null}] } , "x\\"]" , true ] } ',
    '[[1], [2], "three", {"four": 4}]',
    '"just a string"',
    '{"unicode": "caf\\u00e9 \\ud83d\\ude00", "nested": [[[[1]]]]}',
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_json_in_steps_reads_what_json_reads(text):
    assert json_steps.loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize(
    "text", ['{"a": [1, 2', '{"a" 1}', "[1 2]", '{"a": 1,}', "[1] [2]", "{1: 2}", "", "[01]"]
)
def test_json_in_steps_refuses_what_json_refuses(text):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        json_steps.loads(text.encode())


def test_json_in_steps_writes_what_json_writes():
    rows = np.arange(30_001 * 2, dtype=np.float64).reshape(30_001, 2) / 7
    value = {"model": "m", "results": [{"predictions": rows}, {"error": None}], "t": 0.5}
    plain = {**value, "results": [{"predictions": rows.tolist()}, {"error": None}]}
    assert json_steps.dumps(value) == json.dumps(plain, separators=(",", ":"))


def test_a_large_batch_is_built_in_steps_with_the_same_result():
    spec = InputSpec(shape=(3,), dtype="float32")
    rows = [[i, i + 1, i + 2] for i in range(25_000)]
    assert np.array_equal(to_batch_in_steps(rows, spec, step=1000), to_batch(rows, spec))
    ragged = [*rows, [1, 2]]
    with pytest.raises(ValidationError):
        to_batch_in_steps(ragged, spec, step=1000)
    one_big_sample = InputSpec(shape=(2_500, 3), dtype="float32")  # not a batch: kept whole
    assert to_batch_in_steps(rows[:2_500], one_big_sample, step=1000).shape == (1, 2_500, 3)
