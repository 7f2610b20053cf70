"""Config files: every TOML the project reads (recipes, qualify configs, nightly matrices, budgets)
is read here, under one set of limits, so that no reader can be crashed or swamped by its input.

The limits fit the shipped files with a wide margin (a recipe is ~2 KB, nests 4 levels and holds 4
stages); anything far beyond is a mistake or an attack. They are checked on the text's size before
it is parsed, on the parser's recursion (``tomllib`` is recursive in nested arrays and inline
tables: 1,000 ``[`` raise RecursionError), and on the parsed data before anything is built from it.
Every failure is the caller's error class (RecipeError, UsageError, BudgetError: exit 2), one line
naming the file.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Mapping

from .errors import DeepCompressError, UsageError

MAX_BYTES = 1 << 20         # 1 MiB
MAX_STRING = 4096           # characters in any string value or key
MAX_DEPTH = 16              # tables and arrays nested in one another
MAX_ENTRIES = 1000          # entries in one table or array (per-layer overrides, kwargs)
# tomllib's time grows with the square of a dotted key's parts (a 42 KB file with a key of 20,000
# parts took 13 s): a key of more parts than this is refused before parsing. Past MAX_DEPTH parts
# it would be refused after parsing anyway; the margin keeps prose in strings out of the way.
MAX_KEY_PARTS = 64
_LONG_KEY = re.compile(r"""(?<![A-Za-z0-9_-])(?:(?:[A-Za-z0-9_-]++|"(?:[^"\\\n]|\\.)*+"|'[^'\n]*+')"""
                       r"[ \t]*+\.[ \t]*+){%d}" % MAX_KEY_PARTS)   # possessive: linear time

ErrorType = type[DeepCompressError]


def check_limits(value: Any, path: str = "", depth: int = 0, *,
                 error: ErrorType = UsageError, root: str = "file") -> None:
    """Refuse data nested too deep, strings too long, tables or arrays too large; ``path`` names
    where ``value`` sits (``stages[1].bits``), ``root`` the whole when ``path`` is empty."""
    where = path or root
    if depth > MAX_DEPTH:
        raise error(f"{where}: nested more than {MAX_DEPTH} tables or arrays deep")
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise error(f"{where}: a string of {len(value):,} characters; at most "
                        f"{MAX_STRING:,} are allowed")
    elif isinstance(value, (Mapping, list, tuple)):
        if len(value) > MAX_ENTRIES:
            raise error(f"{where}: {len(value):,} entries; at most {MAX_ENTRIES:,} are allowed")
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and len(key) > MAX_STRING:
                raise error(f"{where}: a key of {len(key):,} characters; at most "
                            f"{MAX_STRING:,} are allowed")
            sub = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)
            check_limits(item, sub, depth + 1, error=error, root=root)


def loads(text: str, where: str, *, error: ErrorType = UsageError) -> dict[str, Any]:
    """Parse TOML ``text`` (``where``: the file, for messages) and check the limits."""
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise error(f"{where}: larger than {MAX_BYTES // 1024} KiB; a config is a few KB of "
                    "settings")
    if any(line.count(".") >= MAX_KEY_PARTS and _LONG_KEY.search(line)
           for line in text.splitlines()):
        raise error(f"{where}: a dotted key of more than {MAX_KEY_PARTS} parts (tables nest at "
                    f"most {MAX_DEPTH} deep)")
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise error(f"{where}: tables or arrays nested too deeply to read (at most "
                    f"{MAX_DEPTH})") from None
    except (ValueError, TypeError) as exc:   # TOMLDecodeError; a surrogate or NUL it did not expect
        raise error(f"{where}: not valid TOML ({exc})") from None
    try:   # check_limits stops at MAX_DEPTH: it never recurses deep enough to fail itself
        check_limits(data, error=error)
    except DeepCompressError as exc:
        raise error(f"{where}: {exc}") from None
    return data


def read(path: str | Path, what: str, *, error: ErrorType = UsageError
         ) -> tuple[dict[str, Any], str]:
    """Read and parse the TOML file ``path`` (``what``: "recipe", "config", ... for messages);
    return the data and the text it was parsed from (read once: the text a run saves is the
    text it parsed, even if the file changes meanwhile). Only a regular file is read, and never
    more than the limit: a device or a FIFO named as a config is refused, not read forever."""
    p = Path(path)
    try:
        if not p.exists():
            raise error(f"{what} {p} does not exist")
        if p.is_dir():
            raise error(f"{what} {p} is a folder; give a .toml file")
        if not p.is_file():
            raise error(f"{what} {p} is not a regular file; give a .toml file")
        if p.stat().st_size > MAX_BYTES:
            raise error(f"{p}: larger than {MAX_BYTES // 1024} KiB; a {what} is a few KB of "
                        "settings")
        with p.open(encoding="utf-8") as fh:
            text = fh.read(MAX_BYTES + 1)
    except UnicodeDecodeError as exc:
        raise error(f"{p}: not a text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{what} {p}: cannot read it ({exc.strerror or exc})") from None
    return loads(text, str(p), error=error), text
