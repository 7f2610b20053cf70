"""Writing a recipe as TOML, with comments: what the autotuner hands back.

Only what a recipe holds: tables, ``[[stages]]``, the stages' ``by_type`` / ``by_name`` tables,
strings, numbers, booleans, arrays and inline tables (a model's kwargs). ``comments`` maps a
path (``("stages", 0, "by_name", "fc1")`` for a table, the same plus a key for a value) to the
comment written before it (a table) or after it (a value). The text reads back with ``tomllib``
to the same data (a test pins it).
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"a recipe holds finite numbers only, got {v}")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)     # a TOML basic string: JSON's escapes are TOML's
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }" \
            if v else "{}"
    raise TypeError(f"cannot write {type(v).__name__} into a recipe")


def _comment(text: str | None, indent: str = "") -> list[str]:
    if not text:
        return []
    return [f"{indent}# {line}".rstrip() for line in text.splitlines()]


def _is_table(v: Any) -> bool:
    return isinstance(v, Mapping)


def _emit_table(lines: list[str], header: str | None, data: Mapping[str, Any],
                path: tuple, comments: Mapping[tuple, str], array: bool = False) -> None:
    scalars = {k: v for k, v in data.items() if not _is_table(v) or _inline(path + (k,))}
    tables = {k: v for k, v in data.items() if k not in scalars}
    if header is not None:
        lines.append("")
        lines += _comment(comments.get(path))
        lines.append(f"[[{header}]]" if array else f"[{header}]")
    for k, v in scalars.items():
        c = comments.get(path + (k,))
        lines.append(f"{key(k)} = {value(v)}" + (f"  # {c}" if c and "\n" not in c else ""))
        if c and "\n" in c:
            lines += _comment(c)
    for k, v in tables.items():
        sub = f"{header}.{key(k)}" if header else key(k)
        _emit_table(lines, sub, v, path + (k,), comments)


def _inline(path: tuple) -> bool:
    """Tables written inline: a model's kwargs (free-form), a task's free tables."""
    return path[-1:] == ("kwargs",)


def dumps(recipe: Mapping[str, Any], comments: Mapping[tuple, str] | None = None,
          header: str | None = None) -> str:
    """The recipe dict as TOML text (``header``: a comment at the top)."""
    comments = comments or {}
    lines = _comment(header)
    top = {k: v for k, v in recipe.items() if k != "stages"}
    _emit_table(lines, None, top, (), comments)
    for i, stage in enumerate(recipe.get("stages") or []):
        _emit_table(lines, "stages", stage, ("stages", i), comments, array=True)
    return "\n".join(lines).lstrip("\n") + "\n"
