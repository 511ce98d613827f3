"""The architecture, checked: deployment and serving never depend on training code, and no
module grows past ~400 lines without saying why in its docstring."""

import ast
import os

import pytest

from tests.conftest import ROOT

PKG = os.path.join(ROOT, "agilenn_jax")
NOT_TRAINING = ["deploy", "serving", "inference.py", "models", "layout.py", "checkpoint.py"]


def _modules(*parts):
    for part in parts:
        path = os.path.join(PKG, part)
        if path.endswith(".py"):
            yield path
            continue
        for d, _, files in os.walk(path):
            yield from (os.path.join(d, f) for f in files if f.endswith(".py"))


def _imports(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


@pytest.mark.parametrize("path", sorted(_modules(*NOT_TRAINING)), ids=os.path.basename)
def test_inference_side_never_imports_training(path):
    bad = [m for m in _imports(path) if m.startswith("agilenn_jax.training")]
    assert not bad, f"{os.path.relpath(path, ROOT)} imports {bad}"


@pytest.mark.parametrize("path", sorted(_modules("")), ids=lambda p: os.path.relpath(p, PKG))
def test_modules_stay_small(path):
    lines = open(path).read().count("\n")
    doc = ast.get_docstring(ast.parse(open(path).read())) or ""
    assert lines <= 420 or "over 400 lines" in doc, f"{path}: {lines} lines, no reason given"
