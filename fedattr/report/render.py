"""Rendering helpers every report part shares: markdown tables, figures, the arm palette.

It imports only the report's statistics, so detectors, plots and markdown all sit above it.
Figures are pyplot-free (no global backend state): :class:`matplotlib.figure.Figure` renders PNG
with Agg.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fedattr.report.stats import MeanCI

__all__ = ["md_table", "figure", "save", "arm_style", "yerr", "slug", "OKABE_ITO"]

#: Okabe & Ito's colour-blind-safe palette, most distinct pairs first (yellow last: faint on white)
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINES = ("-", "--", ":", "-.")


def md_table(headers: Sequence[Any], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table as lines (``|`` in cells escaped), followed by a blank line."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows] + [""]


def figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.4, 4.0)) -> tuple[Figure, Any]:
    """A pyplot-free figure and its 2-D axes array."""
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def save(fig: Figure, path: Path) -> Path:
    """Write a figure as PNG atomically (the package's one atomic write: a full disk names ``path``)."""
    import io

    from fedattr.core.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
    return path


def arm_style(i: int) -> dict[str, Any]:
    """Colour, marker and line style of the i-th arm: distinct for every arm (colour, then shape)."""
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": _LINES[(i // len(OKABE_ITO)) % len(_LINES)]}


def yerr(ci: MeanCI) -> tuple[float, float]:
    """Error-bar lengths below and above the mean (0 where the interval is undefined)."""
    if ci.n == 0 or not (math.isfinite(ci.low) and math.isfinite(ci.high)):
        return 0.0, 0.0
    return max(0.0, ci.mean - ci.low), max(0.0, ci.high - ci.mean)


def slug(text: str) -> str:
    """A file-name-safe version of a key."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_") or "x"
