"""Import rules of the package layout: no import circles between mconv's own modules
(counting the imports inside functions too), and the CLI as a package whose modules
share no private names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "mconv"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import statement in the file, at any depth (those
    under ``if TYPE_CHECKING:`` are annotations only and do not count)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for top in ast.walk(tree)
        if isinstance(top, ast.If) and isinstance(top.test, ast.Name) and top.test.id == "TYPE_CHECKING"
        for n in ast.walk(top)
    }
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def _graph() -> dict[str, set[str]]:
    """Edges between mconv/ modules (the stages convert/passes/targets are other folders)."""
    files = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        for target, names in _imports(path):
            cands = [f"{target}.{n}" for n in names] + [target]
            for c in cands:
                if c in files and c != mod:
                    graph[mod].add(c)
                    break
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_between_mconv_modules():
    # A package importing its own submodules (to register commands) is not a circle.
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in _graph().items()}
    assert _cycles(graph) == []


def test_the_rule_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_cli_modules_share_no_private_names():
    for path in (CORE / "cli").glob("*.py"):
        for target, names in _imports(path):
            if target.startswith("mconv.cli"):
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{path.name} imports private {private} from {target}"


def test_the_cli_is_a_package():
    assert (CORE / "cli" / "__init__.py").is_file()
    assert not (CORE / "cli.py").exists()
