"""POST /models/download against a real HTTP server on 127.0.0.1: all or nothing."""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from tests.conftest import assert_error
from tests.models import expected_affine, write_builtin, write_onnx


class _Handler(SimpleHTTPRequestHandler):
    """Serves files; under /stream/ it sends them without Content-Length, as chunked servers do."""

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):
        if not self.path.startswith("/stream/"):
            return super().do_GET()
        path = self.translate_path(self.path.replace("/stream/", "/", 1))
        with open(path, "rb") as fh:
            data = fh.read()
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1, and its base URL; stopped after the test."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def admin(actor):
    return actor.admin_headers()


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _download(client, headers, **body):
    return client.post("/models/download", json={"backend": "builtin", **body}, headers=headers)


def _models_dir_files(data_dir):
    folder = data_dir / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_verifies_registers_and_serves(client, admin, served, data_dir, make_app):
    folder, base = served
    artifact = write_builtin(folder / "m.json", version="7")
    response = _download(client, admin, name="fetched", url=f"{base}/m.json", sha256=_sha(artifact))
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["sha256"] == _sha(artifact)
    assert body["model"]["status"] == "ready" and body["model"]["source"] == "api"
    assert _models_dir_files(data_dir) == ["fetched.json"]
    rows = [[1, 2, 3]]
    answer = client.post("/fetched/predict", json={"data": rows}, headers=admin).get_json()
    assert answer["version"] == "7"
    np.testing.assert_allclose(answer["predictions"], expected_affine(rows))
    # Registered durably: a restarted server still serves it.
    restarted = make_app().test_client()
    again = restarted.post("/fetched/predict", json={"data": rows}, headers=admin)
    assert again.status_code == 200


def test_download_without_checksum(client, admin, served):
    folder, base = served
    write_builtin(folder / "m.json")
    assert _download(client, admin, name="nochk", url=f"{base}/m.json").status_code == 201


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="no onnxruntime")
def test_download_onnx(client, admin, served):
    folder, base = served
    artifact = write_onnx(folder / "m.onnx")
    response = client.post(
        "/models/download",
        headers=admin,
        json={"name": "net", "backend": "onnx", "url": f"{base}/m.onnx", "sha256": _sha(artifact)},
    )
    assert response.status_code == 201
    answer = client.post("/net/predict", json={"data": [[1, 2, 3]]}, headers=admin).get_json()
    np.testing.assert_allclose(answer["predictions"], expected_affine([[1, 2, 3]]), rtol=1e-5)


def test_checksum_mismatch_is_400_and_leaves_no_file(client, admin, served, data_dir):
    folder, base = served
    write_builtin(folder / "m.json")
    response = _download(client, admin, name="bad", url=f"{base}/m.json", sha256="0" * 64)
    assert assert_error(response, 400, "VALIDATION_ERROR")["details"]["field"] == "sha256"
    assert _models_dir_files(data_dir) == []
    assert_error(client.get("/models/bad", headers=admin), 404, "NOT_FOUND")


@pytest.mark.parametrize("path", ["/big.json", "/stream/big.json"], ids=["length", "chunked"])
def test_oversize_is_413_and_leaves_no_file(make_app, actor, served, data_dir, path):
    folder, base = served
    (folder / "big.json").write_bytes(b" " * 200_000)
    client = make_app(models={"download_max_mb": 0.05}).test_client()
    admin = actor.__class__(client).admin_headers()
    response = _download(client, admin, name="big", url=f"{base}{path}")
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert _models_dir_files(data_dir) == []


def test_file_that_is_not_a_model_is_refused(client, admin, served, data_dir):
    folder, base = served
    (folder / "junk.json").write_text('{"kind": "nonsense"}')
    response = _download(client, admin, name="junk", url=f"{base}/junk.json")
    assert "not a usable model" in assert_error(response, 400, "VALIDATION_ERROR")["message"]
    assert _models_dir_files(data_dir) == []


def test_file_url(client, admin, tmp_path):
    artifact = write_builtin(tmp_path / "local.json")
    response = _download(client, admin, name="local", url=artifact.as_uri())
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "url": "ftp://127.0.0.1/m.json"}, "url"),
        ({"name": "x"}, "url"),
        ({"name": "../escape", "url": "file:///dev/null"}, "spec"),
        ({"name": "x", "url": "file:///dev/null", "backend": "tensorflow"}, "spec"),
        ({"name": "x", "url": "file:///dev/null", "sha256": "abc"}, "sha256"),
        ({"url": "file:///dev/null"}, "spec"),
    ],
)
def test_download_request_is_validated(client, admin, data_dir, body, field):
    response = client.post("/models/download", json={"backend": "builtin", **body}, headers=admin)
    assert assert_error(response, 400, "VALIDATION_ERROR")["details"]["field"] == field
    assert _models_dir_files(data_dir) == []


def test_http_error_is_400(client, admin, served):
    _, base = served
    response = _download(client, admin, name="missing", url=f"{base}/nope.json")
    assert "HTTP 404" in assert_error(response, 400, "VALIDATION_ERROR")["message"]


def test_config_model_name_is_a_conflict(client, admin, served):
    folder, base = served
    write_builtin(folder / "m.json")
    assert_error(_download(client, admin, name="demo", url=f"{base}/m.json"), 409, "CONFLICT")


def test_download_is_audited_with_checksum(client, admin, served, data_dir):
    import json

    folder, base = served
    artifact = write_builtin(folder / "m.json")
    _download(client, admin, name="audited", url=f"{base}/m.json")
    events = [json.loads(line) for line in (data_dir / "audit.log").read_text().splitlines()]
    (event,) = [e for e in events if e["event"] == "model.downloaded"]
    assert event["model"] == "audited" and event["sha256"] == _sha(artifact)
