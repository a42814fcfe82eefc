"""The auth package stays a self-contained extension in layers: it never imports the application,
its modules import each other without a circle, and the application uses only its public face."""

from __future__ import annotations

import ast
from pathlib import Path

import auth
from tests.live import REPO


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in `path`, relative ones resolved within its package."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.append((module, [a.name for a in node.names]))
    return found


def test_auth_never_imports_the_application():
    for path in (REPO / "auth").rglob("*.py"):
        for module, _ in _imports(path):
            assert module.split(".")[0] != "inference_server", path


def test_auth_modules_import_each_other_without_a_circle():
    graph: dict[str, set[str]] = {}
    for path in (REPO / "auth").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if name == "auth.__init__":
            continue  # the public face: imports everything, imported by nothing inside
        targets = set()
        for module, names in _imports(path):
            if module == "auth":  # `from . import accounts`
                targets |= {f"auth.{n}" for n in names}
            elif module.startswith("auth."):
                targets.add(module)
        graph[name] = targets & {f"auth.{p.stem}" for p in (REPO / "auth").glob("*.py")}

    def visit(node: str, trail: list[str]) -> None:
        assert node not in trail, " -> ".join([*trail[trail.index(node) :], node])
        for nxt in graph.get(node, ()):
            visit(nxt, [*trail, node])

    for name in graph:
        visit(name, [])


def test_the_application_imports_only_what_auth_exports():
    exported = set(auth.__all__)
    for path in (REPO / "inference_server").rglob("*.py"):
        for module, names in _imports(path):
            if module.split(".")[0] != "auth":
                continue
            assert module == "auth", f"{path.name} imports {module}: use `from auth import ...`"
            assert set(names) <= exported, f"{path.name} imports {set(names) - exported}"
