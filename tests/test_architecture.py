"""The import rules of docs/architecture.md hold, and the checks that enforce them do catch a break.

The rules are import-linter contracts in pyproject.toml (``make lint`` runs them too). Here they
run on the real tree, then on a copy with one violation of each rule planted, which must fail.
A second check walks the syntax tree of src/ and tests/ for uses of another module's
underscore-private names.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

pytest.importorskip("importlinter", reason="import-linter is a dev dependency")


def lint_imports(src: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter on the ``imgclf`` package found in ``src`` (in a fresh interpreter)."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(config)!r}, no_cache=True, no_logo=True))")
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([sys.executable, "-c", code], cwd=config.parent, env=env, capture_output=True,
                          text=True, timeout=300)


def contract_names() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [c["name"] for c in config["tool"]["importlinter"]["contracts"]]


def test_the_import_contracts_hold():
    out = lint_imports(SRC, ROOT / "pyproject.toml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(contract_names())} kept, 0 broken" in out.stdout


# One planted violation per contract, keyed by a word of the contract's name.
VIOLATIONS = {
    "floor": ("images.py", "import imgclf.package\n"),
    "imports only": ("server/planted.py", "import imgclf.samples\n"),
    "never reaches torch": ("server/planted_torch.py", "import imgclf.engines.torch\n"),
    "torch-free": ("data/planted.py", "import torch\n"),
    "Bulk": ("bulk/planted.py", "import torch\n"),
    "commands": ("zoo/planted.py", "from imgclf.commands import predict\n"),
    "feedback store": ("feedback/planted.py", "import imgclf.server\n"),
}


def test_each_contract_fails_when_its_rule_is_broken(tmp_path):
    names = contract_names()
    assert len(VIOLATIONS) == len(names)
    shutil.copytree(SRC / "imgclf", tmp_path / "src" / "imgclf",
                    ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for rel, line in VIOLATIONS.values():
        target = tmp_path / "src" / "imgclf" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.parent / "__init__.py").touch()  # a package planted whole where none exists yet
        target.write_text((target.read_text() if target.exists() else "") + line)
    out = lint_imports(tmp_path / "src", tmp_path / "pyproject.toml")
    assert out.returncode != 0
    report = " ".join(out.stdout.split())  # import-linter wraps long names
    for key in VIOLATIONS:
        (name,) = [n for n in names if key in n]
        assert f"{' '.join(name.split())} BROKEN" in report, (name, out.stdout)
    assert f"0 kept, {len(names)} broken" in report


# -- underscore-private names ------------------------------------------------------------------

# Uses that predate this rule, in files still to be moved to public names. The test fails on any
# new one, and on an entry here that no longer occurs (so the list only shrinks).
KNOWN_PRIVATE_USES: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC if path.is_relative_to(SRC) else ROOT / "tests").with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _local_modules() -> set[str]:
    mods = {_module_name(p) for p in SRC.rglob("*.py")}
    return mods | {_module_name(p) for p in (ROOT / "tests").glob("*.py")}


def private_uses(path: Path, local: set[str], source: str | None = None) -> list[str]:
    """``from m import _x``, ``m._x`` and ``setattr(m, "_x", ...)`` where ``m`` is another module of ours."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    text = path.read_text(encoding="utf-8") if source is None else source
    tree = ast.parse(text, filename=str(path))
    modules: dict[str, str] = {}  # local name -> module it is bound to
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in local:
                    modules[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if base not in local:
                continue
            for a in node.names:
                if f"{base}.{a.name}" in local:
                    modules[a.asname or a.name] = f"{base}.{a.name}"
                elif _is_private(a.name) and base != here:
                    found.append(f"from {base} import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _is_private(node.attr):
            target = modules.get(node.value.id)
            if target is not None and target != here:
                found.append(f"{target}.{node.attr}")
        elif (isinstance(node, ast.Call) and len(node.args) >= 2 and isinstance(node.args[0], ast.Name)
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _is_private(node.args[1].value)
              and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) == "setattr"):
            target = modules.get(node.args[0].id)
            if target is not None and target != here:
                found.append(f"{target}.{node.args[1].value}")
    return found


def all_private_uses() -> set[tuple[str, str]]:
    local = _local_modules()
    files = sorted(SRC.rglob("*.py")) + sorted((ROOT / "tests").glob("*.py"))
    return {(str(f.relative_to(ROOT)), use) for f in files for use in private_uses(f, local)}


def test_no_module_uses_another_modules_private_names():
    uses = all_private_uses()
    new = sorted(uses - KNOWN_PRIVATE_USES)
    gone = sorted(KNOWN_PRIVATE_USES - uses)
    assert not new, "use the public name instead:\n" + "\n".join(f"{f}: {u}" for f, u in new)
    assert not gone, "no longer used; remove from KNOWN_PRIVATE_USES:\n" + "\n".join(f"{f}: {u}" for f, u in gone)


def test_the_private_name_check_catches_each_form():
    local = {"imgclf", "imgclf.zoo", "imgclf.zoo.registry", "imgclf.server", "imgclf.server.batcher"}
    planted = SRC / "imgclf" / "server" / "planted_check.py"
    source = (
        "from imgclf.zoo.registry import _REGISTRY, get\n"
        "from imgclf.zoo import registry as reg\n"
        "import imgclf.zoo.registry\n"
        "from . import batcher\n"
        "from ._x import y\n"
        "reg._load_families()\n"
        "batcher._Row\n"
        "setattr(reg, '_REGISTRY', {})\n"
        "def f(monkeypatch):\n"
        "    monkeypatch.setattr(batcher, '_Row', None)\n"
        "    return reg.__name__, get\n"
    )
    uses = private_uses(planted, local, source)
    assert sorted(uses) == sorted([
        "from imgclf.zoo.registry import _REGISTRY",
        "imgclf.zoo.registry._load_families",
        "imgclf.server.batcher._Row",
        "imgclf.zoo.registry._REGISTRY",
        "imgclf.server.batcher._Row",
    ])
