"""The layout's rules (shared/ARCHITECTURE.md), checked on the source:

* stages (``convert/``, ``passes/``, ``targets/``) import only the core helpers, never the
  pipeline, verify, bench, recipes, runs or the CLI; ``passes`` and ``convert`` never import a
  target;
* ``mconv/`` reaches the targets only through their registry and interface
  (``mconv.targets``, ``.base``, ``.options``) and the passes through ``mconv.passes``;
* nothing in ``mconv/`` names a specific target or a target's option in its code (comments
  and docstrings may mention runtimes);
* (no import circles: ``test_layout.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mconv.targets import all_targets, declared_options

ROOT = Path(__file__).resolve().parents[2]
# mconv.<sub> -> folder in the tree
PACKAGES = {"mconv": ROOT / "mconv", "mconv.convert": ROOT / "convert", "mconv.passes": ROOT / "passes",
            "mconv.targets": ROOT / "targets"}  # fmt: skip
NOT_FOR_STAGES = ("mconv.pipeline", "mconv.cli", "mconv.verification", "mconv.benchmark", "mconv.recipe",
                  "mconv.runs", "mconv.demo", "mconv.api", "mconv.results")  # fmt: skip
TARGET_INTERFACE = ("mconv.targets", "mconv.targets.base", "mconv.targets.options")
# The onnx target is the interchange format every stage speaks; its name is not a backend's.
INTERCHANGE = {"onnx"}


def modules(package: str) -> dict[str, Path]:
    folder = PACKAGES[package]
    out = {}
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(folder).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join([package, *parts])] = path
    return out


def imports(path: Path, name: str) -> set[str]:
    """Every mconv module ``path`` imports, at any depth (lazy imports included)."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m == "mconv" or m.startswith("mconv.")}


def all_modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        out.update(modules(package))
    return out


def core_modules() -> dict[str, Path]:
    stages = ("mconv.convert", "mconv.passes", "mconv.targets")
    return {m: p for m, p in modules("mconv").items() if not m.startswith(stages)}


def known(mods: dict[str, Path], imported: set[str]) -> set[str]:
    """Keep the names that are modules (``from a import b`` where b is a function is a)."""
    return {m for m in imported if m in mods}


@pytest.mark.parametrize("stage", ["mconv.convert", "mconv.passes", "mconv.targets"])
def test_stages_import_only_helpers(stage):
    mods = all_modules()
    bad = []
    for name, path in modules(stage).items():
        for m in known(mods, imports(path, name)):
            if m.startswith(NOT_FOR_STAGES) or (stage != "mconv.targets" and m.startswith("mconv.targets")):
                bad.append(f"{path.relative_to(ROOT)} imports {m}")
            if stage == "mconv.targets" and m.startswith("mconv.convert"):
                bad.append(f"{path.relative_to(ROOT)} imports {m}")
            if stage == "mconv.passes" and m.startswith("mconv.convert"):
                bad.append(f"{path.relative_to(ROOT)} imports {m}")
    assert not bad, "\n".join(bad)


def test_core_reaches_targets_and_passes_through_registries():
    mods = all_modules()
    bad = []
    for name, path in core_modules().items():
        for m in known(mods, imports(path, name)):
            if m.startswith("mconv.targets") and m not in TARGET_INTERFACE:
                bad.append(f"{path.relative_to(ROOT)} imports {m}")
            if m.startswith("mconv.passes."):
                bad.append(f"{path.relative_to(ROOT)} imports {m}")
    assert not bad, "\n".join(bad)


def _code_words(path: Path) -> set[str]:
    """Identifiers, attribute names and string constants outside docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    words: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words |= set(_split(node.value))
        elif isinstance(node, ast.Name):
            words.add(node.id.lower())
        elif isinstance(node, ast.Attribute):
            words.add(node.attr.lower())
        elif isinstance(node, ast.keyword) and node.arg:
            words.add(node.arg.lower())
    return words


def _split(text: str) -> list[str]:
    import re

    return [w.lower() for w in re.findall(r"[A-Za-z0-9_]+", text)]


def test_core_names_no_target_and_no_target_option():
    names = set()
    for e in all_targets():
        if e.source == "builtin":
            cls = e.load()
            names |= {cls.name, *cls.aliases}
    names |= {"tensorrt"}  # the registry's alias ("ov" is too common a word to check)
    names -= INTERCHANGE
    options = {name for name in declared_options() if "_" in name}  # calib_method, int8_preset, ...
    options |= {"workspace", "profiles", "plugins"}
    bad = []
    for path in core_modules().values():
        words = _code_words(path)
        for w in sorted(words & names):
            bad.append(f"{path.relative_to(ROOT)} names target '{w}'")
        for w in sorted(words & options):
            bad.append(f"{path.relative_to(ROOT)} names target option '{w}'")
    assert not bad, "\n".join(bad)
