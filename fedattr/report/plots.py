"""PNG plots of a scenario or sweep directory; the per-seed inflation plot comes first.

Every arm keeps one colour and marker in every plot (:func:`fedattr.report.render.arm_style`,
Okabe-Ito). Intervals of unbounded quantities are t intervals; of ranks, Kendall tau and
accuracy, bootstrap intervals inside their range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from fedattr.report.detectors import plot_detector_scores
from fedattr.report.reader import JobResult, ScenarioResults, pid_key
from fedattr.report.render import arm_style, figure, save, slug, yerr
from fedattr.report.stats import MeanCI, bounded_ci, fmt_p, mean_ci, paired_stats
from fedattr.report.summary import SweepSummary, kendall_values, paired_values

__all__ = ["scenario_plots", "sweep_plot", "PER_SEED_PLOT"]

#: file name of the per-seed inflation plot (the report's first plot)
PER_SEED_PLOT = "per_seed_inflation.png"


def _band(ax: Any, rounds: Sequence[int], cis: Sequence[MeanCI], label: str, style: Mapping[str, Any]) -> None:
    """A line of means with its interval as a light band of the same colour."""
    mean = np.array([c.mean for c in cis])
    low = np.array([c.mean - yerr(c)[0] for c in cis])
    high = np.array([c.mean + yerr(c)[1] for c in cis])
    ax.plot(rounds, mean, ms=4, label=label, **style)
    ax.fill_between(rounds, low, high, alpha=0.15, color=style["color"], linewidth=0)


def _grouped_bars(ax: Any, groups: Sequence[str], series: Sequence[str], cis: Mapping[tuple[str, str], MeanCI],
                  styles: Mapping[str, Mapping[str, Any]]) -> None:
    """Bars of mean with interval: one group per ``groups`` item, one bar per ``series`` item."""
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for k, s in enumerate(series):
        vals = [cis[(g, s)] for g in groups]
        errs = np.array([yerr(v) for v in vals]).T
        ax.bar(x + (k - (len(series) - 1) / 2) * width, [v.mean if v.n else np.nan for v in vals], width,
               yerr=errs, capsize=3, label=s, color=styles[s]["color"], edgecolor="black", linewidth=0.4)
    ax.set_xticks(x, list(groups))
    ax.axhline(0, color="grey", lw=0.6)


def _plot_per_seed(res: ScenarioResults, styles: Mapping[str, Mapping[str, Any]], out: Path) -> Path | None:
    """Per seed, the attacker's inflation in each attack arm (one point per seed), with the mean
    and its 95% t interval; rows: counterfactual inflation (same round game) and, with an honest
    arm, paired inflation (value in the arm minus in the honest arm, same seed)."""
    attack_arms = [a for a in res.arms if a != res.honest_arm and res.attack_of(a) != "honest"]
    if not attack_arms or not res.attacker_ids or not res.evaluators:
        return None
    kinds = ["counterfactual"] + (["paired"] if res.honest_arm else [])
    cols = [(ev, pid) for ev in res.evaluators for pid in res.attacker_ids]
    fig, axes = figure(len(kinds), len(cols), size=(max(3.6, 1.6 + 1.3 * len(attack_arms)), 3.6))
    for row, kind in enumerate(kinds):
        for col, (ev, pid) in enumerate(cols):
            ax = axes[row, col]
            for i, arm in enumerate(attack_arms):
                if kind == "counterfactual":
                    per = [(j.seed, j.counterfactual_inflation(ev).get(pid, math.nan)) for j in res.runs(arm)]
                else:
                    per = paired_values(res, arm, lambda j: j.cumulative(ev).get(pid, math.nan))
                per = [(s, v) for s, v in per if math.isfinite(v)]
                if not per:
                    continue
                style = styles[arm]
                offsets = np.linspace(-0.25, 0.05, len(per)) if len(per) > 1 else np.array([-0.1])
                ax.scatter(i + offsets, [v for _, v in per], color=style["color"], marker=style["marker"],
                           s=28, zorder=3, label=f"{arm}: one point per seed")
                for x, (s, v) in zip(i + offsets, per):
                    ax.annotate(str(s), (x, v), textcoords="offset points", xytext=(3, 2), fontsize=6)
                st = paired_stats(v for _, v in per)
                lo, hi = yerr(st.ci)
                ax.errorbar([i + 0.25], [st.mean], yerr=[[lo], [hi]], color=style["color"], marker="_", ms=14,
                            capsize=4, lw=1.6, zorder=4)
                ax.annotate(f"p={fmt_p(st.wilcoxon_p)}\n(min {fmt_p(st.min_p)})", (i + 0.3, st.mean),
                            textcoords="offset points", xytext=(4, -8), fontsize=6)
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xticks(range(len(attack_arms)), attack_arms)
            ax.set_xlim(-0.6, len(attack_arms) - 0.2)
            ax.set(ylabel=f"{kind} inflation", title=f"{ev}, attacker {pid}: {kind}")
    fig.suptitle("Attacker inflation per seed (points, seed labelled) with the mean and 95% t interval (bar)",
                 fontsize="medium")
    return save(fig, out / PER_SEED_PLOT)


def _plot_accuracy(res: ScenarioResults, styles: Mapping[str, Mapping[str, Any]], out: Path) -> Path:
    """Test accuracy per round, mean over seeds with a 95% bootstrap band (inside [0, 1])."""
    fig, axes = figure()
    ax = axes[0, 0]
    for arm in res.arms:
        curves = [j.accuracy_curve() for j in res.runs(arm)]
        rounds = sorted({r for c in curves for r in c})
        _band(ax, rounds, [bounded_ci(c.get(r) for c in curves) for r in rounds], arm, styles[arm])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="round", ylabel="test accuracy",
           title=f"Test accuracy (mean, 95% bootstrap band over {len(res.seeds)} seed(s))")
    ax.legend()
    return save(fig, out / "accuracy.png")


def _plot_cumulative(res: ScenarioResults, ev: str, styles: Mapping[str, Mapping[str, Any]], out: Path) -> Path:
    """Cumulative value per client and arm (bars, 95% t interval over seeds); attackers marked *."""
    clients = res.clients()
    cis = {(c, arm): mean_ci(j.cumulative(ev).get(c) for j in res.runs(arm)) for c in clients for arm in res.arms}
    fig, axes = figure(size=(max(6.4, 0.5 * len(clients) * max(1, len(res.arms))), 4.0))
    ax = axes[0, 0]
    _grouped_bars(ax, clients, res.arms, cis, styles)
    ax.set_xticks(range(len(clients)), [f"{c}*" if c in res.attacker_ids else c for c in clients])
    ax.set(xlabel="client (* = attacker)", ylabel=f"cumulative {ev} value",
           title=f"Cumulative {ev} value per client (mean, 95% t interval)")
    ax.legend()
    return save(fig, out / f"cumulative_{slug(ev)}.png")


def _plot_attacker(res: ScenarioResults, pid: str, styles: Mapping[str, Mapping[str, Any]], out: Path) -> Path:
    """The attacker's cumulative value (t interval) and rank (bootstrap, within 1..n) per evaluator and arm."""
    fig, axes = figure(1, 2)
    for ax, what in zip(axes[0], ("value", "rank")):
        def get(j: JobResult, ev: str) -> float:
            return (j.cumulative(ev) if what == "value" else j.ranks(ev)).get(pid, math.nan)
        interval = mean_ci if what == "value" else bounded_ci
        cis = {(ev, arm): interval(get(j, ev) for j in res.runs(arm)) for ev in res.evaluators for arm in res.arms}
        _grouped_bars(ax, res.evaluators, res.arms, cis, styles)
        if what == "rank":
            ax.set_ylim(0, len(res.clients()) + 0.5)
        ax.set(xlabel="evaluator", ylabel="cumulative value" if what == "value" else "rank (1 = highest value)",
               title=f"Attacker {pid}: {what}")
        ax.legend()
    return save(fig, out / f"attacker_{slug(pid)}.png")


def _plot_attacker_rounds(res: ScenarioResults, pid: str, styles: Mapping[str, Mapping[str, Any]], out: Path) -> Path:
    """The attacker's cumulative value by round, per evaluator and arm (95% t band)."""
    fig, axes = figure(1, max(1, len(res.evaluators)), size=(4.8, 3.6))
    for ax, ev in zip(axes[0], res.evaluators):
        for arm in res.arms:
            curves = [j.cumulative_curve(ev, pid) for j in res.runs(arm)]
            rounds = sorted({r for c in curves for r in c})
            _band(ax, rounds, [mean_ci(c.get(r) for c in curves) for r in rounds], arm, styles[arm])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="round", ylabel="cumulative value", title=f"{ev}: attacker {pid}")
        ax.legend(fontsize="small")
    return save(fig, out / f"attacker_{slug(pid)}_rounds.png")


def _plot_kendall(res: ScenarioResults, styles: Mapping[str, Mapping[str, Any]], out: Path) -> Path | None:
    """Kendall tau of benign rankings (honest vs each arm) per evaluator, mean with a bootstrap interval in [-1, 1]."""
    others = [a for a in res.arms if a != res.honest_arm]
    if res.honest_arm is None or not others:
        return None
    cis = {(ev, arm): bounded_ci(kendall_values(res, arm, ev)) for ev in res.evaluators for arm in others}
    fig, axes = figure()
    ax = axes[0, 0]
    _grouped_bars(ax, res.evaluators, others, cis, styles)
    ax.set_ylim(-1.05, 1.05)
    ax.set(xlabel="evaluator", ylabel="Kendall tau vs honest",
           title="Benign ranking agreement with the honest arm (1 = unchanged)")
    ax.legend()
    return save(fig, out / "kendall_tau.png")


def _plot_labels(res: ScenarioResults, out: Path) -> Path | None:
    """Heat map of label counts, clients x classes, from the first seed's first round."""
    arm = res.honest_arm if res.honest_arm in res.arms else (res.arms[0] if res.arms else None)
    runs = res.runs(arm) if arm else []
    hists = runs[0].label_histograms() if runs else {}
    if not hists:
        return None
    clients = sorted(hists, key=pid_key)
    width = max(len(h) for h in hists.values())
    mat = np.array([hists[c] + [0.0] * (width - len(hists[c])) for c in clients])
    fig, axes = figure(size=(max(5.0, 0.55 * width + 2), max(3.0, 0.35 * len(clients) + 1.5)))
    ax = axes[0, 0]
    im = ax.imshow(mat, aspect="auto", cmap="viridis")
    fig.colorbar(im, ax=ax, label="examples")
    ax.set_xticks(range(width), [str(i) for i in range(width)])
    ax.set_yticks(range(len(clients)), [f"{c}*" if c in res.attacker_ids else c for c in clients])
    if mat.size <= 400:  # annotate counts only while they stay legible
        top = mat.max() if mat.size else 0
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="black" if v > 0.6 * top else "white")
    ax.set(xlabel="class", ylabel="client (* = attacker)", title=f"Label coverage ({arm}, seed {runs[0].seed})")
    return save(fig, out / "label_coverage.png")


def scenario_plots(res: ScenarioResults, out: Path) -> list[tuple[str, Path]]:
    """Every plot of one scenario directory, as (caption, path); the per-seed inflation plot first."""
    styles = {arm: arm_style(i) for i, arm in enumerate(res.arms)}
    plots: list[tuple[str, Path | None]] = [
        ("Attacker inflation per seed, with the mean and 95% t interval", _plot_per_seed(res, styles, out)),
        ("Test accuracy per round", _plot_accuracy(res, styles, out))]
    plots += [(f"Cumulative {ev} value per client", _plot_cumulative(res, ev, styles, out)) for ev in res.evaluators]
    for pid in res.attacker_ids:
        plots += [(f"Attacker {pid}: value and rank", _plot_attacker(res, pid, styles, out)),
                  (f"Attacker {pid}: cumulative value by round", _plot_attacker_rounds(res, pid, styles, out))]
    plots += [("Benign ranking change (Kendall tau)", _plot_kendall(res, styles, out)),
              ("Label coverage", _plot_labels(res, out)),
              ("Detector scores: the attacker against the benign spread, per round", plot_detector_scores(res, out))]
    return [(caption, p) for caption, p in plots if p is not None]


def sweep_plot(summary: SweepSummary, key: str, out: Path) -> Path | None:
    """Attacker inflation (counterfactual, paired) and final accuracy versus one grid key.

    One line per arm (and per combination of the other grid keys); error bars are 95% intervals
    (t for inflation, bootstrap inside [0, 1] for accuracy).
    """
    pts = [p for p in summary.points if p.summary]
    if not pts:
        return None
    values = list(dict.fromkeys(str(v) for v in summary.grid[key]))
    numeric = all(_is_number(v) for v in values)
    xpos = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    evs = list(dict.fromkeys(ev for p in pts for ev in p.summary.evaluators))
    arms = list(dict.fromkeys(a for p in pts for a in p.summary.arms))
    styles = {arm: arm_style(i) for i, arm in enumerate(arms)}
    rows = [("counterfactual_inflation", "counterfactual inflation"),
            ("paired_inflation", "paired inflation (arm − honest)"), ("accuracy", "final accuracy")]
    fig, axes = figure(len(rows), max(1, len(evs)), size=(4.8, 3.4))
    others = [k for k in summary.grid if k != key]
    for col, ev in enumerate(evs):
        for row, (stat, label) in enumerate(rows):
            ax = axes[row, col]
            if stat == "accuracy" and col > 0:  # accuracy does not depend on the evaluator
                ax.set_visible(False)
                continue
            series: dict[tuple[str, str, str], list[tuple[float, MeanCI]]] = {}
            for p in pts:
                s, ov = p.summary, p.overrides
                ctx = ", ".join(f"{k}={ov.get(k)}" for k in others)
                x = xpos.get(str(ov.get(key)))
                if x is None:
                    continue
                for arm in s.arms:
                    if stat == "accuracy":
                        series.setdefault((arm, "", ctx), []).append((x, s.final_accuracy[arm]))
                        continue
                    if arm == s.honest_arm:
                        continue
                    many = len(s.attacker_ids) > 1
                    for pid, st in s.attacker[arm].get(ev, {}).items():
                        series.setdefault((arm, pid if many else "", ctx), []).append((x, getattr(st, stat).ci))
            for (arm, pid, ctx), xs in series.items():
                xs.sort(key=lambda t: t[0])
                lab = arm + (f" c{pid}" if pid else "") + (f" [{ctx}]" if ctx else "")
                style = dict(styles[arm], linestyle="-" if not ctx else "--")
                ax.errorbar([t[0] for t in xs], [t[1].mean for t in xs], yerr=np.array([yerr(t[1]) for t in xs]).T,
                            capsize=3, label=lab, **style)
            if not numeric:
                ax.set_xticks(range(len(values)), values)
            if stat != "accuracy":
                ax.axhline(0, color="grey", lw=0.6)
            ax.set(xlabel=key, ylabel=label, title=ev if stat != "accuracy" else "final accuracy")
            if series:
                ax.legend(fontsize="x-small")
    return save(fig, out / f"sweep_{slug(key)}.png")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
