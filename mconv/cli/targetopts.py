"""Target options on the command line, derived from the targets' declarations.

``mconv build --option KEY=VALUE`` reaches any option a target declares (a plugin's too).
A declared ``flag`` (``--calib-method``, ``--workspace``, ...) is a spelling of the same
option: :func:`rewrite_flags` turns it into ``--option`` before the command line is parsed,
and :func:`help_epilog` lists every declared option under ``mconv build --help``. Nothing
here names a target or an option.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mconv.errors import UsageError

COMMANDS = ("build",)  # the commands that take target options


@dataclass
class Declared:
    """One option name as all loadable targets declare it."""

    name: str
    flag: str | None
    kind: str
    metavar: str
    help: str
    targets: list[str] = field(default_factory=list)


def declared_options() -> list[Declared]:
    """Every option of every loadable target, merged by name (first declaration wins)."""
    from mconv.targets import declared_options as by_name

    out = []
    for name, owners in by_name().items():
        s = owners[0][1]
        out.append(Declared(name, s.flag, s.kind, s.metavar, s.help, [t for t, _ in owners]))
    return out


def rewrite_flags(args: list[str], reserved: set[str]) -> list[str]:
    """``args`` with declared target flags turned into ``--option NAME=VALUE``.

    For a command in :data:`COMMANDS`; flags in ``reserved`` (the command's own options) are
    never taken, so a plugin cannot shadow them.
    """
    flags = {d.flag: d for d in declared_options() if d.flag and d.flag not in reserved}
    out = [args[0]]
    i = 1
    while i < len(args):
        a = args[i]
        if a == "--":
            out += args[i:]
            break
        flag, eq, value = a.partition("=")
        d = flags.get(flag)
        if d is None:
            out.append(a)
        elif d.kind == "bool" and not eq:
            out += ["--option", f"{d.name}=true"]
        elif eq:
            out += ["--option", f"{d.name}={value}"]
        elif i + 1 < len(args):
            out += ["--option", f"{d.name}={args[i + 1]}"]
            i += 1
        else:
            raise UsageError(f"{flag} needs a value ({d.metavar})")
        i += 1
    return out


def help_epilog() -> str:
    """The "target options" section of ``mconv build --help``."""
    lines = ["\b", "Target options (--option KEY=VALUE, or the flag; `mconv targets NAME` for details):"]
    for d in declared_options():
        spelled = f"{d.flag} {d.metavar}" if d.flag else f"--option {d.name}={d.metavar}"
        lines.append(f"  {spelled:32s} [{', '.join(d.targets)}] {d.help}")
    return "\n".join(lines)
