"""Docstrings name functions that exist: every ``:func:``/``:class:``/``:meth:`` reference in hookstream,
and every function or class a module docstring's pipeline (``a -> b -> c``) names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "hookstream"
MODULES = sorted(PACKAGE.rglob("*.py"))
TREES = {path: ast.parse(path.read_text(), str(path)) for path in MODULES}

ROLE_RE = re.compile(r":(?:func|class|meth|attr):`~?([A-Za-z_][\w.]*)`")
# In a pipeline paragraph: Class.method, CamelCase classes and snake_case names with an underscore.
PIPELINE_NAME_RE = re.compile(r"(?<![\w.])([A-Z]\w*\.\w+|(?:[A-Z][a-z]+){2,}|[a-z_]*_[a-z_]\w*)(?![\w(])")


def defined_names() -> set[str]:
    names: set[str] = set()
    for tree in TREES.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return names


DEFINED = defined_names()


def docstrings(tree: ast.Module) -> list[str]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef
                                                           | ast.ClassDef))]
    return [doc for node in nodes if (doc := ast.get_docstring(node))]


def pipeline_names(doc: str) -> list[str]:
    paragraphs = [p for p in doc.split("\n\n") if "->" in p]
    return [m.group(1) for p in paragraphs for m in PIPELINE_NAME_RE.finditer(p)]


def missing(names: list[str]) -> list[str]:
    return [name for name in names if name.rsplit(".", 1)[-1] not in DEFINED]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_docstring_references_resolve(path: Path) -> None:
    tree = TREES[path]
    referenced = [m.group(1) for doc in docstrings(tree) for m in ROLE_RE.finditer(doc)]
    assert missing(referenced) == []
    module_doc = ast.get_docstring(tree) or ""
    assert missing(pipeline_names(module_doc)) == []


def test_the_pipeline_check_sees_the_names() -> None:
    names = pipeline_names("Sender._consume -> _deliver -> decide_outcome -> OutcomeSink.record\n(PostgreSQL)")
    assert names == ["Sender._consume", "_deliver", "decide_outcome", "OutcomeSink.record"]
    assert missing(["dispatch_task", "Sender.enqueue_deliveries", "decide_outcome"]) == [
        "dispatch_task", "Sender.enqueue_deliveries"]
