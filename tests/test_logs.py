"""Logs an operator can follow: one format for the app and gunicorn, an access line per
request naming the user and the request id, JSON when asked, each start-up message once."""

from __future__ import annotations

import json

import pytest
import requests

from tests.live import live_server

pytestmark = pytest.mark.slow


def _predict(server, headers):
    return requests.post(
        server.url("/predict"), json={"data": [[1.0, 2.0, 3.0]]}, headers=headers, timeout=60
    )


def test_json_logs_one_object_per_line_with_an_access_line_per_request(tmp_path):
    env = {"INFERENCE_SERVER__LOG_FORMAT": "json"}
    with live_server(tmp_path / "data", workers=2, env=env) as server:
        credentials = server.admin_credentials()
        key = credentials["api-key"]["X-API-Key"]
        token = credentials["jwt"]["Authorization"].split()[1]
        served = _predict(server, {**credentials["api-key"], "X-Request-ID": "client-42"})
        assert served.headers["X-Request-ID"] == "client-42"
        refused = _predict(server, {"X-API-Key": "sk_live_nope"})
        # Each worker writes its access lines in batches: wait for both, whichever served them.
        for rid in ("client-42", refused.headers["X-Request-ID"]):
            server.wait_for_log(rid, 1)
        lines = list(server.log)
    records = [json.loads(line) for line in lines]  # every line, gunicorn's included
    assert {"time", "level", "logger", "message", "process"} <= set(records[0])
    assert any(r["logger"] == "gunicorn.error" for r in records)
    access = [r for r in records if r["logger"] == "inference_server.access"]
    mine = next(r for r in access if r["request_id"] == "client-42")
    assert (mine["method"], mine["path"], mine["status"]) == ("POST", "/predict", 200)
    assert mine["user_id"].startswith("usr_") and mine["duration_ms"] >= 0
    bad = next(r for r in access if r["request_id"] == refused.headers["X-Request-ID"])
    assert (bad["status"], bad["user_id"]) == (401, None)
    text = "".join(lines)
    assert key not in text and token not in text and "admin123" not in text


def test_text_logs_name_the_request_and_say_each_start_up_message_once(tmp_path):
    with live_server(tmp_path / "data", workers=2) as server:
        requests.get(server.url("/health"), headers={"X-Request-ID": "probe-7"}, timeout=60)
        server.wait_for_log("request=probe-7", 1)
        lines = list(server.log)
    access = next(line for line in lines if "request=probe-7" in line)
    assert "INFO inference_server.access: GET /health 200" in access and "user=-" in access
    assert sum("created default admin" in line for line in lines) == 1
    # Each worker loads its models once, as does the job consumer; the check before the
    # workers loads none.
    assert sum("model 'demo' loaded" in line for line in lines) == 2 + 1
    booted = [line for line in lines if "Booting worker" in line]
    assert booted and all(" INFO gunicorn.error: " in line for line in booted)
