"""What attribution costs against training, from the round records' ``timings``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fedattr.protocol import RecordError, read_rounds

__all__ = ["RoundCost", "round_costs", "cost_ratios"]


@dataclass(frozen=True)
class RoundCost:
    """One round's training and attribution seconds (``train_s`` is the Flower train round's wall time)."""

    job: str
    round: int
    participants: int
    train_s: float
    attribution_s: float
    evaluators_s: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Attribution seconds per training second."""
        return self.attribution_s / self.train_s


def round_costs(results_dir: str | Path) -> list[RoundCost]:
    """Every recorded round with positive training time and an attribution time, job by job."""
    costs = []
    for path in sorted(Path(results_dir).glob("jobs/*/rounds.jsonl")):
        try:
            rounds = read_rounds(path)
        except (RecordError, OSError, UnicodeDecodeError):
            continue
        for record in rounds:
            t = record.timings
            train, attribution = t.get("train_s"), t.get("attribution_s")
            if not isinstance(train, (int, float)) or train <= 0 or not isinstance(attribution, (int, float)):
                continue
            evaluators = {k: float(v) for k, v in (t.get("evaluators_s") or {}).items() if isinstance(v, (int, float))}
            costs.append(RoundCost(path.parent.name, record.round, len(record.clients), float(train),
                                   float(attribution), evaluators))
    return costs


def cost_ratios(costs: list[RoundCost], first_round: int = 2) -> dict[str, list[float]]:
    """Per evaluator (and ``all evaluators``), its seconds over the round's training seconds, for
    rounds from ``first_round`` on (round 1 includes the clients' start-up)."""
    ratios: dict[str, list[float]] = {}
    for c in costs:
        if c.round < first_round:
            continue
        for name, sec in {**c.evaluators_s, "all evaluators": c.attribution_s}.items():
            ratios.setdefault(name, []).append(sec / c.train_s)
    return ratios
