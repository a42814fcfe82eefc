"""The real server under gunicorn on 127.0.0.1: README walkthrough, several workers, start-up."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import on_disk
from tests.live import REPO, live_server

pytestmark = pytest.mark.slow


def _readme_block(marker: str) -> str:
    readme = (REPO / "README.md").read_text()
    block = re.search(rf"<!-- {marker}:start -->\s*```bash\n(.*?)```", readme, re.S)
    assert block, f"README lost its {marker} block"
    return block.group(1)


def test_readme_walkthrough_runs_against_a_real_server_twice(tmp_path):
    """A newcomer may run it again: it changes no password and cleans up what it made."""
    walkthrough = f"cd {shlex.quote(str(tmp_path))}\n" + _readme_block("walkthrough")
    models = f"cd {shlex.quote(str(REPO))}\n" + _readme_block("models")
    roots = {"INFERENCE_MODELS__DOWNLOAD_ROOTS": f"[{REPO / 'data' / 'models'}]"}
    with live_server(tmp_path / "data", env=roots) as server:

        def run(script: str) -> str:
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                env={"BASE": server.base, "PATH": "/usr/bin:/bin:/usr/local/bin"},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            return done.stdout

        for _ in range(2):
            said = run(walkthrough)
            assert '"error"' not in said, said
            assert "/predict post" in said and "/auth/api-keys get,post" in said
            assert said.count('"predictions"') == 2 and '"predictions":[[0.5]]' in said
            assert "batch-service sk_live_" in said  # the active key, listed
            assert "API key revoked" in said and "INVALID_API_KEY" in said
            assert "logged out" in said
            assert not (tmp_path / "tokens.json").exists()
        keys = requests.get(
            server.url("/auth/api-keys"),
            headers={"Authorization": "Bearer " + server.login_admin()["access_token"]},
            timeout=30,
        ).json()["keys"]
        assert [k["is_active"] for k in keys] == [False, False]  # nothing left working
        # The models block: two predictions, a batch with one bad input, listings, a reload and
        # a download, and no other error.
        credentials = server.admin_credentials()
        token = credentials["jwt"]["Authorization"].removeprefix("Bearer ")
        said = run(f"TOKEN={token}\nKEY={credentials['api-key']['X-API-Key']}\n{models}")
        assert said.count('"predictions":[[0.5]]') >= 2, said
        assert '"succeeded":2' in said and '"failed":1' in said
        assert said.count('"code":"VALIDATION_ERROR"') == 1
        assert '"action":"reload"' in said and '"name":"demo2"' in said


def test_concurrent_refreshes_with_one_token_exactly_one_wins(tmp_path):
    with live_server(tmp_path / "data", workers=2) as server:
        refresh = server.login_admin()["refresh_token"]

        def attempt(_):
            return requests.post(
                server.url("/auth/refresh"), json={"refresh_token": refresh}, timeout=30
            ).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(attempt, range(8)))
        assert sorted(codes) == [200] + [401] * 7


def test_logout_takes_effect_in_every_worker(tmp_path):
    with live_server(tmp_path / "data", workers=2) as server:
        token = server.login_admin()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}

        def predict(_):
            return requests.post(
                server.url("/predict"), json={"data": [[1, 2, 3]]}, headers=headers, timeout=30
            ).status_code

        with ThreadPoolExecutor(4) as pool:
            assert set(pool.map(predict, range(20))) == {200}
            assert (
                requests.post(server.url("/auth/logout"), headers=headers, timeout=30).status_code
                == 200
            )
            assert set(pool.map(predict, range(20))) == {401}


def test_default_admin_announced_loudly(tmp_path):
    with live_server(tmp_path / "data") as server:
        assert requests.get(server.url("/health"), timeout=30).json() == {"status": "ok"}
    assert any("DEFAULT PASSWORD" in line for line in server.log)


def _start_fails(tmp_path, *args, env=None):
    environ = {
        "INFERENCE_STORAGE__DATA_DIR": str(tmp_path / "data"),
        "PATH": "/usr/bin:/bin",
        **(env or {}),
    }
    done = subprocess.run(
        [sys.executable, "run.py", "--port", "1", *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    return done.stderr


def test_corrupt_data_file_stops_start_up(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sessions.json").write_text("{{{")
    err = _start_fails(tmp_path)
    assert "sessions.json" in err and "refusing to start" in err
    assert "Traceback" not in err
    assert (tmp_path / "data" / "sessions.json").read_text() == "{{{"


def test_bad_config_stops_start_up(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("auth:\n  acess_token_expire_minutes: 5\n")
    err = _start_fails(tmp_path, "--config", str(bad))
    assert "auth.acess_token_expire_minutes" in err and "bad.yaml" in err
    assert "Traceback" not in err


def test_weak_secret_stops_start_up(tmp_path):
    err = _start_fails(tmp_path, env={"INFERENCE_AUTH__JWT_SECRET": "change-me"})
    assert "jwt_secret" in err and "Traceback" not in err


def test_a_stopping_worker_writes_the_key_use_it_noted(tmp_path):
    data_dir = tmp_path / "data"
    # A flush interval far longer than the test: only the flush at exit can write it.
    with live_server(data_dir, env={"INFERENCE_STORAGE__USAGE_FLUSH_SECONDS": "3600"}) as server:
        key = server.admin_credentials()["api-key"]
        answer = requests.post(server.url("/predict"), json={"data": [[1, 2, 3]]}, headers=key)
        assert answer.status_code == 200
        assert on_disk(data_dir, "api_key_usage") == {}  # the request wrote nothing
    written = on_disk(data_dir, "api_key_usage")
    assert len(written) == 1 and next(iter(written.values()))["last_used"]


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "run.py", "--port", str(port)],
            cwd=REPO,
            env={"INFERENCE_STORAGE__DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
