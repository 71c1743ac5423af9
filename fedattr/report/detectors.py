"""Detectors in the report: flag rates over seeds, and the attacker's scores against the benign spread.

Round records hold, per detector, every client's score, rank and flag (``detectors``). Per job:
the attacker's flag rate is the share of rounds in which it was flagged; the benign false-positive
rate the share of benign client-rounds flagged. Over seeds: mean with a 95% t interval.
"""

from __future__ import annotations

from pathlib import Path
import numpy as np

from fedattr.report.reader import JobResult, ScenarioResults
from fedattr.report.render import arm_style, figure, md_table, save
from fedattr.report.stats import bounded_ci, fmt_ci

__all__ = ["detector_names", "detector_rows", "detector_markdown", "plot_detector_scores"]


def detector_names(res: ScenarioResults) -> list[str]:
    """Every detector that recorded a round, in first-seen order."""
    names: list[str] = []
    for job in res.jobs.values():
        for rec in job.rounds:
            for name in rec.detectors:
                if name not in names:
                    names.append(name)
    return names


def _rates(job: JobResult, name: str, attackers: set[str]) -> tuple[float | None, float | None]:
    """One job's attacker flag rate and benign false-positive rate under one detector."""
    att, ben = [], []
    for rec in job.rounds:
        det = rec.detectors.get(name)
        for pid, flagged in (det.flags if det is not None else {}).items():
            (att if str(pid) in attackers else ben).append(bool(flagged))
    return (float(np.mean(att)) if att else None, float(np.mean(ben)) if ben else None)


def detector_rows(res: ScenarioResults) -> tuple[list[str], list[list[str]]]:
    """Per detector and arm: the attacker's flag rate and the benign false-positive rate (95% bootstrap CI, in [0, 1])."""
    attackers = {str(a) for a in res.attacker_ids}
    headers = ["detector", "arm", "attacker flag rate", "benign false-positive rate", "seeds"]
    rows = []
    for name in detector_names(res):
        for arm in res.arms:
            per_seed = [_rates(job, name, attackers) for job in res.runs(arm)]
            att = bounded_ci(a for a, _ in per_seed if a is not None)
            ben = bounded_ci(b for _, b in per_seed if b is not None)
            rows.append([name, arm, fmt_ci(att, signed=False), fmt_ci(ben, signed=False), str(len(per_seed))])
    return headers, rows


def plot_detector_scores(res: ScenarioResults, out: Path) -> Path | None:
    """Per detector: the attacker's score by round (mean over seeds, per arm) against the benign
    clients' spread (median and 10-90% band over clients and seeds of all arms)."""
    names = detector_names(res)
    if not names:
        return None
    attackers = {str(a) for a in res.attacker_ids}
    fig, axes = figure(1, len(names), size=(4.2, 3.4))
    for ax, name in zip(axes[0], names):
        benign: dict[int, list[float]] = {}
        for i, arm in enumerate(res.arms):
            by_round: dict[int, list[float]] = {}
            for job in res.runs(arm):
                for rec in job.rounds:
                    det = rec.detectors.get(name)
                    for pid, score in (det.scores if det is not None else {}).items():
                        if score is None:
                            continue
                        target = by_round if str(pid) in attackers else benign
                        target.setdefault(rec.round, []).append(float(score))
            if by_round:
                r = sorted(by_round)
                ax.plot(r, [np.mean(by_round[k]) for k in r], ms=4, label=f"attacker ({arm})", **arm_style(i))
        if benign:
            r = sorted(benign)
            ax.plot(r, [np.median(benign[k]) for k in r], color="grey", lw=1, label="benign median")
            ax.fill_between(r, [np.percentile(benign[k], 10) for k in r], [np.percentile(benign[k], 90) for k in r],
                            color="grey", alpha=0.25, label="benign 10-90%")
        ax.set(xlabel="round", ylabel="score", title=name)
        ax.legend(fontsize="x-small")
    return save(fig, out / "detector_scores.png")


def detector_markdown(res: ScenarioResults) -> list[str]:
    """The report's Detectors section (empty when no detector ran)."""
    headers, rows = detector_rows(res)
    if not rows:
        return []
    return ["## Detectors", "",
            "Share of rounds in which each detector flagged the attacker, and share of benign "
            "client-rounds it flagged (false positives): mean over seeds [95% bootstrap interval].", ""] + \
        md_table(headers, rows) + [""]

