"""The inference routes with real models: /models, /<model>/predict, batches, management, scopes."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading

import numpy as np
import pytest

from tests.conftest import DEMO_MODEL, assert_error, bearer
from tests.models import expected_affine, write_builtin, write_onnx, write_torchscript

X = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
HAVE = {
    name: importlib.util.find_spec(mod) is not None
    for name, mod in (("onnx", "onnxruntime"), ("torchscript", "torch"))
}


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    write_builtin(folder / "affine.json")
    (folder / "broken.json").write_text("{ not json")
    if HAVE["onnx"]:
        write_onnx(folder / "affine.onnx")
    if HAVE["torchscript"]:
        write_torchscript(folder / "affine.pt")
    return folder


def registry_config(model_dir, **extra):
    entries = [
        {"name": "demo", "backend": "builtin", "path": DEMO_MODEL},
        {"name": "affine", "backend": "builtin", "path": str(model_dir / "affine.json")},
        {"name": "broken", "backend": "builtin", "path": str(model_dir / "broken.json")},
        {
            "name": "lazy",
            "backend": "builtin",
            "path": str(model_dir / "affine.json"),
            "lazy": True,
        },
    ]
    if HAVE["onnx"]:
        entries.append(
            {"name": "affine-onnx", "backend": "onnx", "path": str(model_dir / "affine.onnx")}
        )
    if HAVE["torchscript"]:
        entries.append(
            {
                "name": "affine-torch",
                "backend": "torchscript",
                "path": str(model_dir / "affine.pt"),
                "input": {"shape": [3]},
            }
        )
    return {"default": "demo", "registry": entries, **extra}


@pytest.fixture
def app(make_app, model_dir):
    return make_app(models=registry_config(model_dir))


@pytest.fixture
def admin(actor):
    return actor.admin_headers()


@pytest.fixture
def user(actor):
    return actor.user_headers("modeluser")


def _predict(client, path, headers, data=X, **body):
    return client.post(path, json={"data": data, **body}, headers=headers)


# -- listing ------------------------------------------------------------------------------


def test_models_are_listed_with_status(client, user):
    body = client.get("/models", headers=user).get_json()
    assert body["default"] == "demo"
    by_name = {m["name"]: m for m in body["models"]}
    assert by_name["demo"]["status"] == "ready" and by_name["demo"]["default"] is True
    assert by_name["affine"]["input"] == {
        "shape": [3],
        "dtype": "float64",
        "allow_non_finite": False,
    }
    assert by_name["broken"]["status"] == "error" and "not valid JSON" in by_name["broken"]["error"]
    assert by_name["lazy"]["status"] == "lazy"
    one = client.get("/models/affine", headers=user).get_json()
    assert one["name"] == "affine" and one["backend"] == "builtin"
    assert_error(client.get("/models/nope", headers=user), 404, "NOT_FOUND")


# -- predicting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "affine",
        pytest.param(
            "affine-onnx", marks=pytest.mark.skipif(not HAVE["onnx"], reason="no onnxruntime")
        ),
        pytest.param(
            "affine-torch", marks=pytest.mark.skipif(not HAVE["torchscript"], reason="no torch")
        ),
    ],
)
def test_each_backend_predicts_through_http(client, user, name):
    response = _predict(client, f"/{name}/predict", user)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["model"] == name and body["version"]
    np.testing.assert_allclose(body["predictions"], expected_affine(X), rtol=1e-5, atol=1e-5)
    assert body["inference_time_ms"] >= 0


def test_model_field_and_url_must_agree(client, user):
    assert _predict(client, "/predict", user, model="affine").get_json()["model"] == "affine"
    assert _predict(client, "/affine/predict", user, model="affine").status_code == 200
    assert_error(_predict(client, "/affine/predict", user, model="demo"), 400, "VALIDATION_ERROR")
    assert_error(_predict(client, "/nope/predict", user), 404, "NOT_FOUND")


def test_broken_model_is_503_others_fine(client, user):
    assert (
        "not valid JSON"
        in assert_error(_predict(client, "/broken/predict", user), 503, "MODEL_UNAVAILABLE")[
            "message"
        ]
    )
    assert _predict(client, "/affine/predict", user).status_code == 200


def test_lazy_model_loads_on_first_use(client, user):
    assert _predict(client, "/lazy/predict", user).status_code == 200
    assert client.get("/models/lazy", headers=user).get_json()["status"] == "ready"


def test_validation_error_says_what_was_expected(client, user):
    error = assert_error(
        _predict(client, "/affine/predict", user, data=[[1, 2]]), 400, "VALIDATION_ERROR"
    )
    assert "[3]" in error["details"]["expected"] and error["details"]["got"] == [2]


def test_missing_backend_package_is_reported_not_fatal(make_app, model_dir, monkeypatch, actor):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    config = registry_config(model_dir)
    config["registry"].append(
        {"name": "needs-ort", "backend": "onnx", "path": str(model_dir / "whatever.onnx")}
    )
    client = make_app(models=config).test_client()
    headers = bearer(
        client.post("/auth/login", json={"username": "admin", "password": "admin123"}).get_json()[
            "access_token"
        ]
    )
    view = client.get("/models/needs-ort", headers=headers).get_json()
    assert view["status"] == "error" and "pip install -e '.[onnx]'" in view["error"]
    assert_error(_predict(client, "/needs-ort/predict", headers), 503, "MODEL_UNAVAILABLE")


# -- batches ------------------------------------------------------------------------------


def test_batch_runs_every_valid_input_and_reports_bad_ones(client, user):
    inputs = [[[1, 2, 3]], [[1, 2]], [[0.5, -1, 2], [4, 5, 6]], "nope"]
    response = client.post(
        "/predict/batch", json={"inputs": inputs, "model": "affine"}, headers=user
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["model"] == "affine" and body["succeeded"] == 2 and body["failed"] == 2
    first, bad, third, worse = body["results"]
    np.testing.assert_allclose(first["predictions"], expected_affine([[1, 2, 3]]))
    np.testing.assert_allclose(third["predictions"], expected_affine([[0.5, -1, 2], [4, 5, 6]]))
    for item, field in ((bad, "inputs[1]"), (worse, "inputs[3]")):
        assert item["error"]["code"] == "VALIDATION_ERROR"
        assert item["error"]["details"]["field"] == field


def test_batch_equals_single_calls(client, user):
    inputs = [[[float(i), float(i) / 2, -float(i)]] for i in range(32)]
    batch = client.post("/predict/batch", json={"inputs": inputs, "model": "affine"}, headers=user)
    singles = [
        _predict(client, "/affine/predict", user, data=d).get_json()["predictions"] for d in inputs
    ]
    assert [r["predictions"] for r in batch.get_json()["results"]] == singles


@pytest.mark.parametrize("inputs", [[], "x", None, {"a": 1}])
def test_batch_needs_a_list_of_inputs(client, user, inputs):
    response = client.post("/predict/batch", json={"inputs": inputs}, headers=user)
    assert assert_error(response, 400, "VALIDATION_ERROR")["details"]["field"] == "inputs"


def test_batch_size_limit(make_app, model_dir, actor):
    app = make_app(models=registry_config(model_dir, max_batch_size=2))
    client = app.test_client()
    headers = bearer(
        client.post("/auth/login", json={"username": "admin", "password": "admin123"}).get_json()[
            "access_token"
        ]
    )
    ok = client.post("/predict/batch", json={"inputs": [[[1, 2, 3]]] * 2}, headers=headers)
    assert ok.status_code == 200
    over = client.post("/predict/batch", json={"inputs": [[[1, 2, 3]]] * 3}, headers=headers)
    assert assert_error(over, 400, "VALIDATION_ERROR")["details"]["max_batch_size"] == 2


# -- scopes -------------------------------------------------------------------------------


def test_key_without_predict_scope_cannot_predict_anywhere(client, actor, user):
    key = {"X-API-Key": actor.create_key(user, scopes=["models:read"])["key"]}
    for path in ("/predict", "/affine/predict"):
        assert_error(_predict(client, path, key), 403, "INSUFFICIENT_PERMISSIONS")
    batch = client.post("/predict/batch", json={"inputs": [X]}, headers=key)
    assert_error(batch, 403, "INSUFFICIENT_PERMISSIONS")
    assert client.get("/models", headers=key).status_code == 200


def test_key_without_models_read_cannot_list(client, actor, user):
    key = {"X-API-Key": actor.create_key(user, scopes=["predict"])["key"]}
    assert_error(client.get("/models", headers=key), 403, "INSUFFICIENT_PERMISSIONS")
    assert_error(client.get("/models/demo", headers=key), 403, "INSUFFICIENT_PERMISSIONS")


def test_user_cannot_manage_or_download(client, actor, user):
    key = {"X-API-Key": actor.create_key(user)["key"]}
    for headers in (user, key):
        response = client.post(
            "/models/manage", json={"action": "unload", "model": "affine"}, headers=headers
        )
        assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
        response = client.post(
            "/models/download",
            json={"name": "x", "backend": "builtin", "url": "file:///etc/hostname"},
            headers=headers,
        )
        assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")


def test_admin_key_needs_the_manage_scope(client, actor, admin):
    key = {"X-API-Key": actor.create_key(admin, scopes=["predict"])["key"]}
    response = client.post(
        "/models/manage", json={"action": "reload", "model": "affine"}, headers=key
    )
    assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")


# -- management ---------------------------------------------------------------------------


def _manage(client, headers, action, model):
    return client.post("/models/manage", json={"action": action, "model": model}, headers=headers)


def test_unload_then_load(client, admin, user):
    assert _manage(client, admin, "unload", "affine").get_json()["model"]["status"] == "unloaded"
    assert (
        "unloaded"
        in assert_error(_predict(client, "/affine/predict", user), 503, "MODEL_UNAVAILABLE")[
            "message"
        ]
    )
    assert _manage(client, admin, "load", "affine").get_json()["model"]["status"] == "ready"
    assert _predict(client, "/affine/predict", user).status_code == 200


def _replace_atomically(path, writer, **kw):
    tmp = path.with_name(path.name + ".new")
    writer(tmp, **kw)
    os.replace(tmp, path)


def test_reload_picks_up_a_new_file(client, admin, user, model_dir):
    _replace_atomically(model_dir / "affine.json", write_builtin, scale=2.0, version="2.0")
    before = _predict(client, "/affine/predict", user).get_json()
    assert before["version"] == "1.0"
    assert _manage(client, admin, "reload", "affine").status_code == 200
    after = _predict(client, "/affine/predict", user).get_json()
    assert after["version"] == "2.0"
    np.testing.assert_allclose(after["predictions"], expected_affine(X) * 2)


def test_remove_and_set_default(client, admin, user):
    assert_error(_manage(client, admin, "remove", "demo"), 409, "CONFLICT")
    assert_error(_manage(client, admin, "unload", "demo"), 409, "CONFLICT")
    assert _manage(client, admin, "set_default", "affine").status_code == 200
    assert _predict(client, "/predict", user).get_json()["model"] == "affine"
    assert _manage(client, admin, "remove", "demo").get_json()["model"]["status"] == "removed"
    assert "demo" not in {
        m["name"] for m in client.get("/models", headers=user).get_json()["models"]
    }
    assert_error(_predict(client, "/demo/predict", user), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("body", "field"),
    [({"action": "explode", "model": "demo"}, "action"), ({"action": "load"}, "model")],
)
def test_manage_validates(client, admin, body, field):
    response = client.post("/models/manage", json=body, headers=admin)
    assert assert_error(response, 400, "VALIDATION_ERROR")["details"]["field"] == field


def test_manage_unknown_model(client, admin):
    assert_error(_manage(client, admin, "load", "ghost"), 404, "NOT_FOUND")


def test_failed_load_is_reported(client, admin):
    assert_error(_manage(client, admin, "reload", "broken"), 503, "MODEL_UNAVAILABLE")


def test_changes_survive_a_restart_and_reach_other_workers(make_app, model_dir, client, admin):
    other_worker = make_app(models=registry_config(model_dir)).test_client()
    _manage(client, admin, "set_default", "affine")
    _manage(client, admin, "remove", "demo")
    _manage(client, admin, "unload", "lazy")
    token = other_worker.post("/auth/login", json={"username": "admin", "password": "admin123"})
    headers = bearer(token.get_json()["access_token"])
    for worker in (other_worker, make_app(models=registry_config(model_dir)).test_client()):
        body = worker.get("/models", headers=headers).get_json()
        statuses = {m["name"]: m["status"] for m in body["models"]}
        assert body["default"] == "affine" and "demo" not in statuses
        assert statuses["lazy"] == "unloaded"


def test_management_is_audited(client, admin, data_dir):
    _manage(client, admin, "reload", "affine")
    events = [json.loads(line) for line in (data_dir / "audit.log").read_text().splitlines()]
    managed = [e for e in events if e["event"] == "model.managed"]
    assert managed and managed[-1]["action"] == "reload" and managed[-1]["model"] == "affine"
    assert managed[-1]["actor"].startswith("usr_")


def test_corrupt_state_file_stops_start_up(make_app, model_dir, data_dir):
    from auth import StoreCorrupt

    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "models_state.json").write_text("[")
    with pytest.raises(StoreCorrupt, match="models_state.json"):
        make_app(models=registry_config(model_dir))


# -- under load ---------------------------------------------------------------------------


def test_predictions_during_reloads_never_fail_or_mix(app, model_dir, actor):
    """Threads predict while an admin swaps the model file and reloads: every answer is a 200
    from one complete model, the old one or the new one, never a 500 or a blend."""
    admin = actor.admin_headers()
    key = {"X-API-Key": actor.create_key(actor.user_headers("loadtester"))["key"]}
    valid = [expected_affine(X) * s for s in (1.0, 3.0)]
    failures: list[str] = []
    stop = threading.Event()

    def predict_loop():
        client = app.test_client()
        while not stop.is_set():
            response = _predict(client, "/affine/predict", key)
            if response.status_code != 200:
                failures.append(response.get_data(as_text=True))
                continue
            got = np.asarray(response.get_json()["predictions"])
            if not any(np.allclose(got, v) for v in valid):
                failures.append(f"blend: {got}")

    threads = [threading.Thread(target=predict_loop) for _ in range(6)]
    for t in threads:
        t.start()
    admin_client = app.test_client()
    try:
        for i in range(30):
            _replace_atomically(model_dir / "affine.json", write_builtin, scale=(1.0, 3.0)[i % 2])
            assert _manage(admin_client, admin, "reload", "affine").status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
