"""README stays true: two Quick start commands, and CI runs the test one verbatim."""

from __future__ import annotations

import re

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
