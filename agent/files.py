"""Small file helpers of the run store: its error, atomic writes, pydantic's first complaint in a line."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import ValidationError


class StoreError(Exception):
    """A run directory that cannot be created, opened, read or written as asked."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a unique temp file + fsync + os.replace: the old file stays intact on any failure.

    The temp file is created with mode 0o666 minus the umask (mkstemp would leave 0o600)."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def first_problem(error: ValidationError) -> str:
    """The first of pydantic's complaints, short: 'rounds.0.index: ...' or 'not JSON'."""
    err = error.errors()[0]
    if err.get("type") == "json_invalid":
        return "not JSON: truncated or corrupt"
    loc = ".".join(str(x) for x in err.get("loc", ())) or "record"
    return f"{loc}: {err.get('msg', 'invalid')}".replace("Value error, ", "")[:200]
