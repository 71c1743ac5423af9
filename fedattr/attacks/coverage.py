"""Which classes the benign federation under-covers: the attacker's choice of synthetic labels.

Two estimators share one result type. ``oracle`` reads the true benign label histograms, which no
real attacker sees: it is an UPPER BOUND for the testbed. ``inferred`` uses only what the attacker
sees: the global model's confidence on the attacker's own probes plus its own label counts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fedattr.core.errors import UserError

COVERAGE_METHODS = ("inferred", "oracle")


@dataclass(frozen=True)
class Coverage:
    """Per-class coverage scores (lower = less covered), the k chosen target classes and their weights."""

    method: str
    scores: list[float]
    targets: list[int]
    weights: list[float]
    upper_bound: bool
    info: dict[str, Any] = field(default_factory=dict)


def least_covered(scores: list[float], k: int) -> list[int]:
    """The ``k`` classes with the lowest score; ties go to the lower class index (deterministic)."""
    k = max(0, min(k, len(scores)))
    return sorted(range(len(scores)), key=lambda c: (scores[c], c))[:k]


def _equal_weights(num_classes: int, targets: list[int]) -> list[float]:
    return [1.0 / len(targets) if c in targets else 0.0 for c in range(num_classes)]


def own_shares(y_local: torch.Tensor | None, num_classes: int) -> list[float]:
    """min(1, n_c / (n_local / C)): how far the attacker's own data covers each class (1 = a uniform share)."""
    if y_local is None or len(y_local) == 0:
        return [0.0] * num_classes
    counts = torch.bincount(y_local.long().cpu(), minlength=num_classes).tolist()
    uniform = len(y_local) / num_classes
    return [min(1.0, n / uniform) for n in counts]


@dataclass
class OracleCoverage:
    """ORACLE (testbed-only upper bound): coverage from the true benign label histograms.

    score_c = (1 - own_weight) * C * b_c / sum(b) + own_weight * own_c, with b_c the benign count
    of class c (1.0 = a uniform share) and own_c the attacker's own share (see ``own_shares``):
    a class the attacker already holds needs no synthetic help.
    """

    k: int = 3
    own_weight: float = 0.25

    def estimate(
        self, benign_histograms: dict[int, list[int]] | None, num_classes: int, y_local: torch.Tensor | None = None
    ) -> Coverage:
        """Coverage scores from the benign histograms {partition id: per-class counts} and the attacker's labels."""
        if not benign_histograms:
            raise UserError("coverage = 'oracle' needs the benign clients' label histograms, and none were given")
        totals = [0] * num_classes
        for pid, hist in benign_histograms.items():
            if len(hist) != num_classes:
                raise UserError(f"benign histogram of client {pid} has {len(hist)} classes, expected {num_classes}")
            for c, n in enumerate(hist):
                totals[c] += int(n)
        total = sum(totals)
        benign = [num_classes * n / total if total else 0.0 for n in totals]
        own = own_shares(y_local, num_classes)
        scores = [(1 - self.own_weight) * benign[c] + self.own_weight * own[c] for c in range(num_classes)]
        targets = least_covered(scores, self.k)
        return Coverage(
            method="oracle", scores=scores, targets=targets, weights=_equal_weights(num_classes, targets),
            upper_bound=True,
            info={"benign_counts": totals, "benign_share": benign, "own_share": own,
                  "absent": [c for c in range(num_classes) if totals[c] == 0],
                  "note": "oracle: true benign label histograms (testbed-only upper bound)"},
        )


@dataclass
class InferredCoverage:
    """What the attacker can infer: the global model's per-class confidence on its probes, plus its own counts.

    score_c = (1 - own_weight) * conf_c + own_weight * own_c, where conf_c is the global model's
    mean probability of the true class on the attacker's probes of class c (its local data and the
    public auxiliary split) and own_c its own share (see ``own_shares``). A class without probes
    gets conf_c = 0: the attacker cannot see it covered, so it assumes it is not.
    """

    k: int = 3
    own_weight: float = 0.25
    batch_size: int = 256

    @torch.no_grad()
    def estimate(
        self, global_model: nn.Module, x_probe: torch.Tensor, y_probe: torch.Tensor, y_local: torch.Tensor,
        num_classes: int, device: torch.device | str = "cpu",
    ) -> Coverage:
        """Coverage scores from probes (x_probe, y_probe) and the attacker's labels ``y_local``."""
        device = torch.device(device)
        model = copy.deepcopy(global_model).to(device).eval()  # a copy: the caller's model stays untouched
        probs = []
        for s in range(0, len(y_probe), self.batch_size):
            probs.append(F.softmax(model(x_probe[s : s + self.batch_size].to(device)), 1).cpu())
        p = torch.cat(probs) if probs else torch.zeros(0, num_classes)
        conf, acc, probes = [], [], []
        for c in range(num_classes):
            m = y_probe == c
            probes.append(int(m.sum()))
            conf.append(float(p[m, c].mean()) if m.any() else 0.0)
            acc.append(float((p[m].argmax(1) == c).float().mean()) if m.any() else 0.0)
        counts = torch.bincount(y_local.long().cpu(), minlength=num_classes).tolist()
        own = own_shares(y_local, num_classes)
        scores = [(1 - self.own_weight) * conf[c] + self.own_weight * own[c] for c in range(num_classes)]
        targets = least_covered(scores, self.k)
        return Coverage(
            method="inferred", scores=scores, targets=targets, weights=_equal_weights(num_classes, targets),
            upper_bound=False,
            info={"confidence": conf, "accuracy": acc, "probes": probes, "local_counts": counts, "own_share": own,
                  "unprobed": [c for c in range(num_classes) if probes[c] == 0]},
        )
