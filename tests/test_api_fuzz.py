"""The server held to its own API description by property-based testing (schemathesis).

A real server on 127.0.0.1 is fuzzed over every operation three times: with a user's key, with
an admin token (leaving out what can end or narrow its own session by design: logout, password
resets and changes to users, which may disable, delete or demote the admin itself), then with an
admin API key holding every scope, which runs every operation, the destructive ones last.

Every check schemathesis has runs but one: `positive_data_acceptance` expects any body the
schema admits to be accepted, and the server checks what no schema can say (common passwords, a
model's input shape, a rate limit's grammar, where a download URL points). Any finding fails the
build; the seed is fixed so that a failure reproduces (SCHEMATHESIS_SEED picks another).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from auth.users import ALL_SCOPES
from tests.conftest import PASSWORD
from tests.live import live_server

pytestmark = pytest.mark.slow

# The one installed beside this interpreter by `pip install -e '.[test]'`.
SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
SERVER_ENV = {
    # Limits high enough that the run reaches the logic behind them, not only 429s.
    "INFERENCE_RATE_LIMITS__ROLES": "{admin: 10000000/minute, user: 10000000/minute}",
    "INFERENCE_RATE_LIMITS__LOGIN": "10000000/minute",
    "INFERENCE_RATE_LIMITS__LOGIN_FAILURES": "10000000/hour",
    "INFERENCE_RATE_LIMITS__INVALID_CREDENTIALS": "10000000/minute",
    "INFERENCE_AUTH__FAILED_LOGIN_DELAY_SECONDS": "0",
    "INFERENCE_AUTH__PASSWORD_HASH_SLOTS": "8",
    "INFERENCE_AUTH__REGISTRATION": "open",
    "INFERENCE_AUTH__RATE_LIMIT_PER_MINUTE": "10000000",
}
SESSION_ENDING = (
    "/auth/logout",
    "/admin/users/{user_id}/reset-password",
    "/admin/users/{user_id}",
)


def _credentials(server) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Header and excluded paths of each identity the run uses."""
    token = server.login_admin()["access_token"]
    admin = {"Authorization": f"Bearer {token}"}

    def key(headers, **body):
        made = requests.post(
            server.url("/auth/api-keys"), json={"name": "fuzz", **body}, headers=headers, timeout=60
        )
        assert made.status_code == 201, made.text
        return made.json()["key"]

    user = {"username": "fuzzer", "password": PASSWORD, "email": "fuzzer@example.org"}
    assert requests.post(server.url("/auth/register"), json=user, timeout=60).status_code == 201
    login = requests.post(server.url("/auth/login"), json=user, timeout=60).json()
    user_token = {"Authorization": f"Bearer {login['access_token']}"}
    return {  # in this order: each run may leave the server changed for the next
        "user key": (f"X-API-Key: {key(user_token)}", ()),
        "admin token": (f"Authorization: Bearer {token}", SESSION_ENDING),
        "admin key": (f"X-API-Key: {key(admin, scopes=sorted(ALL_SCOPES))}", ()),
    }


def test_the_server_conforms_to_its_api_description(tmp_path):
    assert SCHEMATHESIS, "schemathesis is missing: pip install -e '.[test]'"
    seed = os.environ.get("SCHEMATHESIS_SEED", "20261130")
    with live_server(tmp_path / "data", env=SERVER_ENV) as server:
        for who, (header, excluded) in _credentials(server).items():
            command = [
                SCHEMATHESIS,
                "run",
                server.url("/openapi.json"),
                "--header",
                header,
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                "40",
                "--seed",
                seed,
                "--workers",
                "1",
                "--report-dir",
                str(tmp_path / "report"),
            ]
            for path in excluded:
                command += ["--exclude-path", path]
            run = subprocess.run(command, capture_output=True, text=True, timeout=900)
            assert run.returncode == 0, f"schemathesis as {who} found:\n{run.stdout[-20000:]}"
