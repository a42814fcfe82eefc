"""POST /models/download against a real HTTP server on 127.0.0.1: all or nothing."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from tests.conftest import DEMO_MODEL, assert_error
from tests.models import expected_affine, write_builtin, write_onnx


class _Handler(SimpleHTTPRequestHandler):
    """Serves files; under /stream/ it sends them without Content-Length, as chunked servers do;
    /redirect/<url> redirects there. Every path asked for is noted in `asked`."""

    asked: list[str]

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):
        self.asked.append(self.path)
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/redirect/") :])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
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


ASKED: dict[str, list[str]] = {}  # base URL of a test server -> the paths it was asked for


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1, and its base URL; stopped after the test."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = type("Handler", (_Handler,), {"asked": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    ASKED[base] = handler.asked
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, base
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def roots(tmp_path):
    folder = tmp_path / "artifacts"
    folder.mkdir()
    return folder


@pytest.fixture
def app(make_app, roots):
    """Downloads may reach the test's HTTP server on 127.0.0.1 and files below `roots`."""
    return make_app(models={"download_allow_hosts": ["127.0.0.1"], "download_roots": [str(roots)]})


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
    client = make_app(
        models={"download_max_mb": 0.05, "download_allow_hosts": ["127.0.0.1"]}
    ).test_client()
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


def test_file_url(client, admin, roots):
    artifact = write_builtin(roots / "local.json")
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


# -- what a download must not reach -----------------------------------------------------------


@pytest.fixture
def sentinel(tmp_path):
    """A valid model outside every download root, with an atime older than its mtime, so that
    any read of it (relatime included) moves the atime."""
    (tmp_path / "outside").mkdir()
    path = write_builtin(tmp_path / "outside" / "secret.json")
    mtime = path.stat().st_mtime
    os.utime(path, (mtime - 1000, mtime))
    return path


def _untouched(path) -> bool:
    info = path.stat()
    return info.st_atime < info.st_mtime


@pytest.mark.parametrize(
    "url",
    [
        "{uri}",
        "FILE://{path}",
        "file:{path}",
        "file://localhost{path}",
        "file://{roots}/../outside/secret.json",
        "file://{roots}/link.json",  # a symlink out of the root
        "file://{roots}/missing.json",
        "file:///etc/passwd",
        "file://{roots}",  # a directory
    ],
)
def test_file_urls_outside_the_roots_are_refused_unread(client, admin, roots, sentinel, url):
    (roots / "link.json").symlink_to(sentinel)
    url = url.format(uri=sentinel.as_uri(), path=sentinel, roots=roots)
    error = assert_error(_download(client, admin, name="x", url=url), 400, "VALIDATION_ERROR")
    assert error["message"].startswith("'url' must name a readable regular file below")
    assert str(roots.parent) not in error["message"]  # no server paths, no existence hints
    assert _untouched(sentinel)


def test_file_urls_are_off_without_roots(make_app, actor, sentinel):
    client = make_app().test_client()
    admin = actor.__class__(client).admin_headers()
    error = assert_error(
        _download(client, admin, name="x", url=sentinel.as_uri()), 400, "VALIDATION_ERROR"
    )
    assert "file URLs are turned off" in error["message"]
    assert _untouched(sentinel)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "127.1", "2130706433", "0x7f000001", "[::1]", "0.0.0.0"]
)
def test_loopback_in_any_spelling_is_refused_unasked(make_app, actor, served, host):
    folder, base = served
    write_builtin(folder / "m.json")
    client = make_app().test_client()  # no download_allow_hosts
    admin = actor.__class__(client).admin_headers()
    port = base.rsplit(":", 1)[1]
    response = _download(client, admin, name="x", url=f"http://{host}:{port}/m.json")
    assert "loopback, private" in assert_error(response, 400, "VALIDATION_ERROR")["message"]
    assert ASKED[base] == []


@pytest.mark.parametrize("address", ["10.0.0.1", "169.254.169.254", "192.168.1.1", "224.0.0.1"])
def test_private_link_local_and_multicast_hosts_are_refused(client, admin, address):
    response = _download(client, admin, name="x", url=f"http://{address}/m.json")
    assert "loopback, private" in assert_error(response, 400, "VALIDATION_ERROR")["message"]


def test_a_redirect_to_a_refused_host_is_not_followed(client, admin, served):
    folder, base = served
    write_builtin(folder / "m.json")
    port = base.rsplit(":", 1)[1]
    # 127.0.0.1 is allowed in this app; "localhost" is not, though it is the same server.
    response = _download(
        client, admin, name="x", url=f"{base}/redirect/http://localhost:{port}/m.json"
    )
    assert "loopback, private" in assert_error(response, 400, "VALIDATION_ERROR")["message"]
    # A redirect to an allowed host is followed.
    response = _download(client, admin, name="y", url=f"{base}/redirect/{base}/m.json")
    assert response.status_code == 201


def test_a_download_never_touches_a_config_models_file(make_app, actor, served, data_dir):
    folder, base = served
    write_builtin(folder / "m.json")
    (data_dir / "models").mkdir(parents=True)
    config_file = write_builtin(data_dir / "models" / "weights.json")
    before = config_file.read_bytes()
    os.utime(config_file, (1_000, 1_000))
    client = make_app(
        models={
            "download_allow_hosts": ["127.0.0.1"],
            "registry": [
                {"name": "demo", "backend": "builtin", "path": DEMO_MODEL},
                {"name": "cfg", "backend": "builtin", "path": str(config_file)},
            ],
        }
    ).test_client()
    admin = actor.__class__(client).admin_headers()
    for name in ("cfg", "weights"):  # by name, and by the file a download would write
        response = _download(client, admin, name=name, url=f"{base}/m.json")
        assert_error(response, 409, "CONFLICT")
    assert config_file.read_bytes() == before and config_file.stat().st_mtime == 1_000
