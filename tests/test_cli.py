"""The command line, driven with click's runner and as a real subprocess next to a live server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests
import yaml
from click.testing import CliRunner

from inference_server.app import create_app
from inference_server.cli import cli, main
from inference_server.settings import load_settings
from tests.conftest import Actor, assert_error, base_overrides, disk_text, on_disk
from tests.live import REPO, live_server

GOOD = "a long and private passphrase"


def _admin(run, name="root"):
    result = run(
        "create-admin",
        "--username",
        name,
        "--email",
        f"{name}@example.org",
        "--password-stdin",
        input=GOOD + "\n",
    )
    assert result.exit_code == 0, result.output
    return result


def test_create_admin_non_interactive_then_no_default_admin(run, make_app):
    result = _admin(run)
    assert "created admin root" in result.output and GOOD not in result.output
    app = make_app()
    users = dict(app.extensions["auth"].users.records()).values()
    assert [(u["username"], u["role"]) for u in users] == [("root", "admin")]
    client = app.test_client()
    assert_error(
        client.post("/auth/login", json={"username": "admin", "password": "admin123"}),
        401,
        "INVALID_CREDENTIALS",
    )
    assert Actor(client).login("root", GOOD)["access_token"]


def test_create_admin_interactive(run):
    result = run("create-admin", input=f"keeper\nkeeper@example.org\n{GOOD}\n{GOOD}\n")
    assert result.exit_code == 0, result.output
    assert "created admin keeper" in result.output
    assert GOOD not in result.output  # the prompts hide what is typed


def test_create_admin_refuses_a_weak_password(run):
    result = run(
        "create-admin",
        "--username",
        "weak",
        "--email",
        "weak@example.org",
        "--password-stdin",
        input="password123\n",
    )
    assert result.exit_code == 1
    assert "too common" in result.output


def _admin_key(run) -> str:
    """Make admin root with a key named ops through the CLI; returns the key."""
    result = run(
        "create-admin",
        "--username",
        "root",
        "--email",
        "r@example.org",
        "--password-stdin",
        "--with-key",
        "ops",
        input=GOOD + "\n",
    )
    return result.output.strip().splitlines()[-1]


def test_create_admin_with_key_prints_it_once(run, data_dir):
    key = _admin_key(run)
    assert key.startswith("sk_live_")
    assert key not in disk_text(data_dir, "api_keys")


def _admin_with_key(run, *scopes: str):
    return run(
        "create-admin",
        *("--username", "root", "--email", "r@example.org", "--password-stdin"),
        *("--with-key", "ops", *scopes),
        input=GOOD + "\n",
    )


@pytest.mark.parametrize(
    ("given", "scopes"),
    [
        ((), ["models:manage", "models:read", "predict"]),  # what `keys create` gives by default
        (("--scopes", "predict"), ["predict"]),
        (("--scopes", "admin,predict"), ["admin", "predict"]),
    ],
)
def test_create_admin_with_key_gives_the_default_scopes_or_those_asked(
    run, make_app, data_dir, given, scopes
):
    made = _admin_with_key(run, *given)
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[-1]
    (record,) = on_disk(data_dir, "api_keys").values()
    assert record["scopes"] == scopes
    client = make_app().test_client()
    admin_route = client.get("/admin/users", headers={"X-API-Key": key})
    if "admin" in scopes:
        assert admin_route.status_code == 200
    else:
        assert_error(admin_route, 403, "INSUFFICIENT_PERMISSIONS")
    predicted = client.post("/predict", json={"data": [[1, 2, 3]]}, headers={"X-API-Key": key})
    assert predicted.status_code == 200


def test_create_admin_refuses_unknown_scopes_before_making_the_admin(run):
    refused = _admin_with_key(run, "--scopes", "predict,root")
    assert refused.exit_code == 1 and "unknown scope(s): root" in refused.output
    assert "created admin" not in refused.output
    alone = run("create-admin", "--username", "x", "--scopes", "predict")
    assert alone.exit_code == 2 and "--with-key" in alone.output
    assert run("users", "list").stdout.splitlines()[1:] == []  # no admin was made


def test_users_commands(run):
    _admin(run)
    _admin(run, "second")
    listed = run("users", "list")
    assert "root" in listed.output and "second" in listed.output
    assert json.loads(run("users", "show", "second").output)["role"] == "admin"
    assert run("users", "set-role", "second", "user").exit_code == 0
    assert json.loads(run("users", "show", "second@example.org").output)["role"] == "user"
    assert run("users", "disable", "second").exit_code == 0
    assert json.loads(run("users", "show", "second").output)["is_active"] is False
    assert run("users", "enable", "second").exit_code == 0
    refused = run("users", "disable", "root")
    assert refused.exit_code == 1 and "last active admin" in refused.output
    reset = run(
        "users", "reset-password", "second", "--password-stdin", input="another long passphrase\n"
    )
    assert reset.exit_code == 0 and "another long passphrase" not in reset.output
    assert run("users", "delete", "second", input="n\n").exit_code == 1  # aborted
    assert run("users", "delete", "second", "--yes").exit_code == 0
    missing = run("users", "show", "second")
    assert missing.exit_code == 1 and "no user" in missing.output


def test_keys_commands(run):
    _admin(run)
    created = run("keys", "create", "--user", "root", "--name", "batch", "--scopes", "predict")
    assert created.exit_code == 0
    key = created.stdout.strip()
    assert key.startswith("sk_live_") and "\n" not in key
    header, row = run("keys", "list", "--user", "root").stdout.splitlines()
    assert header.split()[:3] == ["ID", "PREFIX", "USER"]
    assert "batch" in row and key not in row and key[:12] in row
    key_id = row.split()[0]
    assert run("keys", "revoke", key_id).exit_code == 0
    assert "revoked" in run("keys", "list").output
    bad = run("keys", "create", "--user", "root", "--name", "x", "--scopes", "root")
    assert bad.exit_code == 1 and "unknown scope" in bad.output


def test_config_check_masks_secrets(run, tmp_path):
    secret = "q8VxN2rTz5LmW7yB4cK9dF3hJ6pS1gA0-extra"
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["config", "check"],
        env={
            "INFERENCE_AUTH__JWT_SECRET": secret,
            "INFERENCE_RATE_LIMITS__STORAGE_URI": "redis://:hunter2@127.0.0.1:6379/0",
            "INFERENCE_STORAGE__REDIS_URL": "redis://:hunter3@127.0.0.1:6379/1",
        },
    )
    assert result.exit_code == 0, result.output
    assert secret not in result.output and "hunter2" not in result.output
    assert "hunter3" not in result.output and "redis://:********@127.0.0.1:6379/1" in result.output
    refused = runner.invoke(
        cli, ["config", "check"], env={"INFERENCE_STORAGE__REDIS_URL": "http://:hunter4@host"}
    )
    assert refused.exit_code != 0 and "storage.redis_url" in refused.output
    assert "hunter4" not in refused.output
    assert "admin123" not in result.output and "********" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("auth: {rate_limit_per_minut: 5}\n")
    broken = runner.invoke(cli, ["config", "check", "--config", str(bad)])
    assert broken.exit_code == 1 and "auth.rate_limit_per_minut" in broken.output


@pytest.mark.parametrize(
    "order",
    [
        ("--config", "{good}", "config", "check"),
        ("config", "check", "--config", "{good}"),
        ("--config={good}", "config", "check"),
        ("--config", "{bad}", "config", "check", "--config", "{good}"),  # the command's own wins
    ],
)
def test_config_is_taken_before_or_after_the_command(tmp_path, order):
    files = {"good": tmp_path / "good.yaml", "bad": tmp_path / "bad.yaml"}
    files["good"].write_text("auth: {rate_limit_per_minute: 7}\n")
    files["bad"].write_text("auth: {rate_limit_per_minut: 5}\n")
    args = [arg.format(**files) for arg in order]
    result = CliRunner().invoke(cli, args, env={"INFERENCE_CONFIG": str(files["bad"])})
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["auth"]["rate_limit_per_minute"] == 7


def test_config_given_first_reaches_serve_and_config_check_as_written(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("auth: {rate_limit_per_minut: 5}\n")
    for args in (["--config", str(bad)], ["--config", str(bad), "config", "check"]):
        with pytest.raises(SystemExit) as ended:
            main(args)  # as `python run.py ...`: without a command, `serve`
        assert ended.value.code == 1
        assert "auth.rate_limit_per_minut" in capsys.readouterr().err


def test_audit_tail_filters(run):
    _admin(run)
    run("keys", "create", "--user", "root", "--name", "a")
    lines = run("audit", "tail", "-n", "5").output.strip().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    assert events == ["user.registered", "api_key.created"]
    only = run("audit", "tail", "--event", "api_key.created").output.strip().splitlines()
    assert len(only) == 1
    nobody = run("audit", "tail", "--user", "usr_nobody")
    assert nobody.exit_code == 1 and "no user 'usr_nobody'" in nobody.output
    # A user is named any way the CLI names users: their id, username or email.
    by_id = run("audit", "tail", "--user", _user_id(run, "root")).output
    for ref in ("root", "root@example.org"):
        assert run("audit", "tail", "--user", ref).output == by_id
    assert [json.loads(line)["event"] for line in by_id.strip().splitlines()] == events


def test_corrupt_store_is_reported_not_overwritten(run, data_dir):
    data_dir.mkdir(parents=True)
    (data_dir / "users.json").write_text("{oops")
    result = run("users", "list")
    assert result.exit_code == 1 and "users.json" in result.output
    assert (data_dir / "users.json").read_text() == "{oops"


@pytest.mark.slow
def test_deleting_a_user_from_the_cli_stops_their_key_in_a_running_server(tmp_path):
    data_dir = tmp_path / "data"
    env = {
        "INFERENCE_STORAGE__DATA_DIR": str(data_dir),
        "INFERENCE_AUTH__BCRYPT_ROUNDS": "4",
        "PATH": "/usr/bin:/bin",
    }

    def cli_run(*args, input=None):
        return subprocess.run(
            [sys.executable, "run.py", *args],
            cwd=REPO,
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )

    with live_server(data_dir, workers=2) as server:
        made = cli_run(
            "create-admin",
            "--username",
            "ops",
            "--email",
            "ops@example.org",
            "--password-stdin",
            input=GOOD + "\n",
        )
        assert made.returncode == 0, made.stderr
        created = cli_run("keys", "create", "--user", "ops", "--name", "svc")
        key = created.stdout.strip()

        def predict():
            return requests.post(
                server.url("/predict"),
                json={"data": [[1, 2, 3]]},
                headers={"X-API-Key": key},
                timeout=30,
            )

        assert all(predict().status_code == 200 for _ in range(4))
        assert cli_run("users", "set-role", "ops", "user").returncode == 0
        deleted = cli_run("users", "delete", "ops", "--yes")
        assert deleted.returncode == 0, deleted.stderr + deleted.stdout
        answers = [predict() for _ in range(4)]
        assert all(a.status_code == 401 for a in answers)
        assert answers[0].json()["error"]["code"] == "INVALID_API_KEY"


@pytest.mark.slow
def test_readme_operator_commands_run_as_written(tmp_path):
    import re

    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- operators:start -->\s*```bash\n(.*?)```", readme, re.S).group(1)
    data_dir = tmp_path / "data"
    env = {
        "INFERENCE_STORAGE__DATA_DIR": str(data_dir),
        "INFERENCE_AUTH__BCRYPT_ROUNDS": "4",
        "ADMIN_PASSWORD": "the operators own passphrase",
        "ALICE_PASSWORD": GOOD,
        "PATH": "/usr/bin:/bin",
        "PYTHON": sys.executable,
        # The block runs outside the checkout: the shipped model by its full path.
        "INFERENCE_MODELS__REGISTRY": f"[{{name: demo, path: {REPO / 'data/models/demo.json'}}}]",
    }
    script = block.replace("python run.py", f'"$PYTHON" {REPO / "run.py"}')
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,  # what the block writes (a backup) lands here, not in the checkout
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "created admin ops" in done.stdout and "alice: deleted" in done.stdout
    assert "revoked" in done.stdout and "# configuration is valid" in done.stderr
    assert "alice: password set" in done.stdout
    (backup,) = tmp_path.glob("backup-*")
    assert (backup / "users.journal.jsonl").exists()


def test_backup_copies_a_consistent_data_dir_that_serves(run, data_dir, tmp_path):
    key = _admin_key(run)
    assert run("keys", "create", "--user", "root", "--name", "second").exit_code == 0
    create_app(load_settings(overrides=base_overrides(data_dir), environ={}))  # makes the secret
    target = tmp_path / "backup"
    result = run("backup", str(target))
    assert result.exit_code == 0, result.output
    assert "users.journal.jsonl" in result.output and "jwt_secret" in result.output
    assert target.stat().st_mode & 0o777 == 0o700
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in target.iterdir())
    assert (target / "jwt_secret").read_bytes() == (data_dir / "jwt_secret").read_bytes()
    restored = create_app(load_settings(overrides=base_overrides(target), environ={}))
    answer = restored.test_client().post(
        "/predict", json={"data": [[1, 2, 3]]}, headers={"X-API-Key": key}
    )
    assert answer.status_code == 200
    assert {k["name"] for k in on_disk(target, "api_keys").values()} == {"ops", "second"}


def _user_id(run, ref: str) -> str:
    return json.loads(run("users", "show", ref).stdout)["id"]


def test_a_key_goes_to_standard_output_and_what_it_is_to_standard_error(run):
    for made in (
        run(
            "create-admin",
            *("--username", "root", "--email", "r@example.org", "--password-stdin"),
            *("--with-key", "ops"),
            input=GOOD + "\n",
        ),
        run("keys", "create", "--user", "root", "--name", "nightly"),
    ):
        assert made.exit_code == 0, made.output
        key = made.stdout.strip().splitlines()[-1]
        assert key.startswith("sk_live_") and key not in made.stderr
        assert "shown once" in made.stderr and "shown once" not in made.stdout


def test_users_create_asks_again_after_a_refused_answer(run):
    answers = [
        "jo",  # too short a username
        "joan",
        "not-an-email",
        "joan@example.org",
        "password",  # a common password, typed twice
        "password",
        GOOD,
        GOOD,
    ]
    made = run("users", "create", input="\n".join(answers) + "\n")
    assert made.exit_code == 0, made.output
    assert "created user joan" in made.stdout
    assert made.stderr.count("Error:") == 3  # each refusal said why, then asked again
    shown = json.loads(run("users", "show", "joan").stdout)
    assert (shown["role"], shown["email"]) == ("user", "joan@example.org")
    admin = run("users", "create", "--role", "admin", "--username", "ada", "--email", "a@e.org",
                "--password-stdin", input=GOOD + "\n")  # fmt: skip
    assert (
        admin.exit_code == 0 and json.loads(run("users", "show", "ada").stdout)["role"] == "admin"
    )
    # Not interactive: a refusal is final (exit 1), nothing is asked.
    weak = run("users", "create", "--username", "kim", "--email", "k@e.org", "--password-stdin",
               input="password\n")  # fmt: skip
    assert weak.exit_code == 1 and "common" in weak.output


@pytest.mark.parametrize(
    ("given", "stored"), [("50", "50/minute"), ("1000/hour", "1000/hour"), ("none", None)]
)
def test_users_set_rate_limit_takes_a_number_per_minute_or_a_limit(run, given, stored):
    _admin(run)
    done = run("users", "set-rate-limit", "root", given)
    assert done.exit_code == 0, done.output
    assert json.loads(run("users", "show", "root").stdout)["rate_limit"] == stored
    bad = run("users", "set-rate-limit", "root", "fast")
    assert bad.exit_code == 1 and "rate_limit" in bad.output


def test_users_list_has_a_header_row(run):
    _admin(run)
    header, *rows = run("users", "list").stdout.splitlines()
    assert header.split()[:4] == ["ID", "USERNAME", "EMAIL", "ROLE"]
    assert len(rows) == 1 and "root" in rows[0]


def test_help_version_and_the_serve_options_in_the_top_help(run):
    short = run("-h")
    assert short.exit_code == 0 and short.stdout == run("--help").stdout
    assert "--config" in short.stdout and "--port" in short.stdout
    version = run("--version")
    assert version.exit_code == 0 and "0.1.0" in version.stdout
    assert run("users", "-h").exit_code == 0


def test_every_list_command_prints_json_for_scripts(run, make_app):
    _admin(run)
    key = run("keys", "create", "--user", "root", "--name", "batch", "--scopes", "predict")
    users = json.loads(run("users", "list", "--json").stdout)
    assert [u["username"] for u in users] == ["root"]
    assert "password_hash" not in users[0] and users[0]["role"] == "admin"
    keys = json.loads(run("keys", "list", "--user", "root", "--json").stdout)
    assert [k["name"] for k in keys] == ["batch"] and key.stdout.strip() not in json.dumps(keys)
    app = make_app()  # a job, through the API, for `jobs list`
    actor = Actor(app.test_client())
    root = {"Authorization": "Bearer " + actor.login("root", GOOD)["access_token"]}
    job = actor.client.post("/jobs", json={"inputs": [[[1, 2, 3]]]}, headers=root).get_json()
    jobs = json.loads(run("jobs", "list", "--json").stdout)
    assert [(j["id"], j["status"]) for j in jobs] == [(job["id"], "queued")]
    report = json.loads(run("usage", "report", "--json").stdout)
    assert report["group_by"] == "day"


def test_set_password_is_permanent_and_reset_password_is_temporary(run, make_app):
    _admin(run)
    assert (
        run(
            "users",
            "create",
            "--username",
            "sam",
            "--email",
            "s@example.org",
            "--password-stdin",
            input="first long passphrase\n",
        ).exit_code
        == 0
    )
    client = make_app().test_client()

    def login(password: str):
        return client.post("/auth/login", json={"username": "sam", "password": password})

    reset = run(
        "users", "reset-password", "sam", "--password-stdin", input="temporary passphrase 1\n"
    )
    assert reset.exit_code == 0
    assert login("temporary passphrase 1").get_json()["password_change_required"] is True
    typed = "permanent passphrase 2"
    asked = run("users", "set-password", "sam", input=f"{typed}\n{typed}\n")  # prompted twice
    assert asked.exit_code == 0 and "password set" in asked.output and typed not in asked.output
    answer = login(typed)
    assert answer.status_code == 200 and "password_change_required" not in answer.get_json()
    assert login("temporary passphrase 1").status_code == 401
    events = [json.loads(line)["event"] for line in run("audit", "tail").stdout.splitlines()]
    assert "user.password_set" in events
