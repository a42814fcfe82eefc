"""Simple mode (auth.enabled: false) and the audit log's rotation."""

from __future__ import annotations

import json

import pytest

from auth.audit import AuditLog, read_events
from auth.storage.audit_file import AuditFile
from tests.conftest import Actor, assert_error


def _snapshot(data_dir):
    return {p.name: p.read_bytes() for p in sorted(data_dir.glob("*.json"))}


def test_simple_mode_opens_predict_hides_auth_and_keeps_data(make_app, data_dir):
    secured = make_app()
    actor = Actor(secured.test_client())
    key = actor.create_key(actor.user_headers("kept"))["key"]
    before = _snapshot(data_dir)

    simple = make_app(auth={"enabled": False}).test_client()
    assert simple.post("/predict", json={"data": [[1, 2, 3]]}).status_code == 200
    assert simple.get("/models").status_code == 200
    # No account or admin route is served: nothing of either could work without auth.
    assert_error(
        simple.post("/auth/login", json={"username": "a", "password": "b"}), 404, "NOT_FOUND"
    )
    assert_error(simple.get("/auth/me"), 404, "NOT_FOUND")
    assert _snapshot(data_dir) == before  # nothing read as a change, nothing written

    again = Actor(make_app().test_client())
    assert again.predict({"X-API-Key": key}).status_code == 200
    assert_error(again.predict({}), 401, "AUTHENTICATION_REQUIRED")


def test_audit_log_rotates_and_reads_across_generations(tmp_path):
    log = AuditLog(AuditFile(tmp_path / "audit.log", max_bytes=400, backups=2))
    for i in range(40):
        log.record("test.event", n=i)
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert names == ["audit.log", "audit.log.1", "audit.log.2"]
    assert all((tmp_path / n).stat().st_size <= 400 + 100 for n in names)
    events = read_events(AuditFile(tmp_path / "audit.log"), count=5)
    assert [e["n"] for e in events] == [35, 36, 37, 38, 39]
    kept = read_events(AuditFile(tmp_path / "audit.log"), count=1000)
    numbers = [e["n"] for e in kept]
    assert numbers == sorted(numbers) and numbers[-1] == 39  # oldest dropped, order kept
    assert all((tmp_path / n).stat().st_mode & 0o777 == 0o600 for n in names)


def test_read_events_skips_a_torn_line(tmp_path):
    path = tmp_path / "audit.log"
    path.write_text(
        json.dumps({"event": "a"}) + "\n{torn" + "\n" + json.dumps({"event": "b"}) + "\n"
    )
    assert [e["event"] for e in read_events(AuditFile(path), count=10)] == ["a", "b"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/models/manage", {"action": "reload", "model": "demo"}),
        ("/models/download", {"name": "m", "backend": "builtin", "url": "file:///etc/passwd"}),
    ],
)
def test_simple_mode_leaves_models_alone_unless_told(make_app, path, body):
    simple = make_app(auth={"enabled": False}).test_client()
    error = assert_error(simple.post(path, json=body), 403, "INSUFFICIENT_PERMISSIONS")
    assert "models.manage_in_simple_mode: true" in error["message"]
    opened = make_app(auth={"enabled": False}, models={"manage_in_simple_mode": True})
    answer = opened.test_client().post(path, json=body)
    assert answer.status_code in (200, 400), answer.get_data()  # past the gate: the request's own
