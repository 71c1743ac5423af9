"""Where results come from: the git commit of a source tree, for results and generated pages."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["git_commit"]


def git_commit(where: str | Path) -> str:
    """The commit checked out at ``where`` (``+ local changes`` when tracked files differ), or ``unknown``."""
    where = Path(where).resolve()
    while not where.is_dir() and where != where.parent:  # a page's folder may not exist yet
        where = where.parent
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + local changes" if dirty else "")
