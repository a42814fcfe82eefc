"""Editing a store by hand, as an operator does it: the CLI, the files, a stop and a start.

A server that stops cleanly, and `python run.py storage compact` at any time, fold each journal
into its snapshot, so what the CLI and the API wrote is in `NAME.json`. An edit there holds at
the next start; an edit of a record that the journal changed after the last fold refuses the
start, naming the snapshot, the journal and the record, instead of being silently undone.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from auth import StoreCorrupt
from inference_server.app import create_app
from inference_server.settings import load_settings
from tests.conftest import PASSWORD, Actor, base_overrides, bearer
from tests.live import REPO, live_server, server_env


def _create(run, name: str) -> None:
    made = run(
        "users",
        "create",
        *("--username", name, "--email", f"{name}@example.org", "--password-stdin"),
        input=PASSWORD + "\n",
    )
    assert made.exit_code == 0, made.output


def _edit_user(data_dir, username: str, **changes) -> tuple[str, bytes]:
    """Change user `username` in `users.json` as an operator would (a JSON document, written
    back indented); returns the user's id and the file as edited."""
    path = data_dir / "users.json"
    document = json.loads(path.read_text())
    user = next(u for u in document["users"].values() if u["username"] == username)
    user.update(changes)
    path.write_text(json.dumps(document, indent=2))
    return user["id"], path.read_bytes()


def _start(data_dir):
    return create_app(load_settings(overrides=base_overrides(data_dir), environ={}))


def test_storage_compact_folds_what_the_cli_wrote_and_an_edit_then_holds(run, data_dir):
    _create(run, "alice")
    assert "alice" not in (data_dir / "users.json").read_text()  # a line of the journal
    folded = run("storage", "compact")
    assert folded.exit_code == 0, folded.output
    assert "folded users.journal.jsonl into users.json" in folded.output
    assert (data_dir / "users.journal.jsonl").read_text().count("\n") == 1  # its header only
    again = run("storage", "compact")
    assert again.output == "nothing to fold: every journal is empty\n"
    _edit_user(data_dir, "alice", full_name="Alice Edited")
    shown = run("users", "show", "alice")
    assert json.loads(shown.stdout)["full_name"] == "Alice Edited"
    actor = Actor(_start(data_dir).test_client())
    me = actor.client.get(
        "/auth/me", headers=bearer(actor.login("alice", PASSWORD)["access_token"])
    )
    assert me.get_json()["full_name"] == "Alice Edited"


def test_an_edit_of_a_user_the_journal_also_changed_refuses_the_start_naming_both(run, data_dir):
    _create(run, "bob")
    assert run("storage", "compact").exit_code == 0
    before = (data_dir / "users.json").read_bytes()
    assert run("users", "disable", "bob").exit_code == 0  # after the fold: in the journal
    bob, edited = _edit_user(data_dir, "bob", full_name="Bob Edited")
    journal = (data_dir / "users.journal.jsonl").read_bytes()
    with pytest.raises(StoreCorrupt) as refused:
        _start(data_dir)
    message = str(refused.value)
    assert f"{data_dir / 'users.json'}: record {bob!r} was edited by hand" in message
    assert f"{data_dir / 'users.journal.jsonl'} changed it too" in message
    listed = run("users", "list")
    assert listed.exit_code == 1 and bob in listed.output and "users.journal.jsonl" in listed.output
    assert (data_dir / "users.json").read_bytes() == edited  # nothing overwritten
    assert (data_dir / "users.journal.jsonl").read_bytes() == journal
    # The way out the message gives: put the record back, fold, edit again.
    (data_dir / "users.json").write_bytes(before)
    assert "folded users.journal.jsonl" in run("storage", "compact").output
    _edit_user(data_dir, "bob", full_name="Bob Edited")
    shown = json.loads(run("users", "show", "bob").stdout)
    assert (shown["full_name"], shown["is_active"]) == ("Bob Edited", False)


@pytest.mark.slow
def test_a_server_that_stops_folds_its_journals_and_an_edit_then_holds(tmp_path):
    data_dir = tmp_path / "data"

    def cli_run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "run.py", *args],
            cwd=REPO,
            env=server_env(data_dir),
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done

    with live_server(data_dir, workers=2) as server:
        cli_run(
            "users",
            "create",
            *("--username", "carol", "--email", "carol@example.org", "--password-stdin"),
            input=PASSWORD + "\n",
        )
        token = server.login_admin()["access_token"]  # a session, and the default admin
        key = requests.post(
            server.url("/auth/api-keys"), json={"name": "svc"}, headers=bearer(token), timeout=30
        ).json()["key"]
        predicted = requests.post(
            server.url("/predict"),
            json={"data": [[1.0, 2.0, 3.0]]},
            headers={"X-API-Key": key},
            timeout=30,
        )
        assert predicted.status_code == 200
    # Stopped: both workers went through their exit; every change is in a snapshot.
    for journal in data_dir.glob("*.journal.jsonl"):
        assert journal.read_text().count("\n") == 1, journal.read_text()
    usage = json.loads((data_dir / "api_key_usage.json").read_text())["keys"]
    assert len(usage) == 1  # the key's use, noted in memory, was written before the fold
    counted = json.loads((data_dir / "usage.json").read_text())["usage"]
    assert [day["requests"] for day in counted.values()] == [1]  # and so was the prediction
    _edit_user(data_dir, "carol", full_name="Carol Edited")
    with live_server(data_dir) as server:
        login = {"username": "carol", "password": PASSWORD}
        tokens = requests.post(server.url("/auth/login"), json=login, timeout=30).json()
        me = requests.get(
            server.url("/auth/me"), headers=bearer(tokens["access_token"]), timeout=30
        )
        assert me.json()["full_name"] == "Carol Edited"
