"""The auth package stays a self-contained extension: it never imports the application."""

from __future__ import annotations

import ast

from tests.live import REPO


def test_auth_never_imports_the_application():
    for path in (REPO / "auth").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            assert not any(n.split(".")[0] == "inference_server" for n in names), path
