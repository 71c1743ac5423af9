"""The report's statistics: intervals over seeds, the paired claim statistics, ranks, number format.

One seed is one observation. Every interval is 95% unless asked otherwise:

- :func:`mean_ci`: mean with a t-distribution interval (unbounded quantities: values, inflation);
- :func:`bounded_ci`: mean with a percentile-bootstrap interval of the mean, which stays inside
  the quantity's range (ranks within 1..n, Kendall tau within [-1, 1], accuracy within [0, 1]);
- :func:`paired_stats`: per-seed paired differences with the t interval, the two-sided Wilcoxon
  signed-rank p and the smallest p attainable at that many seeds (2 / 2^n), the bootstrap
  interval, the count of positive seeds and the smallest detectable effect.

Ranks have one tie rule (:func:`ranks`): 1 = highest value, tied clients share their mean rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

__all__ = ["MeanCI", "PairedStats", "as_float", "finite", "mean_ci", "bounded_ci", "paired_stats",
           "min_wilcoxon_p", "detectable_effect", "ranks", "kendall_between", "fmt_num", "fmt_p",
           "fmt_ci", "ACCURACY_RANGE", "TAU_RANGE"]

#: the range of a test accuracy and of Kendall's tau (for :func:`bounded_ci`)
ACCURACY_RANGE = (0.0, 1.0)
TAU_RANGE = (-1.0, 1.0)
_BOOT_RESAMPLES = 9999


def as_float(x: Any) -> float:
    """A float from a stored number; None, missing and non-numeric values become nan."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def finite(values: Iterable[Any]) -> list[float]:
    """The finite values of ``values`` as floats."""
    return [v for v in (as_float(x) for x in values) if math.isfinite(v)]


@dataclass(frozen=True)
class MeanCI:
    """A mean over seeds with its confidence interval ``[low, high]`` (nan where undefined).

    ``method`` says how the interval was made: ``t`` (t-distribution, symmetric) or ``bootstrap``
    (percentile bootstrap of the mean, inside the quantity's range).
    """

    mean: float
    low: float
    high: float
    n: int
    values: tuple[float, ...] = ()
    method: Literal["t", "bootstrap"] = "t"

    @property
    def half(self) -> float:
        """Half the interval's width (for a t interval: the ± term)."""
        return (self.high - self.low) / 2 if math.isfinite(self.low) and math.isfinite(self.high) else math.nan

    def as_dict(self) -> dict[str, Any]:
        """Plain fields for JSON (the results writer turns nan into null)."""
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n,
                "method": self.method, "values": list(self.values)}


def _empty(method: Literal["t", "bootstrap"] = "t") -> MeanCI:
    return MeanCI(math.nan, math.nan, math.nan, 0, (), method)


def mean_ci(values: Iterable[Any], confidence: float = 0.95) -> MeanCI:
    """Mean and t-distribution interval of the finite values; n = 1 gives a nan interval."""
    xs = finite(values)
    n = len(xs)
    if n == 0:
        return _empty()
    mean = float(np.mean(xs))
    if n == 1:
        return MeanCI(mean, math.nan, math.nan, 1, tuple(xs))
    half = float(sps.t.ppf(0.5 + confidence / 2.0, n - 1)) * float(np.std(xs, ddof=1)) / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, n, tuple(xs))


def _bootstrap(xs: np.ndarray, confidence: float, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean (seeds resampled; seeded, so reports repeat)."""
    if len(xs) < 2 or float(np.ptp(xs)) == 0.0:
        return float(xs.mean()), float(xs.mean())
    boot = sps.bootstrap((xs,), np.mean, confidence_level=confidence, n_resamples=_BOOT_RESAMPLES,
                         method="percentile", random_state=np.random.default_rng(seed))
    return float(boot.confidence_interval.low), float(boot.confidence_interval.high)


def bounded_ci(values: Iterable[Any], confidence: float = 0.95) -> MeanCI:
    """Mean and percentile-bootstrap interval of the finite values.

    The interval's ends are means of resampled seeds, so they stay inside the range of the
    quantity (a rank within 1..n, a tau within [-1, 1], an accuracy within [0, 1]).
    """
    xs = finite(values)
    if not xs:
        return _empty("bootstrap")
    arr = np.asarray(xs, dtype=float)
    if len(xs) == 1:
        return MeanCI(float(arr[0]), math.nan, math.nan, 1, tuple(xs), "bootstrap")
    low, high = _bootstrap(arr, confidence)
    return MeanCI(float(arr.mean()), low, high, len(xs), tuple(xs), "bootstrap")


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided Wilcoxon signed-rank p attainable with ``n`` seeds: 2 / 2^n.

    Reached when every seed has the same sign; with 4 seeds no result can be below 0.125.
    """
    return 2.0 / 2.0**n if n >= 1 else math.nan


def detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest mean a two-sided paired t test of ``n`` seeds detects with ``power`` at level ``alpha``.

    (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n), the usual t approximation; nan for n < 2.
    """
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return float((sps.t.ppf(1 - alpha / 2, n - 1) + sps.t.ppf(power, n - 1)) * sd / math.sqrt(n))


@dataclass(frozen=True)
class PairedStats:
    """Statistics of per-seed paired differences (nan where undefined, e.g. n < 2).

    ``t_low``/``t_high``: t interval of the mean; ``wilcoxon_p``: two-sided signed-rank p;
    ``min_p``: the smallest p attainable at ``n`` seeds; ``boot_low``/``boot_high``: percentile
    bootstrap interval; ``positive``: seeds above 0; ``detectable``: the smallest mean these seeds
    detect (80% power, 5% two-sided), from their spread.
    """

    n: int
    mean: float
    t_low: float
    t_high: float
    wilcoxon_p: float
    min_p: float
    boot_low: float
    boot_high: float
    positive: int
    detectable: float
    values: tuple[float, ...] = ()

    @property
    def ci(self) -> MeanCI:
        """The mean and its t interval as a :class:`MeanCI`."""
        return MeanCI(self.mean, self.t_low, self.t_high, self.n, self.values)

    def as_dict(self) -> dict[str, Any]:
        """Plain fields for JSON (the results writer turns nan into null)."""
        return {"n": self.n, "mean": self.mean, "t_ci": [self.t_low, self.t_high],
                "wilcoxon_p": self.wilcoxon_p, "min_attainable_p": self.min_p,
                "bootstrap_ci": [self.boot_low, self.boot_high], "positive_seeds": self.positive,
                "detectable_effect": self.detectable, "values": list(self.values)}


def paired_stats(diffs: Iterable[Any], confidence: float = 0.95) -> PairedStats:
    """Mean ± t interval, Wilcoxon p (and its floor at n seeds), bootstrap interval, positive seeds, MDE.

    ``diffs`` are per-seed paired differences (non-finite ones are dropped). The Wilcoxon test
    uses scipy's exact null distribution for small n without ties and zeros; a sample of zeros
    gives p = 1.
    """
    xs = np.asarray(finite(diffs), dtype=float)
    n = len(xs)
    nan = math.nan
    if n == 0:
        return PairedStats(0, nan, nan, nan, nan, nan, nan, nan, 0, nan)
    mean, positive = float(xs.mean()), int((xs > 0).sum())
    if n < 2:
        return PairedStats(n, mean, nan, nan, nan, min_wilcoxon_p(n), nan, nan, positive, nan, tuple(xs.tolist()))
    ci = mean_ci(xs, confidence)
    p = 1.0 if np.all(xs == 0) else float(sps.wilcoxon(xs, alternative="two-sided").pvalue)
    low, high = _bootstrap(xs, confidence)
    return PairedStats(n, mean, ci.low, ci.high, p, min_wilcoxon_p(n), low, high, positive,
                       detectable_effect(float(xs.std(ddof=1)), n), tuple(xs.tolist()))


def ranks(values: Mapping[Any, Any]) -> dict[str, float]:
    """Rank of each client by value (1 = highest); tied clients share their mean rank.

    Non-finite values rank last.
    """
    keys = [str(k) for k in values]
    v = np.asarray([as_float(values[k]) for k in values], dtype=float)
    v = np.where(np.isfinite(v), v, -np.inf)
    return {k: float(r) for k, r in zip(keys, sps.rankdata(-v, method="average"))}


def kendall_between(a: Mapping[Any, Any], b: Mapping[Any, Any], keys: Iterable[Any] | None = None) -> float:
    """Kendall tau-b between two {client: value} maps over their common (or the given) keys.

    nan when fewer than two keys are shared or a side is constant.
    """
    a = {str(k): as_float(v) for k, v in a.items()}
    b = {str(k): as_float(v) for k, v in b.items()}
    common = [str(k) for k in keys] if keys is not None else [k for k in a if k in b]
    common = [k for k in common if k in a and k in b and math.isfinite(a[k]) and math.isfinite(b[k])]
    if len(common) < 2:
        return math.nan
    xa, xb = [a[k] for k in common], [b[k] for k in common]
    if len(set(xa)) < 2 or len(set(xb)) < 2:
        return math.nan
    return float(sps.kendalltau(xa, xb).statistic)


def fmt_num(x: Any, signed: bool = True) -> str:
    """One number as every table prints it: fixed point, 4 decimals, signed unless ``signed=False``.

    One format for every column, so ``2.302e-05``, ``-0.01667`` and ``0.026`` never stand in one
    column (they print as ``+0.0000``, ``-0.0167`` and ``+0.0260``); nan and None print ``—``.
    """
    v = as_float(x)
    if not math.isfinite(v):
        return "—"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def fmt_p(x: Any) -> str:
    """A p-value: 4 decimals, scientific below 1e-4, ``—`` when undefined."""
    v = as_float(x)
    return "—" if not math.isfinite(v) else (f"{v:.4f}" if v >= 1e-4 else f"{v:.1e}")


def fmt_ci(ci: MeanCI, signed: bool = True) -> str:
    """``m ± h`` (t interval) or ``m [lo, hi]`` (bootstrap); ``m (n=1)`` for one value; ``—`` for none."""
    if ci.n == 0:
        return "—"
    if ci.n == 1 or not math.isfinite(ci.low):
        return f"{fmt_num(ci.mean, signed)} (n={ci.n})"
    if ci.method == "bootstrap":
        return f"{fmt_num(ci.mean, signed)} [{fmt_num(ci.low, signed)}, {fmt_num(ci.high, signed)}]"
    return f"{fmt_num(ci.mean, signed)} ± {fmt_num(ci.half, signed=False)}"
