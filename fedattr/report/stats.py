"""Statistics of the reports: mean and t-distribution 95% CI over seeds, Kendall tau, number format."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["MeanCI", "as_float", "mean_ci", "fmt_num", "fmt_ci", "ci_from", "kendall_between"]


@dataclass(frozen=True)
class MeanCI:
    """Mean of the finite values, 95% CI half-width (nan when n < 2), and n."""

    mean: float
    half: float
    n: int
    values: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form; nan becomes None."""
        def clean(x: float) -> float | None:
            return None if x is None or not math.isfinite(x) else float(x)
        return {"mean": clean(self.mean), "ci95": clean(self.half), "n": self.n,
                "values": [clean(v) for v in self.values]}


def as_float(x: Any) -> float:
    """A float from a stored number; None/missing/non-numeric become nan."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def mean_ci(values: Iterable[Any], confidence: float = 0.95) -> MeanCI:
    """Mean and t-distribution confidence half-width of the finite values.

    n = 0 gives nan/nan; n = 1 gives the value and a nan half-width.
    """
    xs = [v for v in (as_float(x) for x in values) if math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return MeanCI(math.nan, math.nan, 0, ())
    arr = np.asarray(xs, dtype=float)
    mean = float(arr.mean())
    if n == 1:
        return MeanCI(mean, math.nan, 1, tuple(xs))
    sem = float(arr.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sem
    return MeanCI(mean, half, n, tuple(xs))


def fmt_num(x: Any, signed: bool = True) -> str:
    """One number as every table prints it: fixed point, 4 decimals, signed unless ``signed=False``.

    One format for every column, so ``2.302e-05``, ``-0.01667`` and ``0.026`` never stand in one
    column (they print as ``+0.0000``, ``-0.0167`` and ``+0.0260``); nan and None print ``—``.
    """
    v = as_float(x)
    if not math.isfinite(v):
        return "—"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def fmt_ci(ci: MeanCI, signed: bool = True) -> str:
    """``m ± h`` in :func:`fmt_num`'s format; ``m (n=1)`` for one value; ``—`` for none."""
    if ci.n == 0:
        return "—"
    if ci.n == 1 or not math.isfinite(ci.half):
        return f"{fmt_num(ci.mean, signed)} (n={ci.n})"
    return f"{fmt_num(ci.mean, signed)} ± {fmt_num(ci.half, signed=False)}"


def ci_from(d: Mapping[str, Any] | None) -> MeanCI:
    """A MeanCI back from its ``as_dict`` form."""
    if not d:
        return mean_ci([])
    return MeanCI(as_float(d.get("mean")), as_float(d.get("ci95")), int(d.get("n") or 0),
                  tuple(as_float(v) for v in d.get("values") or ()))


def kendall_between(a: Mapping[Any, Any], b: Mapping[Any, Any],
                    keys: Iterable[Any] | None = None) -> float:
    """Kendall tau-b between two {client: value} maps over their common (or the given) keys.

    nan when fewer than two keys are shared or a side is constant.
    """
    a = {str(k): as_float(v) for k, v in a.items()}
    b = {str(k): as_float(v) for k, v in b.items()}
    common = [str(k) for k in keys] if keys is not None else [k for k in a if k in b]
    common = [k for k in common if k in a and k in b
              and math.isfinite(a[k]) and math.isfinite(b[k])]
    if len(common) < 2:
        return math.nan
    xa, xb = [a[k] for k in common], [b[k] for k in common]
    if len(set(xa)) < 2 or len(set(xb)) < 2:
        return math.nan
    return float(stats.kendalltau(xa, xb).statistic)
