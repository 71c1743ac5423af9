"""Detectors in the report: flag rates over seeds, and the attacker's scores against the benign spread.

Round records hold, per detector, every client's score, rank and flag (``detectors``). Per job:
the attacker's flag rate is the share of rounds in which it was flagged; the benign false-positive
rate the share of benign client-rounds flagged. Over seeds: mean with a 95% t interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedattr.report.reader import ScenarioResults
from fedattr.report.stats import fmt_ci, mean_ci


def detector_names(res: ScenarioResults) -> list[str]:
    """Every detector that recorded a round, in first-seen order."""
    names: list[str] = []
    for job in res.jobs.values():
        for rec in job.rounds:
            for name in rec.get("detectors") or {}:
                if name not in names:
                    names.append(name)
    return names


def _rates(job, name: str, attackers: set[str]) -> tuple[float | None, float | None]:
    att, ben = [], []
    for rec in job.rounds:
        flags = ((rec.get("detectors") or {}).get(name) or {}).get("flags") or {}
        for pid, flagged in flags.items():
            (att if str(pid) in attackers else ben).append(bool(flagged))
    return (float(np.mean(att)) if att else None, float(np.mean(ben)) if ben else None)


def detector_rows(res: ScenarioResults) -> tuple[list[str], list[list[str]]]:
    """Per detector and arm: the attacker's flag rate and the benign false-positive rate (95% CI)."""
    attackers = {str(a) for a in res.attacker_ids}
    headers = ["detector", "arm", "attacker flag rate", "benign false-positive rate", "seeds"]
    rows = []
    for name in detector_names(res):
        for arm in res.arms:
            per_seed = [_rates(job, name, attackers) for job in res.runs(arm)]
            att = mean_ci(a for a, _ in per_seed if a is not None)
            ben = mean_ci(b for _, b in per_seed if b is not None)
            rows.append([name, arm, fmt_ci(att, signed=False), fmt_ci(ben, signed=False), str(len(per_seed))])
    return headers, rows


def plot_detector_scores(res: ScenarioResults, out: Path) -> Path | None:
    """Per detector: the attacker's score by round (mean over seeds, per arm) against the benign
    clients' spread (median and 10-90% band over clients and seeds of all arms)."""
    names = detector_names(res)
    if not names:
        return None
    from fedattr.report.plots import _color, _figure, _save

    attackers = {str(a) for a in res.attacker_ids}
    fig, axes = _figure(1, len(names), size=(4.2, 3.4))
    for ax, name in zip(axes[0], names):
        benign: dict[int, list[float]] = {}
        for i, arm in enumerate(res.arms):
            by_round: dict[int, list[float]] = {}
            for job in res.runs(arm):
                for rec in job.rounds:
                    scores = ((rec.get("detectors") or {}).get(name) or {}).get("scores") or {}
                    for pid, s in scores.items():
                        if s is None:
                            continue
                        target = by_round if str(pid) in attackers else benign
                        target.setdefault(int(rec["round"]), []).append(float(s))
            if by_round:
                r = sorted(by_round)
                ax.plot(r, [np.mean(by_round[k]) for k in r], marker="o", ms=3, color=_color(i),
                        label=f"attacker ({arm})")
        if benign:
            r = sorted(benign)
            ax.plot(r, [np.median(benign[k]) for k in r], color="grey", lw=1, label="benign median")
            ax.fill_between(r, [np.percentile(benign[k], 10) for k in r], [np.percentile(benign[k], 90) for k in r],
                            color="grey", alpha=0.25, label="benign 10-90%")
        ax.set(xlabel="round", ylabel="score", title=name)
        ax.legend(fontsize="x-small")
    return _save(fig, out / "detector_scores.png")


def detector_markdown(res: ScenarioResults) -> list[str]:
    """The report's Detectors section (empty when no detector ran)."""
    headers, rows = detector_rows(res)
    if not rows:
        return []
    from fedattr.report.markdown import md_table

    return ["## Detectors", "",
            "Share of rounds in which each detector flagged the attacker, and share of benign "
            "client-rounds it flagged (false positives), mean ± 95% CI over seeds.", ""] + \
        md_table(headers, rows) + [""]


__all__: list[Any] = ["detector_names", "detector_rows", "detector_markdown", "plot_detector_scores"]
