"""Writing results safely: JSON-safe values and atomic file writes (temp file + rename).

One copy for the whole package: the result store, the ServerApp, the report and the attack
caches all write through these functions, so a reader sees the old file or the new one, never a
torn or empty one, and a full disk is one :class:`~fedattr.core.errors.NoSpaceError` naming the
file, with no temporary file left behind.
"""

from __future__ import annotations

import errno
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from fedattr.core.errors import NoSpaceError

__all__ = ["json_safe", "atomic_write_bytes", "atomic_write_text"]


def json_safe(obj: Any) -> Any:
    """``obj`` with every value JSON can hold: non-finite floats become None, dict keys str,
    tuples lists, numpy/torch arrays and scalars Python lists and numbers, other objects str."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy / torch arrays and scalars
        return json_safe(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return json_safe(obj.item())
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)  # anything else (a path, an enum, a detector's object) as its text


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a torn one.

    On any failure the temporary file is removed; a full disk raises NoSpaceError naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NoSpaceError(f"no space left on {path}") from exc
        raise
    try:
        # mkstemp creates 0600; results are ordinary files, readable as the umask allows.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise NoSpaceError(f"no space left on {path}") from exc
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path`` (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))
