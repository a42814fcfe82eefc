"""README stays true: two Quick start commands, and CI runs the test one verbatim."""

from __future__ import annotations

import re

from tests.conftest import Actor, assert_error
from tests.live import REPO


def _quick_start_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, re.S)


def test_quick_start_has_exactly_a_run_and_a_test_command():
    run, test = _quick_start_commands()
    assert run.endswith("python run.py") and "\n" not in run
    assert test.endswith("python -m pytest") and "\n" not in test


def test_ci_runs_the_readme_test_command():
    _, test = _quick_start_commands()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test in ci


def _python_block(heading: str) -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split(heading, 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)\n```", section, re.S)
    return block


def test_the_limit_example_counts_an_owners_route(monkeypatch, tmp_path):
    monkeypatch.setenv("INFERENCE_STORAGE__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("INFERENCE_AUTH__BCRYPT_ROUNDS", "4")
    monkeypatch.setenv("INFERENCE_MODELS__DEFAULT", "demo")
    monkeypatch.setenv(
        "INFERENCE_MODELS__REGISTRY",
        f"[{{name: demo, backend: builtin, path: {REPO / 'data/models/demo.json'}}}]",
    )
    example: dict = {"__name__": "__main__"}
    exec(_python_block("## Rate limits"), example)
    actor = Actor(example["app"].test_client())
    headers = actor.user_headers("olga")
    answers = [actor.client.get("/reports", headers=headers) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    assert_error(answers[-1], 429, "RATE_LIMIT_EXCEEDED")


def test_the_adoption_example_guards_its_own_routes(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    example: dict = {"__name__": "__main__"}
    exec(_python_block("## Using `auth/` in another Flask app"), example)
    client = example["app"].test_client()
    assert_error(client.get("/api/reports"), 401, "AUTHENTICATION_REQUIRED")
    assert client.get("/admin/users").status_code == 404  # admin_url_prefix=None
    refused = client.post("/auth/register", json={"username": "x", "password": "p" * 12})
    assert_error(refused, 403, "REGISTRATION_CLOSED")
