"""Data on disk is input too: a record that does not fit its shape is named, never served.

At start-up the server refuses to start, naming the file, the record and the field, and leaves
the file as it was. While serving, the last good copy keeps answering, writes answer 503, and no
route answers 500 because of what an operator typed into a file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auth import StoreCorrupt
from inference_server.app import create_app
from inference_server.settings import load_settings
from tests.conftest import PASSWORD, assert_error, base_overrides, bearer, compacted


def _edit(data_dir: Path, name: str, collection: str, change) -> bytes:
    """A hand edit of the snapshot of store `name` (after folding its journal into it)."""
    path = compacted(data_dir, name)
    document = json.loads(path.read_text())
    change(document[collection])
    path.write_text(json.dumps(document))
    return path.read_bytes()


def _user(records: dict, name: str) -> dict:
    return next(r for r in records.values() if r.get("username") == name)


BROKEN = [
    ("users.json", "users", lambda u: u.update(role="superuser"), "field 'role' must be one of"),
    ("users.json", "users", lambda u: u.pop("is_active"), "field 'is_active' is missing"),
    ("users.json", "users", lambda u: u.update(is_active="yes"), "must be true or false"),
    ("users.json", "users", lambda u: u.update(is_activ=True), "'is_activ' is not one"),
    ("users.json", "users", lambda u: u.update(created_at="yesterday"), "a UTC time"),
    ("users.json", "users", lambda u: u.update(rate_limit="lots"), "a rate limit"),
    ("users.json", "users", lambda u: u.update(id="usr_other"), "must equal the record's key"),
    ("api_keys.json", "keys", lambda k: k.update(expires_at="tomorrow"), "a UTC time"),
    ("api_keys.json", "keys", lambda k: k.update(scopes=["root"]), "a list drawn from"),
    ("sessions.json", "sessions", lambda s: s.update(created_at="0"), "must be an integer"),
]


@pytest.fixture
def filled(app, actor):
    """A data dir holding one user (erin) with a key and a live session; returns erin's login."""
    actor.register("erin")
    tokens = actor.login("erin", PASSWORD)
    actor.create_key(bearer(tokens["access_token"]))
    return tokens


def _break(data_dir: Path, file: str, collection: str, change) -> bytes:
    """Apply `change` to erin's user record, or to the first record of another store."""

    def pick(records: dict) -> None:
        change(_user(records, "erin") if collection == "users" else next(iter(records.values())))

    return _edit(data_dir, file.removesuffix(".json"), collection, pick)


@pytest.mark.parametrize(("file", "collection", "change", "message"), BROKEN)
def test_a_bad_record_stops_the_start_naming_file_record_and_field(
    filled, data_dir, file, collection, change, message
):
    broken = _break(data_dir, file, collection, change)
    with pytest.raises(StoreCorrupt) as refused:
        create_app(load_settings(overrides=base_overrides(data_dir), environ={}))
    assert file in str(refused.value) and "record '" in str(refused.value)
    assert message in str(refused.value)
    assert (data_dir / file).read_bytes() == broken  # never overwritten


@pytest.mark.parametrize(("file", "collection", "change", "message"), BROKEN)
def test_a_bad_record_while_serving_keeps_the_last_good_copy(
    filled, actor, data_dir, file, collection, change, message
):
    admin = actor.admin_headers()
    broken = _break(data_dir, file, collection, change)
    # Reads go on from the last good copy: no 500, and no escalation from the edit.
    assert actor.client.get("/admin/users", headers=admin).status_code == 200
    me = actor.client.get("/auth/me", headers=bearer(filled["access_token"]))
    assert me.status_code == 200 and me.get_json()["role"] == "user"
    assert actor.predict(bearer(filled["access_token"])).status_code == 200
    # Writes to that file are refused, naming it, and the file stays as the operator left it.
    write = {
        "users.json": lambda: actor.client.post(
            "/auth/register",
            json={"username": "fred", "password": PASSWORD, "email": "f@example.org"},
            headers=admin,
        ),
        "api_keys.json": lambda: actor.client.post(
            "/auth/api-keys", json={"name": "k"}, headers=admin
        ),
        "sessions.json": lambda: actor.client.post(
            "/auth/login", json={"username": "admin", "password": "admin123"}
        ),
    }[file]()
    error = assert_error(write, 503, "STORAGE_BUSY")
    assert file in error["message"]
    assert (data_dir / file).read_bytes() == broken


def test_a_bad_model_state_record_stops_the_start(app, actor, data_dir):
    admin = actor.admin_headers()
    manage = {"action": "reload", "model": "demo"}
    assert actor.client.post("/models/manage", json=manage, headers=admin).status_code == 200
    _edit(data_dir, "models_state", "models", lambda m: m["demo"].update(state="asleep"))
    with pytest.raises(StoreCorrupt, match=r"models_state.json: record 'demo': field 'state'"):
        create_app(load_settings(overrides=base_overrides(data_dir), environ={}))


def test_records_written_by_the_server_fit_their_shapes(filled, actor, data_dir):
    """Everything the API writes loads again: a restart over a busy data dir starts."""
    admin = actor.admin_headers()
    tokens = actor.client.post("/auth/refresh", json={"refresh_token": filled["refresh_token"]})
    assert tokens.status_code == 200
    key = actor.create_key(admin, scopes=["predict", "api-keys:manage"], expires_days=3)
    actor.create_key({"X-API-Key": key["key"]}, scopes=["predict"])
    actor.predict({"X-API-Key": key["key"]})
    users = actor.client.get("/admin/users", headers=admin).get_json()["users"]
    erin = _user({u["id"]: u for u in users}, "erin")
    assert (
        actor.client.patch(
            f"/admin/users/{erin['id']}", json={"rate_limit": "5/minute"}, headers=admin
        ).status_code
        == 200
    )
    assert create_app(load_settings(overrides=base_overrides(data_dir), environ={}))
