"""PNG plots of a scenario or sweep directory (pyplot-free: no global backend state)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure  # pyplot-free: Figure.savefig renders PNG with Agg
from matplotlib.ticker import MaxNLocator

from fedattr.report.reader import JobResult, ScenarioResults, pid_key
from fedattr.report.stats import MeanCI, as_float, ci_from, mean_ci
from fedattr.report.summary import kendall_ci

__all__ = ["scenario_plots", "sweep_plot"]


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.4, 4.0)):
    """A pyplot-free figure (no global backend state) and its axes array."""
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    """Write a figure as PNG atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    tmp.replace(path)
    return path


def _color(i: int) -> Any:
    """The i-th colour of the tab10 cycle."""
    return colormaps["tab10"](i % 10)


def _err(ci: MeanCI) -> float:
    """Error-bar length: the CI half-width, 0 when undefined."""
    return ci.half if math.isfinite(ci.half) else 0.0


def _slug(text: str) -> str:
    """A file-name-safe version of a key."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_") or "x"


def _grouped_bars(ax: Any, groups: Sequence[str], series: Sequence[str],
                  cis: Mapping[tuple[str, str], MeanCI], colors: Mapping[str, Any]) -> None:
    """Bars of mean ± CI: one group per ``groups`` item, one bar per ``series`` item."""
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for k, s in enumerate(series):
        vals = [cis[(g, s)] for g in groups]
        ax.bar(x + (k - (len(series) - 1) / 2) * width,
               [v.mean if v.n else np.nan for v in vals], width,
               yerr=[_err(v) for v in vals], capsize=3, label=s, color=colors[s])
    ax.set_xticks(x, list(groups))
    ax.axhline(0, color="grey", lw=0.6)


def _plot_accuracy(res: ScenarioResults, colors: Mapping[str, Any], out: Path) -> Path:
    """Test accuracy per round, mean over seeds with a 95% CI band, one line per arm."""
    fig, axes = _figure()
    ax = axes[0, 0]
    for arm in res.arms:
        curves = [j.accuracy_curve() for j in res.runs(arm)]
        rounds = sorted({r for c in curves for r in c})
        cis = [mean_ci(c.get(r) for c in curves) for r in rounds]
        mean = np.array([c.mean for c in cis])
        half = np.array([_err(c) for c in cis])
        ax.plot(rounds, mean, marker="o", ms=3, label=arm, color=colors[arm])
        ax.fill_between(rounds, mean - half, mean + half, alpha=0.2, color=colors[arm])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="round", ylabel="test accuracy",
           title=f"Test accuracy (mean ± 95% CI over {len(res.seeds)} seed(s))")
    ax.legend()
    return _save(fig, out / "accuracy.png")


def _plot_cumulative(res: ScenarioResults, ev: str, colors: Mapping[str, Any], out: Path) -> Path:
    """Cumulative value per client and arm (bars, 95% CI over seeds); attackers marked *."""
    clients = res.clients()
    cis = {(c, arm): mean_ci(j.cumulative(ev).get(c) for j in res.runs(arm))
           for c in clients for arm in res.arms}
    fig, axes = _figure(size=(max(6.4, 0.5 * len(clients) * max(1, len(res.arms))), 4.0))
    ax = axes[0, 0]
    _grouped_bars(ax, clients, res.arms, cis, colors)
    ax.set_xticks(range(len(clients)),
                  [f"{c}*" if c in res.attacker_ids else c for c in clients])
    ax.set(xlabel="client (* = attacker)", ylabel=f"cumulative {ev} value",
           title=f"Cumulative {ev} value per client (mean ± 95% CI)")
    ax.legend()
    return _save(fig, out / f"cumulative_{_slug(ev)}.png")


def _plot_attacker(res: ScenarioResults, pid: str, colors: Mapping[str, Any], out: Path) -> Path:
    """The attacker's cumulative value and rank per evaluator and arm (95% CI over seeds)."""
    fig, axes = _figure(1, 2)
    for ax, what in zip(axes[0], ("value", "rank")):
        def get(j: JobResult, ev: str) -> float:
            return (j.cumulative(ev) if what == "value" else j.ranks(ev)).get(pid, math.nan)
        cis = {(ev, arm): mean_ci(get(j, ev) for j in res.runs(arm))
               for ev in res.evaluators for arm in res.arms}
        _grouped_bars(ax, res.evaluators, res.arms, cis, colors)
        ax.set(xlabel="evaluator", ylabel="cumulative value" if what == "value" else
               "rank (1 = highest value)", title=f"Attacker {pid}: {what}")
        ax.legend()
    return _save(fig, out / f"attacker_{_slug(pid)}.png")


def _plot_attacker_rounds(res: ScenarioResults, pid: str, colors: Mapping[str, Any],
                          out: Path) -> Path:
    """The attacker's cumulative value by round, per evaluator and arm (95% CI band)."""
    fig, axes = _figure(1, max(1, len(res.evaluators)), size=(4.8, 3.6))
    for ax, ev in zip(axes[0], res.evaluators):
        for arm in res.arms:
            curves = [j.cumulative_curve(ev, pid) for j in res.runs(arm)]
            rounds = sorted({r for c in curves for r in c})
            cis = [mean_ci(c.get(r) for c in curves) for r in rounds]
            mean = np.array([c.mean for c in cis])
            half = np.array([_err(c) for c in cis])
            ax.plot(rounds, mean, marker="o", ms=3, label=arm, color=colors[arm])
            ax.fill_between(rounds, mean - half, mean + half, alpha=0.2, color=colors[arm])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="round", ylabel="cumulative value", title=f"{ev}: attacker {pid}")
        ax.legend(fontsize="small")
    return _save(fig, out / f"attacker_{_slug(pid)}_rounds.png")


def _plot_kendall(res: ScenarioResults, colors: Mapping[str, Any], out: Path) -> Path | None:
    """Kendall tau of benign rankings (honest vs each arm) per evaluator, mean ± CI."""
    others = [a for a in res.arms if a != res.honest_arm]
    if res.honest_arm is None or not others:
        return None
    cis = {(ev, arm): kendall_ci(res, arm, ev) for ev in res.evaluators for arm in others}
    fig, axes = _figure()
    ax = axes[0, 0]
    _grouped_bars(ax, res.evaluators, others, cis, colors)
    ax.set_ylim(-1.05, 1.05)
    ax.set(xlabel="evaluator", ylabel="Kendall tau vs honest",
           title="Benign ranking agreement with the honest arm (1 = unchanged)")
    ax.legend()
    return _save(fig, out / "kendall_tau.png")


def _plot_labels(res: ScenarioResults, out: Path) -> Path | None:
    """Heat map of label counts, clients × classes, from the first seed's first round."""
    arm = res.honest_arm if res.honest_arm in res.arms else (res.arms[0] if res.arms else None)
    runs = res.runs(arm) if arm else []
    hists = runs[0].label_histograms() if runs else {}
    if not hists:
        return None
    clients = sorted(hists, key=pid_key)
    width = max(len(h) for h in hists.values())
    mat = np.array([list(map(as_float, hists[c])) + [0.0] * (width - len(hists[c])) for c in clients])
    fig, axes = _figure(size=(max(5.0, 0.55 * width + 2), max(3.0, 0.35 * len(clients) + 1.5)))
    ax = axes[0, 0]
    im = ax.imshow(mat, aspect="auto", cmap="viridis")
    fig.colorbar(im, ax=ax, label="examples")
    ax.set_xticks(range(width), [str(i) for i in range(width)])
    ax.set_yticks(range(len(clients)),
                  [f"{c}*" if c in res.attacker_ids else c for c in clients])
    if mat.size <= 400:  # annotate counts only while they stay legible
        top = mat.max() if mat.size else 0
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                    color="black" if v > 0.6 * top else "white")
    ax.set(xlabel="class", ylabel="client (* = attacker)",
           title=f"Label coverage ({arm}, seed {runs[0].seed})")
    return _save(fig, out / "label_coverage.png")


def scenario_plots(res: ScenarioResults, out: Path) -> list[tuple[str, Path]]:
    """Every plot of one scenario directory, as (caption, path)."""
    colors = {arm: _color(i) for i, arm in enumerate(res.arms)}
    plots = [("Test accuracy per round", _plot_accuracy(res, colors, out))]
    for ev in res.evaluators:
        plots.append((f"Cumulative {ev} value per client", _plot_cumulative(res, ev, colors, out)))
    for pid in res.attacker_ids:
        plots.append((f"Attacker {pid}: value and rank", _plot_attacker(res, pid, colors, out)))
        plots.append((f"Attacker {pid}: cumulative value by round",
                      _plot_attacker_rounds(res, pid, colors, out)))
    from fedattr.report.detectors import plot_detector_scores

    for caption, p in (("Benign ranking change (Kendall tau)", _plot_kendall(res, colors, out)),
                       ("Label coverage", _plot_labels(res, out)),
                       ("Detector scores: the attacker against the benign spread, per round",
                        plot_detector_scores(res, out))):
        if p is not None:
            plots.append((caption, p))
    return plots


def sweep_plot(summary: Mapping[str, Any], key: str, out: Path) -> Path | None:
    """Attacker inflation (counterfactual, paired) and final accuracy versus one grid key.

    One line per arm (and per combination of the other grid keys); error bars are 95% CIs.
    """
    pts = [p for p in summary["points"] if p.get("summary")]
    if not pts:
        return None
    values = list(dict.fromkeys(str(v) for v in summary["grid"][key]))
    numeric = all(math.isfinite(as_float(v)) for v in values)
    xpos = {v: (as_float(v) if numeric else i) for i, v in enumerate(values)}
    evs = list(dict.fromkeys(ev for p in pts for ev in p["summary"]["evaluators"]))
    arms = list(dict.fromkeys(a for p in pts for a in p["summary"]["arms"]))
    colors = {arm: _color(i) for i, arm in enumerate(arms)}
    rows = [("counterfactual_inflation", "counterfactual inflation"),
            ("paired_inflation", "paired inflation (arm − honest)"), ("accuracy", "final accuracy")]
    fig, axes = _figure(len(rows), max(1, len(evs)), size=(4.8, 3.4))
    others = [k for k in summary["grid"] if k != key]
    for col, ev in enumerate(evs):
        for row, (stat, label) in enumerate(rows):
            ax = axes[row, col]
            if stat == "accuracy" and col > 0:  # accuracy does not depend on the evaluator
                ax.set_visible(False)
                continue
            series: dict[tuple[str, str, str], list[tuple[float, MeanCI]]] = {}
            for p in pts:
                s, ov = p["summary"], p["overrides"]
                ctx = ", ".join(f"{k}={ov.get(k)}" for k in others)
                x = xpos.get(str(ov.get(key)))
                if x is None:
                    continue
                for arm in s["arms"]:
                    if stat == "accuracy":
                        series.setdefault((arm, "", ctx), []).append(
                            (x, ci_from(s["final_accuracy"].get(arm))))
                        continue
                    if arm == s.get("honest_arm"):
                        continue
                    many = len(s["attacker_ids"]) > 1
                    for pid, st in (s["attacker"].get(arm, {}).get(ev) or {}).items():
                        series.setdefault((arm, pid if many else "", ctx), []).append(
                            (x, ci_from(st.get(stat))))
            for (arm, pid, ctx), xs in series.items():
                xs.sort(key=lambda t: t[0])
                lab = arm + (f" c{pid}" if pid else "") + (f" [{ctx}]" if ctx else "")
                ax.errorbar([t[0] for t in xs], [t[1].mean for t in xs],
                            yerr=[_err(t[1]) for t in xs], marker="o", capsize=3, label=lab,
                            color=colors[arm], ls="-" if not ctx else "--")
            if not numeric:
                ax.set_xticks(range(len(values)), values)
            if stat != "accuracy":
                ax.axhline(0, color="grey", lw=0.6)
            ax.set(xlabel=key, ylabel=label, title=ev if stat != "accuracy" else "final accuracy")
            if series:
                ax.legend(fontsize="x-small")
    return _save(fig, out / f"sweep_{_slug(key)}.png")
