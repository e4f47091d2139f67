"""Target options, declared once per target.

A target's ``Options`` is a dataclass subclass of :class:`TargetOptions`; each field is
declared with :func:`option` (type from the annotation, plus default, help, choices, the
precisions it applies to, an optional dedicated CLI flag, a parser). Everything else
derives from that declaration: ``mconv build --option KEY=VALUE`` and the legacy flags,
the recipe schema and its validation, ``mconv targets NAME``, and the typed value the
writer reads (``options.target.calib_method``)::

    @dataclass
    class Options(TargetOptions):
        calib_method: str = option("kl", help="...", choices=("kl", "minmax"), precisions=("int8",),
                                   flag="--calib-method")
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mconv.errors import UsageError

PRECISIONS = ("fp32", "fp16", "int8")
_META = "mconv_option"


@dataclass(frozen=True)
class OptionSpec:
    """What a field declares (read back by :meth:`TargetOptions.specs`)."""

    name: str
    kind: str  # "str" | "int" | "float" | "bool" | "list"
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    precisions: tuple[str, ...] = PRECISIONS
    flag: str | None = None
    parse: Callable[[Any], Any] | None = None
    path: bool = False  # a file path: recipes resolve it relative to the recipe's folder
    metavar: str = "VALUE"

    @property
    def key(self) -> str:
        """How users write it: ``--option calib_method=kl``."""
        return self.name

    def shown(self) -> str:
        """The option as the user wrote it, for messages."""
        return self.flag or f"--option {self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.kind,
            "default": self.default,
            "help": self.help,
            "choices": list(self.choices),
            "precisions": list(self.precisions),
            "flag": self.flag,
            "path": self.path,
        }

    def json_schema(self) -> dict[str, Any]:
        types = {"str": "string", "list": "string", "int": "integer", "float": "number", "bool": "boolean"}
        item: dict[str, Any] = {"type": types.get(self.kind)}
        if self.parse is not None:  # parsed values take text or the parser's own forms
            item = {}
        if self.choices:
            item = {"enum": list(self.choices)}
        schema = {"type": "array", "items": item} if self.kind == "list" else dict(item)
        only = "" if self.precisions == PRECISIONS else f" ({', '.join(self.precisions)} only)"
        schema["description"] = self.help + only
        if self.default not in (None, []):
            schema["default"] = self.default
        return {k: v for k, v in schema.items() if v is not None}

    def convert(self, value: Any, where: str) -> Any:
        """``value`` (CLI text or a recipe's YAML value) as this option's type."""
        if self.kind == "list":
            items = value if isinstance(value, (list, tuple)) else [value]
            return [self._one(v, where) for v in items]
        return self._one(value, where)

    def _one(self, value: Any, where: str) -> Any:
        if self.parse is not None:
            return self.parse(value)
        kind = "str" if self.kind == "list" else self.kind
        try:
            if kind == "bool":
                out = _boolean(value)
            elif kind == "int":
                out = int(value)
            elif kind == "float":
                out = float(value)
            else:
                out = str(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: '{value}' is not {'an' if kind == 'int' else 'a'} {kind}") from None
        if self.choices and out not in self.choices:
            raise UsageError(f"{where} '{value}': choose one of {', '.join(self.choices)}")
        return out


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def option(
    default: Any = None,
    *,
    help: str,
    choices: tuple[str, ...] = (),
    precisions: tuple[str, ...] = PRECISIONS,
    flag: str | None = None,
    parse: Callable[[Any], Any] | None = None,
    path: bool = False,
    metavar: str = "VALUE",
) -> Any:
    """Declare one target option (a dataclass field); list defaults are copied per instance."""
    meta = {
        _META: {
            "help": help,
            "choices": tuple(choices),
            "precisions": tuple(precisions),
            "flag": flag,
            "parse": parse,
            "path": path,
            "metavar": metavar,
        }
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


_KINDS = {str: "str", int: "int", float: "float", bool: "bool"}


def _kind_of(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        return "list"
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is not None and len(args) == 1:  # X | None
        return _kind_of(args[0])
    return _KINDS.get(hint, "str")


@dataclass
class TargetOptions:
    """Base of every target's options (a target with none uses it as is).

    ``given`` holds the names the user set explicitly, so a target can tell "left at the
    default" from "asked for the default".
    """

    given: frozenset[str] = field(default=frozenset(), repr=False, compare=False, metadata={"internal": True})

    _specs: ClassVar[dict[type, list[OptionSpec]]] = {}

    @classmethod
    def specs(cls) -> list[OptionSpec]:
        """The declared options, in declaration order."""
        if cls not in TargetOptions._specs:
            hints = typing.get_type_hints(cls)
            out = []
            for f in dataclasses.fields(cls):
                meta = f.metadata.get(_META)
                if meta is None:
                    continue
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                out.append(OptionSpec(f.name, _kind_of(hints[f.name]), default, **meta))
            TargetOptions._specs[cls] = out
        return TargetOptions._specs[cls]

    @classmethod
    def spec(cls, name: str) -> OptionSpec | None:
        return next((s for s in cls.specs() if s.name == name), None)

    @classmethod
    def from_values(
        cls,
        values: dict[str, Any] | None = None,
        *,
        target: str = "",
        precision: str | None = None,
        where: Callable[[OptionSpec | str], str] | None = None,
    ) -> TargetOptions:
        """Validate and convert ``values`` (name -> text or value) into an instance.

        Unknown names, wrong types or choices, and an option given for a precision it does
        not apply to are :class:`UsageError`; ``where`` names the option in messages
        (default: its flag, else ``--option NAME``).
        """
        values = dict(values or {})
        name_of = where or (lambda s: s.shown() if isinstance(s, OptionSpec) else f"--option {s}")
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            spec = cls.spec(key)
            if spec is None:
                known = ", ".join(s.name for s in cls.specs()) or "none"
                raise UsageError(
                    f"{name_of(key)}: target '{target}' has no option '{key}' "
                    f"(its options: {known}; see `mconv targets {target}`)"
                )
            if precision is not None and precision not in spec.precisions:
                raise UsageError(
                    f"{name_of(spec)}: applies to {', '.join(spec.precisions)} builds of '{target}', "
                    f"not {precision}; drop it or change the precision"
                )
            if isinstance(value, list) and spec.kind != "list":
                raise UsageError(f"{name_of(spec)}: given more than once; give it once")
            kwargs[key] = spec.convert(value, name_of(spec))
        return cls(given=frozenset(kwargs), **kwargs)

    def to_json(self) -> dict[str, Any]:
        return {s.name: getattr(self, s.name) for s in self.specs()}


def parse_assignments(items: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` from ``--option``; a key given again collects a list."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"--option '{item}': expected KEY=VALUE, e.g. --option calib_method=minmax")
        if key in out:
            prev = out[key]
            out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[key] = value
    return out
