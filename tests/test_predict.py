"""POST /predict with the built-in demo model: real numbers, clear validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DEMO_MODEL, assert_error


@pytest.fixture
def key_headers(actor):
    return {"X-API-Key": actor.create_key(actor.user_headers("mlops"))["key"]}


def _expected(rows):
    spec = json.loads(Path(DEMO_MODEL).read_text())
    return np.asarray(rows) @ np.asarray(spec["weights"]) + np.asarray(spec["bias"])


def test_spec_example_returns_real_predictions(actor, key_headers):
    response = actor.predict(key_headers, [[1.0, 2.0, 3.0]])
    assert response.status_code == 200
    body = response.get_json()
    assert body["model"] == "demo" and body["version"] == "1.0"
    np.testing.assert_allclose(body["predictions"], _expected([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(body["predictions"], [[0.5]])
    assert body["inference_time_ms"] >= 0


def test_several_rows_and_a_single_row(client, actor, key_headers):
    rows = [[0, 0, 0], [1, -1, 2.5], [10, 20, 30]]
    predictions = actor.predict(key_headers, rows).get_json()["predictions"]
    np.testing.assert_allclose(predictions, _expected(rows))
    single = client.post("/predict", json={"data": [1, 2, 3]}, headers=key_headers)
    assert single.get_json()["predictions"] == [[pytest.approx(0.5)]]


def test_named_model(client, key_headers):
    response = client.post(
        "/predict", json={"data": [[1, 2, 3]], "model": "demo"}, headers=key_headers
    )
    assert response.status_code == 200
    missing = client.post(
        "/predict", json={"data": [[1, 2, 3]], "model": "nope"}, headers=key_headers
    )
    assert_error(missing, 404, "NOT_FOUND")


@pytest.mark.parametrize(
    "data",
    [
        [],
        [[]],
        [[1, 2]],
        [[1, 2, 3, 4]],
        [[1, "2", 3]],
        [[1, None, 3]],
        [[True, 2, 3]],
        [[1, 2, 3], [1, 2]],
        "abc",
        5,
        {"a": 1},
        [[1, 2, [3]]],
    ],
)
def test_bad_data_is_a_validation_error(actor, key_headers, data):
    response = actor.client.post("/predict", json={"data": data}, headers=key_headers)
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert error["details"]["field"] == "data"
    assert "3" in error["details"]["expected"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused(client, key_headers, literal):
    body = '{"data": [[1, 2, ' + literal + "]]}"
    response = client.post(
        "/predict", data=body, content_type="application/json", headers=key_headers
    )
    assert_error(response, 400, "VALIDATION_ERROR")


def test_model_field_must_be_a_string(client, key_headers):
    response = client.post("/predict", json={"data": [[1, 2, 3]], "model": 3}, headers=key_headers)
    assert assert_error(response, 400, "VALIDATION_ERROR")["details"]["field"] == "model"


def test_broken_model_is_503_and_server_still_starts(make_app, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{ nope")
    app = make_app(
        models={
            "default": "broken",
            "registry": [{"name": "broken", "backend": "builtin", "path": str(broken)}],
        }
    )
    client = app.test_client()
    token = client.post("/auth/login", json={"username": "admin", "password": "admin123"})
    headers = {"Authorization": "Bearer " + token.get_json()["access_token"]}
    response = client.post("/predict", json={"data": [[1, 2, 3]]}, headers=headers)
    assert "not valid JSON" in assert_error(response, 503, "MODEL_UNAVAILABLE")["message"]


def test_health_is_public(client):
    assert client.get("/health").get_json() == {"status": "ok"}
