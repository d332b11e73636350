"""Repository rules: file line budgets and the dependency rule of ARCHITECTURE.md, checked on the source."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.name.removeprefix("tinylm-") for p in (ROOT / "packages").iterdir() if p.is_dir())
SOURCE_BUDGET, APP_BUDGET = 400, 150
# Which tinylm packages each package may import (the DAG: kernels <- core <- siblings).
ALLOWED = {"kernels": {"kernels"}, "core": {"kernels", "core"}}


def python_files(*dirs: Path) -> list[Path]:
    return sorted(f for d in dirs if d.exists() for f in d.rglob("*.py"))


def test_source_files_fit_the_line_budget():
    too_long = [
        f"{f.relative_to(ROOT)}: {n} lines"
        for f in python_files(
            *(ROOT / "packages").glob("*/src"), *(ROOT / "packages").glob("*/tests"), ROOT / "tests"
        )
        if (n := len(f.read_text().splitlines())) > SOURCE_BUDGET
    ]
    assert not too_long, f"files over {SOURCE_BUDGET} lines: {too_long}"


def test_apps_fit_the_line_budget():
    too_long = [
        f"{f.relative_to(ROOT)}: {n} lines"
        for f in python_files(ROOT / "apps")
        if (n := len(f.read_text().splitlines())) > APP_BUDGET
    ]
    assert not too_long, f"apps over {APP_BUDGET} lines: {too_long}"


def imported_modules(file: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_dependency_rule(package):
    allowed = ALLOWED.get(package, {"kernels", "core", package})
    bad = []
    for f in python_files(ROOT / "packages" / f"tinylm-{package}" / "src"):
        for mod in imported_modules(f):
            top = mod.split(".")
            if top[0] == "tinylm" and len(top) > 1 and top[1] not in allowed:
                bad.append(f"{f.relative_to(ROOT)} imports {mod}")
            if top[0] in ("hydra", "omegaconf"):
                bad.append(f"{f.relative_to(ROOT)} imports {mod} (only apps/ may use Hydra)")
    assert not bad, bad


def test_namespace_package_has_no_top_level_init():
    assert not list((ROOT / "packages").glob("*/src/tinylm/__init__.py"))
