"""The code's shape: short functions, blueprints that do not import each other, a
contract package without torch or Flask, object keys spelled in one place."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "shared", "worker", "client")
MAX_LINES = 50


def modules(*packages: str) -> list[Path]:
    found = {pkg: sorted((ROOT / pkg).rglob("*.py")) for pkg in packages}
    assert all(found.values()), f"no Python files in {[pkg for pkg, files in found.items() if not files]}"
    return [p for files in found.values() for p in files]


def imported(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_the_scan_fails_where_it_finds_no_file():
    assert len(modules(*PACKAGES)) > 50
    with pytest.raises(AssertionError, match="no_such_package"):
        modules("api", "no_such_package")


def test_no_function_is_longer_than_fifty_lines():
    long = []
    for path in modules(*PACKAGES):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_blueprints_do_not_import_each_other():
    blueprints = {p.stem for p in modules("api") if re.search(r"^bp = Blueprint\(", p.read_text(), re.MULTILINE)}
    assert {"jobs", "models", "audits", "ui", "health"} <= blueprints
    for path in modules("api"):
        if path.stem == "__init__":
            continue
        names = imported(ast.parse(path.read_text()))
        others = {b for b in blueprints - {path.stem} if f"api.{b}" in names}
        assert not others, f"{path.name} imports the blueprint module(s) {others}"


@pytest.mark.parametrize("path", modules("shared"), ids=lambda p: p.name)
def test_the_contract_package_needs_no_torch_and_no_flask(path):
    names = imported(ast.parse(path.read_text()))
    assert not {n for n in names if n.split(".")[0] in ("torch", "flask", "api", "worker")}, path.name


def test_object_keys_are_spelled_only_in_shared_storage():
    pattern = re.compile(r"""["'](?:[^"']*/)?(?:model\.json|item\.json|job\.json|report\.(?:json|html))["']|"""
                         r"""f?["'](?:models|inputs|jobs|audits|tenants|uploads)/""")
    found = []
    for path in modules("api", "worker") + [p for p in modules("shared") if p.name != "storage.py"]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and not line.lstrip().startswith(("#", "@bp.")):   # a route is no key
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, found


def test_redis_keys_are_spelled_only_in_shared_redis_keys():
    """A key is a `RedisKeys` method: no module builds one from the prefix or spells 'xaiq:'."""
    pattern = re.compile(r"""prefix\}:|["']xaiq:|:(?:job|usage|tenant|pending|leases|active|cancelling|stats)(?::|["'])""")
    found = []
    for path in [p for p in modules(*PACKAGES) if p.name != "redis_keys.py"]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and not line.lstrip().startswith("#"):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, found
    assert pattern.search((ROOT / "shared" / "redis_keys.py").read_text()), "the pattern finds the keys where they are"
