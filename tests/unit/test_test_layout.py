"""The test tree's own layout: helpers live in tests/support.py, conftest.py holds only fixtures.

pytest imports conftest.py itself (as a plugin); a module that imports it too gets a second copy
whose fixtures and state are not the ones pytest uses, and the bench would pull in pytest.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def imported_modules(tree: ast.Module) -> set[str]:
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return names


def is_fixture(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr == "fixture":
            return True
    return False


def test_nothing_imports_conftest() -> None:
    offenders = [str(path.relative_to(TESTS)) for path in sorted(TESTS.rglob("*.py"))
                 if "tests.conftest" in imported_modules(ast.parse(path.read_text()))]
    assert offenders == [], "import helpers from tests.support, not tests.conftest"


def test_conftest_defines_only_fixtures() -> None:
    tree = ast.parse((TESTS / "conftest.py").read_text())
    helpers = [node.name for node in tree.body
               if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
               and not (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and is_fixture(node))]
    assert helpers == [], f"move {helpers} to tests/support.py"


def test_support_does_not_need_pytest() -> None:
    """The bench (tests/bench/run.py) and the fault harness import tests.support outside pytest."""
    tree = ast.parse((TESTS / "support.py").read_text())
    assert not {name for name in imported_modules(tree) if name.split(".")[0] in ("pytest", "tests")}
