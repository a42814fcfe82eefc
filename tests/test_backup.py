"""`backup` and `restore`: a backup carries stores, secret, audit log and downloaded models, and
restored onto another data dir (as on a new host) it serves the downloaded model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from inference_server.app import create_app
from inference_server.backup import MANIFEST
from inference_server.cli import cli
from inference_server.settings import load_settings
from tests.conftest import REPO, Actor, base_overrides, deep_merge, on_disk
from tests.models import expected_affine, write_builtin

ROWS = [[1.0, 2.0, 3.0]]


@pytest.fixture
def roots(tmp_path):
    """Where file:// downloads may come from."""
    folder = tmp_path / "artifacts"
    folder.mkdir()
    return folder


def _app(data_dir, roots):
    overrides = deep_merge(base_overrides(data_dir), {"models": {"download_roots": [str(roots)]}})
    return create_app(load_settings(overrides=overrides, environ={}))


def _cli(data_dir, *args):
    env = {"INFERENCE_STORAGE__DATA_DIR": str(data_dir), "INFERENCE_AUTH__BCRYPT_ROUNDS": "4"}
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


@pytest.fixture
def served(data_dir, roots):
    """A data dir that has downloaded model `fetched`, and an API key that predicts with it."""
    actor = Actor(_app(data_dir, roots).test_client())
    admin = actor.admin_headers()
    url = write_builtin(roots / "m.json", version="7").as_uri()
    body = {"name": "fetched", "backend": "builtin", "url": url}
    assert actor.client.post("/models/download", json=body, headers=admin).status_code == 201
    return actor.create_key(admin, scopes=["predict"])["key"]


def _serves(data_dir, roots, key) -> None:
    client = _app(data_dir, roots).test_client()
    assert client.get("/ready").status_code == 200
    answer = client.post("/fetched/predict", json={"data": ROWS}, headers={"X-API-Key": key})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["version"] == "7"
    np.testing.assert_allclose(answer.get_json()["predictions"], expected_affine(ROWS))


def test_a_backup_restored_on_a_new_host_serves_the_downloaded_model(
    served, data_dir, roots, tmp_path
):
    assert on_disk(data_dir, "models_state")["fetched"]["spec"]["path"] == "models/fetched.json"
    target = tmp_path / "backup"
    made = _cli(data_dir, "backup", target)
    assert made.exit_code == 0, made.output
    assert "models/fetched.json" in made.output and "audit.log" in made.output
    manifest = json.loads((target / MANIFEST).read_text())
    assert {"users.json", "jwt_secret", "audit.log", "models/fetched.json"} <= set(
        manifest["files"]
    )
    assert target.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in target.rglob("*") if p.is_file())
    events = (target / "audit.log").read_text()

    shutil.rmtree(data_dir)  # the old host is gone
    new_host = tmp_path / "elsewhere" / "data"
    restored = _cli(new_host, "restore", target)
    assert restored.exit_code == 0, restored.output
    assert "models/fetched.json" in restored.output
    _serves(new_host, roots, key=served)
    assert (new_host / "audit.log").read_text().startswith(events)  # the trail goes on
    assert [p.name for p in new_host.iterdir() if p.name.startswith(".restore")] == []


def test_models_stored_with_absolute_paths_still_serve_and_are_rebased_by_a_restore(
    served, data_dir, roots, tmp_path
):
    """Records written before paths were stored relative keep working where they are, and a
    restore elsewhere makes them relative to the data dir."""
    store = _app(data_dir, roots).extensions["models"]._store
    absolute = str(data_dir / "models" / "fetched.json")

    def as_before(items):
        record = items["fetched"]
        record["spec"]["path"] = absolute
        items["fetched"] = record

    store.update(as_before)
    _serves(data_dir, roots, key=served)
    assert _cli(data_dir, "backup", tmp_path / "backup").exit_code == 0
    shutil.rmtree(data_dir)
    new_host = tmp_path / "elsewhere"
    restored = _cli(new_host, "restore", tmp_path / "backup")
    assert restored.exit_code == 0, restored.output
    assert "paths of model(s) fetched are now kept relative" in restored.output
    assert on_disk(new_host, "models_state")["fetched"]["spec"]["path"] == "models/fetched.json"
    _serves(new_host, roots, key=served)


def test_restore_over_data_needs_force_and_moves_the_data_aside(served, data_dir, roots, tmp_path):
    assert _cli(data_dir, "backup", tmp_path / "backup").exit_code == 0
    other = tmp_path / "other"
    Actor(_app(other, roots).test_client()).register("someone")  # a data dir in use before
    users_before = (other / "users.journal.jsonl").read_bytes()

    refused = _cli(other, "restore", tmp_path / "backup")
    assert refused.exit_code == 1
    assert "holds data" in refused.output and "--force" in refused.output
    assert (other / "users.journal.jsonl").read_bytes() == users_before  # untouched

    forced = _cli(other, "restore", tmp_path / "backup", "--force")
    assert forced.exit_code == 0, forced.output
    (aside,) = other.glob("replaced-*")
    assert str(aside) in forced.output
    assert (aside / "users.journal.jsonl").read_bytes() == users_before  # kept, not deleted
    names = {u["username"] for u in on_disk(other, "users").values()}
    assert "someone" not in names and "admin" in names
    _serves(other, roots, key=served)


def _damage(backup):
    data = bytearray((backup / "models" / "fetched.json").read_bytes())
    data[10] ^= 1
    (backup / "models" / "fetched.json").write_bytes(bytes(data))


def _manifest_escapes(backup):
    manifest = json.loads((backup / MANIFEST).read_text())
    manifest["files"]["../outside"] = {"size": 1, "sha256": "0" * 64}
    (backup / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_damage, "is damaged: models/fetched.json does not match its manifest"),
        (lambda b: (b / "users.json").unlink(), "is incomplete: users.json is missing"),
        (lambda b: (b / MANIFEST).write_text("{"), "cannot be read as a backup manifest"),
        (_manifest_escapes, "'../outside' is not a file of a data dir"),
        (lambda b: (b / MANIFEST).write_text("[]"), "is not a backup manifest: 'format' must"),
        (lambda b: (shutil.rmtree(b), b.mkdir()), "is not a backup: it holds neither"),
    ],
)
def test_a_spoilt_backup_is_refused_and_nothing_is_restored(
    served, data_dir, tmp_path, spoil, message
):
    backup = tmp_path / "backup"
    assert _cli(data_dir, "backup", backup).exit_code == 0
    spoil(backup)
    new_host = tmp_path / "elsewhere"
    refused = _cli(new_host, "restore", backup)
    assert refused.exit_code == 1 and message in refused.output, refused.output
    assert "Traceback" not in refused.output
    assert not new_host.exists() or [p.name for p in new_host.iterdir()] == []


def test_a_backup_without_manifest_from_an_older_release_is_restored(
    served, data_dir, roots, tmp_path
):
    backup = tmp_path / "backup"
    assert _cli(data_dir, "backup", backup).exit_code == 0
    (backup / MANIFEST).unlink()
    restored = _cli(tmp_path / "elsewhere", "restore", backup)
    assert restored.exit_code == 0, restored.output
    assert "has no manifest" in restored.output
    _serves(tmp_path / "elsewhere", roots, key=served)


def test_restore_is_refused_while_a_process_has_the_data_dir_open(served, data_dir, tmp_path):
    assert _cli(data_dir, "backup", tmp_path / "backup").exit_code == 0
    new_host = tmp_path / "elsewhere"
    assert _cli(new_host, "restore", tmp_path / "backup").exit_code == 0
    with subprocess.Popen(  # as a server worker: the stores open, read once
        [sys.executable, "-c", _HOLDER, str(new_host)],
        cwd=REPO,
        stdin=subprocess.PIPE,  # it exits when its standard input ends, as the block does
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout.readline().strip() == "open"
        refused = _cli(new_host, "restore", tmp_path / "backup", "--force")
    assert refused.exit_code == 1
    assert f"in use by process {holder.pid}" in refused.output
    assert _cli(new_host, "restore", tmp_path / "backup", "--force").exit_code == 0


_HOLDER = """
import sys
from inference_server.app import open_auth_state
from inference_server.settings import load_settings
state = open_auth_state(load_settings(overrides={"storage": {"data_dir": sys.argv[1]}}))
state.users.find("name", "admin")
print("open", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        (lambda data, tmp: tmp / "full", "is not empty"),
        (lambda data, tmp: data / "backups", "is inside the data dir"),
        (lambda data, tmp: data, "is inside the data dir"),
    ],
)
def test_backup_refuses_a_destination_it_would_mix_with(
    served, data_dir, tmp_path, destination, message
):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("kept")
    refused = _cli(data_dir, "backup", destination(data_dir, tmp_path))
    assert refused.exit_code == 1 and message in refused.output, refused.output
    assert (tmp_path / "full" / "notes.txt").read_text() == "kept"
    assert not (data_dir / "backups").exists()


def test_a_restored_backup_keeps_jobs_results_and_runs_the_queued_ones(data_dir, roots, tmp_path):
    app = _app(data_dir, roots)
    actor = Actor(app.test_client())
    alice = actor.user_headers("alice")

    def submitted() -> str:
        answer = actor.client.post("/jobs", json={"inputs": [ROWS, [[1, 2]]]}, headers=alice)
        assert answer.status_code == 202
        return answer.get_json()["id"]

    done = submitted()
    assert app.extensions["jobs"].drain() == 1
    queued = submitted()
    result = actor.client.get(f"/jobs/{done}/result", headers=alice).get_json()
    target = tmp_path / "backup"
    made = _cli(data_dir, "backup", target)
    assert made.exit_code == 0 and f"jobs/{queued}/rows.npy" in made.output, made.output

    new_host = tmp_path / "elsewhere" / "data"
    assert _cli(new_host, "restore", target).exit_code == 0
    app = _app(new_host, roots)
    client = app.test_client()
    assert client.get(f"/jobs/{done}/result", headers=alice).get_json() == result
    service = app.extensions["jobs"]
    assert service.recover() == [queued]  # the queue is not backed up: its jobs are put back
    assert service.drain() == 1
    ran = client.get(f"/jobs/{queued}/result", headers=alice).get_json()
    assert [r["index"] for r in ran["results"]] == [0, 1] and ran["failed"] == 1
