"""A data dir of the previous release reaches the fast path at its first start.

That release wrote each store as one JSON document (`tests/previous_release.py`). The first
process to open such a store (the server's start, or any CLI command) converts it into a sealed
snapshot under the store's lock, keeping the old file as `NAME.json.v1.bak` until the new one is
in place and removing it then; a conversion that fails leaves the old file as it was, usable,
and the next start converts it.
"""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from inference_server.cli import cli
from tests.conftest import COLLECTIONS, PASSWORD, Actor, on_disk
from tests.previous_release import downgrade

SEALED = b'{"schema_version":2,"generation":'


@pytest.fixture
def run(data_dir):
    """Invoke the CLI on the test's data dir; returns the click Result."""
    runner = CliRunner()
    env = {"INFERENCE_STORAGE__DATA_DIR": str(data_dir), "INFERENCE_AUTH__BCRYPT_ROUNDS": "4"}
    return lambda *args: runner.invoke(cli, list(args), env=env)


@pytest.fixture
def previous(make_app, data_dir) -> tuple[dict[str, dict], str]:
    """A data dir as the previous release left it: alice with a key, a session and the key's
    last use. Returns the records of every store and alice's key."""
    app = make_app()
    actor = Actor(app.test_client())
    key = actor.create_key(actor.user_headers("alice"))["key"]
    assert actor.predict({"X-API-Key": key}).status_code == 200
    state = app.extensions["auth"]
    state.key_usage.flush()
    state.ledger.flush()
    state.storage.shutdown()
    records = {name: on_disk(data_dir, name) for name in COLLECTIONS}
    assert records["api_key_usage"] and records["sessions"] and records["usage"]
    assert sorted(downgrade(data_dir)) == sorted(COLLECTIONS)
    return records, key


def _assert_sealed(data_dir, name: str, records: dict) -> None:
    assert (data_dir / f"{name}.json").read_bytes().startswith(SEALED)
    assert (data_dir / f"{name}.journal.jsonl").read_bytes().count(b"\n") == 1  # folded
    assert not (data_dir / f"{name}.json.v1.bak").exists()  # removed once the new one was in
    assert on_disk(data_dir, name) == records


def test_the_first_start_seals_every_store_and_keeps_every_record(previous, make_app, data_dir):
    records, key = previous
    for name in COLLECTIONS:
        assert json.loads((data_dir / f"{name}.json").read_bytes())["schema_version"] == 1
    app = make_app()
    for name in COLLECTIONS:
        _assert_sealed(data_dir, name, records[name])
    actor = Actor(app.test_client())
    assert actor.predict({"X-API-Key": key}).status_code == 200
    assert actor.login("alice", PASSWORD)["access_token"]


def test_a_cli_command_converts_too(previous, run, data_dir):
    records, _ = previous
    listed = run("users", "list")
    assert listed.exit_code == 0, listed.output
    assert "alice" in listed.output
    for name in COLLECTIONS:
        _assert_sealed(data_dir, name, records[name])


def test_a_conversion_that_fails_leaves_the_old_file_usable(
    previous, run, data_dir, make_app, monkeypatch
):
    records, _ = previous
    old = (data_dir / "users.json").read_bytes()
    real_replace = os.replace

    def replace(src, dst):  # the process dies as the new snapshot would take the old's name
        if os.path.basename(dst) == "users.json":
            raise OSError("killed mid-conversion")
        real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        listed = run("users", "list")
    assert listed.exit_code == 0, listed.output
    assert "alice" in listed.output  # read from the old file, the slow way
    assert (data_dir / "users.json").read_bytes() == old
    assert (data_dir / "users.json.v1.bak").read_bytes() == old  # the backup, until committed
    assert on_disk(data_dir, "users") == records["users"]
    _assert_sealed(data_dir, "sessions", records["sessions"])  # the others went through
    make_app()  # the next start converts it
    _assert_sealed(data_dir, "users", records["users"])
