"""The package's shape: no module in vasa_engine/ or kernels/ over 500 lines, no class over 300."""

import ast
from pathlib import Path

import pytest

from conftest import REPO

MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300
SOURCES = sorted(p for folder in ("vasa_engine", "kernels") for p in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(REPO)) for p in SOURCES])
def test_module_and_class_sizes(path: Path):
    text = path.read_text()
    lines = text.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(REPO)}: {lines} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{path.relative_to(REPO)}: class {node.name} has {size} lines"
