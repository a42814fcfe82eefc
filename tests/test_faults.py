"""Faults an operator meets: files deleted under a running server, a lost secret, dead writers.

Each test reproduces one row of the fault campaign through the HTTP API (or a restart) and
checks that access never widens, nothing committed is silently dropped, and the answer is the
JSON error shape, never a 500.
"""

from __future__ import annotations

import shutil

import pytest

from auth import SecretError, StoreCorrupt
from inference_server import create_app
from inference_server.settings import load_settings
from tests.conftest import PASSWORD, assert_error, base_overrides, compacted


def _restart(data_dir):
    return create_app(load_settings(overrides=base_overrides(data_dir), environ={}))


def _register(actor, admin, name: str):
    body = {"username": name, "password": PASSWORD, "email": f"{name}@example.org"}
    return actor.client.post("/auth/register", json=body, headers=admin)


@pytest.mark.parametrize("file", ["users.json", "users.journal.jsonl"])
def test_a_store_file_deleted_while_serving_is_an_error_never_an_empty_restart(
    app, actor, data_dir, file
):
    admin = actor.admin_headers()
    actor.register("erin")
    compacted(data_dir, "users")  # both files exist: the snapshot and a fresh journal
    actor.register("fred")
    (data_dir / file).unlink()
    # Writes are refused, naming the file; nothing is written from an empty store.
    error = assert_error(_register(actor, admin, "gina"), 503, "STORAGE_BUSY")
    assert "users.json" in error["message"]
    assert not (data_dir / file).exists()
    # Reads go on from what was committed: nobody vanished, the admin included.
    listed = actor.client.get("/admin/users", headers=admin).get_json()
    assert {u["username"] for u in listed["users"]} == {"admin", "erin", "fred"}
    if file == "users.json":  # a journal without the snapshot it continues stops a restart
        with pytest.raises(StoreCorrupt, match="users.json"):
            _restart(data_dir)


def test_a_data_dir_deleted_while_serving_comes_back_private_and_refuses_writes(
    app, actor, data_dir
):
    headers = actor.user_headers("hana")
    key = actor.create_key(headers)["key"]
    shutil.rmtree(data_dir)
    response = actor.client.post("/auth/api-keys", json={"name": "again"}, headers=headers)
    assert_error(response, 503, "STORAGE_BUSY")
    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert actor.predict({"X-API-Key": key}).status_code == 200  # the last good copy serves


def test_a_lost_secret_beside_issued_tokens_stops_the_start(app, actor, data_dir):
    actor.login("admin", "admin123")  # a token was signed: sessions exist
    (data_dir / "jwt_secret").unlink()
    with pytest.raises(SecretError, match="jwt_secret is missing, but tokens were signed"):
        _restart(data_dir)
    assert not (data_dir / "jwt_secret").exists()  # no new secret that would split the workers


def test_a_secret_is_made_for_a_data_dir_whose_users_came_from_the_cli(tmp_path):
    data_dir = tmp_path / "data"
    app = _restart(data_dir)  # users, no tokens yet: as after `create-admin` on a new machine
    (data_dir / "jwt_secret").unlink()
    assert _restart(data_dir) and (data_dir / "jwt_secret").exists()
    assert app


def test_temp_files_of_dead_writers_are_removed_at_start(app, actor, data_dir):
    actor.register("iris")
    leftovers = [
        data_dir / ".api_keys.json.k3j2.tmp",
        data_dir / ".users.journal.jsonl.x9z1.tmp",
        data_dir / ".sessions.json.abcd.tmp",
    ]
    for leftover in leftovers:
        leftover.write_text("half a snapshot")
    _restart(data_dir)
    assert [f for f in leftovers if f.exists()] == []
    assert (data_dir / "users.journal.jsonl").exists()  # the real files are untouched
