"""Recipe YAML: safe loading within limits (aliases, expanded size, duplicate keys), the
line of every key path, ``--set`` overrides, and the locator that gives an error its line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from mconv.errors import UsageError
from mconv.recipe.errors import RecipeError
from mconv.recipe.schema import ALL_KEYS

MAX_BYTES = 1 << 20
MAX_ALIASES = 100
MAX_NODES = 20_000


class _Limit(Exception):
    def __init__(self, problem: str, line: int | None, path: tuple[str, ...] = ()) -> None:
        super().__init__(problem)
        self.problem, self.line, self.path = problem, line, path


class _Loader(yaml.SafeLoader):
    """SafeLoader that counts aliases while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_count = 0

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            self.alias_count += 1
            if self.alias_count > MAX_ALIASES:
                line = self.peek_event().start_mark.line + 1
                raise _Limit(f"more than {MAX_ALIASES} YAML aliases; refusing a possible alias bomb", line)
        return super().compose_node(parent, index)


def _check_size(node: yaml.Node) -> None:
    """Expanded node count (aliases counted each time they are used), linear time via memo."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node, path: tuple[str, ...]) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        if key in active:
            raise _Limit("a recursive YAML alias; refusing it", n.start_mark.line + 1, path)
        active.add(key)
        total = 1
        if isinstance(n, yaml.MappingNode):
            total += sum(size(k, path) + size(v, (*path, str(k.value))) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            total += sum(size(c, (*path, str(i))) for i, c in enumerate(n.value))
        active.discard(key)
        memo[key] = total
        if total > MAX_NODES:
            raise _Limit(
                f"more than {MAX_NODES} YAML nodes once aliases are expanded; refusing an alias bomb",
                n.start_mark.line + 1,
                path,
            )
        return total

    size(node, ())


def _check_duplicates(node: yaml.Node, path: tuple[str, ...], seen: set[int]) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: dict[str, int] = {}
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value != "<<":
                if k.value in keys:
                    raise _Limit(
                        f"duplicate key '{k.value}' (first at line {keys[k.value]})",
                        k.start_mark.line + 1,
                        (*path, str(k.value)),
                    )
                keys[k.value] = k.start_mark.line + 1
            _check_duplicates(v, (*path, str(k.value)), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, c in enumerate(node.value):
            _check_duplicates(c, (*path, str(i)), seen)


def _line_map(node: yaml.Node) -> dict[tuple[str, ...], int]:
    """Key path (strings, list indices as digits) -> 1-based line of the key or item."""
    lines: dict[tuple[str, ...], int] = {(): node.start_mark.line + 1}

    def walk(n: yaml.Node, path: tuple[str, ...], depth: int) -> None:
        if depth > 64:
            return
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                p = (*path, str(k.value))
                lines[p] = k.start_mark.line + 1
                walk(v, p, depth + 1)
        elif isinstance(n, yaml.SequenceNode):
            for i, c in enumerate(n.value):
                p = (*path, str(i))
                lines[p] = c.start_mark.line + 1
                walk(c, p, depth + 1)

    walk(node, (), 0)
    return lines


def parse_yaml(text: str, file: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    try:
        loader = _Loader(text)  # the reader already rejects binary content here
    except yaml.YAMLError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RecipeError(file, None, "", f"not a YAML recipe ({first})") from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise RecipeError(file, 1, "", "the file is empty; a recipe starts with `version: 1`")
        _check_size(node)
        _check_duplicates(node, (), set())
        data = loader.construct_document(node)
        return data, _line_map(node)
    except _Limit as e:
        raise RecipeError(file, e.line, ".".join(e.path) or "(top level)", e.problem) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        raise RecipeError(file, line, "", f"invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RecipeError(file, None, "", f"invalid YAML: {first}") from None
    except RecursionError:
        raise RecipeError(file, None, "", "YAML nested too deeply") from None
    finally:
        loader.dispose()


@dataclass(frozen=True)
class Override:
    """``--set key.path=value``; the value is parsed as a YAML scalar or flow collection."""

    path: tuple[str, ...]
    value: Any
    text: str


def parse_override(text: str) -> Override:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise UsageError(f"--set '{text}': expected key.path=value, e.g. targets.0.precision=fp16")
    try:
        value = yaml.load(raw, Loader=yaml.SafeLoader) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise UsageError(f"--set '{text}': the value is not valid YAML ({e})") from None
    return Override(tuple(key.split(".")), value, text)


def apply_override(data: dict[str, Any], ov: Override, file: str) -> None:
    cur: Any = data
    for i, part in enumerate(ov.path):
        last = i == len(ov.path) - 1
        where = ".".join(ov.path[: i + 1])
        if isinstance(cur, list):
            if not part.isdigit() or int(part) >= len(cur):
                raise RecipeError(
                    file, None, f"--set {'.'.join(ov.path)}", f"'{where}' is not an item of a list of {len(cur)}"
                )
            if last:
                cur[int(part)] = ov.value
            else:
                cur = cur[int(part)]
        elif isinstance(cur, dict):
            if last:
                cur[part] = ov.value
            else:
                if cur.get(part) is None:
                    cur[part] = {}
                cur = cur[part]
        else:
            raise RecipeError(file, None, f"--set {'.'.join(ov.path)}", f"'{where}' is inside a scalar value")


class KeyLocator:
    """Where a key path is: its line in the file, or the ``--set`` that gave its value."""

    def __init__(self, file: str, lines: dict[tuple[str, ...], int], data: Any, overridden: list[Override]) -> None:
        self.file, self.lines, self.data = file, lines, data
        self.overridden = [o.path for o in overridden]

    def keypath(self, loc: tuple[Any, ...]) -> tuple[str, ...]:
        """Drop pydantic's union/tag elements: keep what exists in the data."""
        out: list[str] = []
        cur = self.data
        for el in loc:
            if isinstance(cur, dict) and (el in cur or str(el) in {str(k) for k in cur}):
                key = el if el in cur else next(k for k in cur if str(k) == str(el))
                out.append(str(el))
                cur = cur[key]
            elif isinstance(cur, list) and isinstance(el, int) and el < len(cur):
                out.append(str(el))
                cur = cur[el]
            elif isinstance(el, str) and el in ALL_KEYS and isinstance(cur, dict):
                out.append(el)  # a missing key: name it, at its parent's line
                cur = None
            else:
                continue
        return tuple(out)

    def fail(self, path: tuple[str, ...], problem: str) -> RecipeError:
        key = ".".join(path) or "(top level)"
        for op in self.overridden:
            if path[: len(op)] == op:
                return RecipeError(self.file, None, key, f"{problem} (set by --set {'.'.join(op)})")
        p = path
        while p not in self.lines and p:
            p = p[:-1]
        return RecipeError(self.file, self.lines.get(p), key, problem)
