"""One way for every command to refuse bad input: exit codes, one-line messages, input checks.

Exit codes of every `refloop` command:
    0  every session done (or the command did what it was asked)
    1  a session failed or was left unfinished (and `world check`: the image does not satisfy the prompt)
    2  bad input or a refused start (another writer holds the run, say); nothing was written

`UsageError` carries a message for the user; `fail` prints it as one line on stderr and returns the
typer.Exit to raise. The checks below (files, numbers, ids, configs) raise UsageError with messages
that name the input and say what to do; long inputs are shortened, pydantic's and the OS's wording
is translated.
"""

from __future__ import annotations

import errno
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

OK, FAILED, BAD_INPUT = 0, 1, 2
EXIT_CODES_HELP = ("Exit status: 0 every session done; 1 a session failed or was left unfinished; "
                   "2 bad input or a refused start (nothing written).")
LONG = 60  # characters of an input quoted in a message before it is shortened


class UsageError(ValueError):
    """Bad input, worded for the user (one line, names the input, says what to do)."""


def short(text: object, limit: int = LONG) -> str:
    """`text` quoted, cut to about `limit` characters with its length when longer."""
    s = str(text)
    if len(s) <= limit:
        return repr(s)
    return repr(s[: limit - 20]) + f"... ({len(s):,} characters)"


_QUOTED = re.compile(rf"'[^'\n]{{{LONG + 1},}}'|\"[^\"\n]{{{LONG + 1},}}\"")


def one_line(message: str, limit: int = 400) -> str:
    """A message on one line, long quoted inputs shortened, at most about `limit` characters."""
    text = " ".join(str(message).split())
    text = _QUOTED.sub(lambda m: short(m.group(0)[1:-1]), text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fail(message: object, code: int = BAD_INPUT) -> typer.Exit:
    """Print `error: MESSAGE` on stderr (one line, no markup) and return the Exit to raise."""
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {_escape(one_line(str(message)))}",
                                               highlight=False)
    return typer.Exit(code)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@contextmanager
def refusals(*kinds: type[BaseException]) -> Iterator[None]:
    """Turn UsageError (and the StoreError/RunBusy of the store, and any of `kinds`) into exit 2."""
    from agent.lock import RunBusy
    from agent.store import StoreError

    try:
        yield
    except (UsageError, StoreError, RunBusy, *kinds) as e:
        raise fail(e) from None
    except OSError as e:
        raise fail(os_message(e)) from None


def exit_status(records) -> int:
    """0 when every session is done, 1 when one failed or is unfinished."""
    return OK if all(getattr(r, "status", None) == "done" for r in records) else FAILED


# -- the OS's errors, in words -----------------------------------------------------------------

_WORDS = {errno.ENOENT: "does not exist", errno.EISDIR: "is a directory, not a file",
          errno.ENOTDIR: "is not a directory (a file is in the way)",
          errno.EACCES: "is not accessible (permission denied)",
          errno.EPERM: "is not accessible (operation not permitted)",
          errno.ENOSPC: "cannot be written: the disk is full",
          errno.EROFS: "cannot be written: read-only file system", errno.EEXIST: "already exists",
          errno.ENAMETOOLONG: "has a name too long for the file system", errno.ENOTEMPTY: "is not empty"}


def os_message(e: OSError, path: object = None, what: str = "") -> str:
    """'PATH does not exist' rather than '[Errno 2] No such file or directory: ...'."""
    where = path if path is not None else (e.filename or "a file")
    words = _WORDS.get(e.errno, e.strerror.lower() if e.strerror else "cannot be used")
    return f"{what + ' ' if what else ''}{where} {words}"


# -- files ---------------------------------------------------------------------------------------


def read_text(path: Path, what: str, allow_empty: bool = False) -> str:
    """A UTF-8 text file, or UsageError naming `what` (e.g. '--prompts file')."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist; check the path")
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory; give a file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(os_message(e, path, what)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    if not allow_empty and not text.strip():
        raise UsageError(f"{what} {path} is empty")
    return text


def read_json_objects(path: Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file; each line must be a JSON object."""
    rows = []
    for n, line in enumerate(read_text(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{what} {path}, line {n}: not JSON ({e.msg}); write one JSON object a line") from None
        if not isinstance(row, dict):
            raise UsageError(f"{what} {path}, line {n}: expected a JSON object like {{\"prompt\": ...}}, "
                             f"got {type(row).__name__ if not isinstance(row, list) else 'a list'}")
        rows.append((n, row))
    return rows


def read_yaml_mapping(path: Path, what: str = "config") -> dict[str, Any]:
    import yaml

    text = read_text(path, what, allow_empty=True)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise UsageError(f"{what} {path}{where}: {problem}; fix the YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path}: expected settings (a YAML mapping) at the top level, "
                         f"got {type(data).__name__}")
    return data


def check_new_out(out: Path, what: str = "--out") -> None:
    """A new output file: not a directory, in a folder that exists or can be made."""
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{what} {out} is a directory; give a file name like {out / 'image.png'}")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"{what} {out}: {parent} is a file, not a folder")


# -- numbers, ids, text ------------------------------------------------------------------------


def check_finite(name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value}")


def check_range(name: str, value: int | float | None, lo: float, hi: float) -> None:
    if value is None:
        return
    check_finite(name, float(value))
    if not lo <= value <= hi:
        raise UsageError(f"{name} must be between {lo:g} and {hi:g}, got {value:g}")


def check_whole(name: str, value: Any, lo: int, hi: int) -> int:
    """A JSON/YAML value that must be a whole number in [lo, hi] (not a bool, not 1.5)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and (not math.isfinite(value) or not value.is_integer())):
        raise UsageError(f"{name} must be a whole number, got {short(value)}")
    value = int(value)
    if not lo <= value <= hi:
        raise UsageError(f"{name} must be between {lo:,} and {hi:,}, got {value:,}")
    return value


def non_finite(data: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN or infinity in nested dicts/lists, or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return path or "value"
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list | tuple):
        items = enumerate(data)
    else:
        return None
    for key, value in items:
        found = non_finite(value, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


# -- pydantic's errors, in words ---------------------------------------------------------------

def plain_errors(error, what: str) -> str:
    """A pydantic ValidationError as 'WHAT: a.b must be ...; c is not a known setting'."""
    parts = []
    for err in error.errors()[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if not str(x).startswith("function-")) or "value"
        parts.append(f"{loc} {_plain(err)}")
    more = len(error.errors()) - 3
    return f"{what}: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _plain(err: dict) -> str:
    kind, ctx, value = err.get("type", ""), err.get("ctx") or {}, err.get("input")
    shown = short(value, 40) if isinstance(value, str) else repr(value) if isinstance(value, int | float) else ""
    got = f", got {shown}" if shown and kind not in ("missing", "extra_forbidden") else ""
    words = {
        "missing": "is required",
        "extra_forbidden": "is not a known setting; check its spelling",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "greater_than": f"must be more than {ctx.get('gt')}",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "less_than": f"must be less than {ctx.get('lt')}",
        "finite_number": "must be a finite number",
        "literal_error": f"must be one of {ctx.get('expected')}",
        "union_tag_invalid": f"must be one of {ctx.get('expected_tags')}",
        "union_tag_not_found": "needs a 'kind'",
        "too_long": f"must have at most {ctx.get('max_length')} items",
        "too_short": f"must have at least {ctx.get('min_length')} items",
        "bool_parsing": "must be true or false", "bool_type": "must be true or false",
        "string_type": "must be text", "dict_type": "must be a mapping of settings",
        "model_type": "must be a mapping of settings", "list_type": "must be a list",
    }
    if kind in words:
        return words[kind] + got
    if kind.startswith("int_"):
        return "must be a whole number" + got
    if kind.startswith("float_"):
        return "must be a number" + got
    msg = str(err.get("msg", "is not valid"))
    msg = re.sub(r"^(Value|Assertion) error, ", "", msg)
    return "is not valid: " + msg[0].lower() + msg[1:] if msg else "is not valid"
