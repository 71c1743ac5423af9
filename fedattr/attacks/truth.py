"""How well the attacker's targets matched the truth: testbed-only scores against the benign histograms.

The truth is the set of classes no benign client holds (``lacking``), computed from the true
benign label histograms, which the attacker never uses unless ``coverage="oracle"``. Every value
is a float, so the dict can travel in a Flower ConfigRecord; class sets are encoded as bit masks
(bit c set = class c in the set), exact in a float for up to 52 classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def class_bits(classes: Sequence[int]) -> float:
    """The bit mask of a class set as a float (bit c = class c)."""
    return float(sum(1 << int(c) for c in set(classes)))


def benign_totals(histograms: Mapping[int, Sequence[int]], num_classes: int) -> list[int]:
    """Per-class example count summed over the benign histograms."""
    totals = [0] * num_classes
    for hist in histograms.values():
        for c, n in enumerate(hist):
            totals[c] += int(n)
    return totals


def _auc(scores: Sequence[float], positive: set[int]) -> float:
    """P(score of a lacking class < score of a covered class), ties count half (Mann-Whitney AUC)."""
    pos = [scores[c] for c in range(len(scores)) if c in positive]
    neg = [scores[c] for c in range(len(scores)) if c not in positive]
    if not pos or not neg:
        return math.nan
    wins = sum(1.0 if p < q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def target_truth(
    targets: Sequence[int], benign_histograms: Mapping[int, Sequence[int]] | None, num_classes: int,
    scores: Sequence[float | None] | None = None,
) -> dict[str, float]:
    """Scores of the targets (and of the coverage scores, lower = less covered) against the lacking classes.

    Keys: ``benign_lacking_count``, ``benign_lacking_bits``, ``target_bits``, ``target_precision``
    (share of targets benign clients lack; nan without targets), ``target_recall`` (share of the
    lacking classes targeted; nan when none is lacking), ``target_oracle_overlap`` (share of the
    targets among the len(targets) classes with the fewest benign examples) and, given scores,
    ``coverage_auc`` (how well the scores rank lacking classes below the others; 1 = perfectly).
    Empty without histograms.
    """
    if not benign_histograms:
        return {}
    totals = benign_totals(benign_histograms, num_classes)
    lacking = {c for c in range(num_classes) if totals[c] == 0}
    tset = {int(c) for c in targets}
    hit = len(tset & lacking)
    k = len(tset)
    fewest = set(sorted(range(num_classes), key=lambda c: (totals[c], c))[:k])
    out = {
        "benign_lacking_count": float(len(lacking)),
        "benign_lacking_bits": class_bits(sorted(lacking)),
        "target_bits": class_bits(sorted(tset)),
        "target_precision": hit / k if k else math.nan,
        "target_recall": hit / len(lacking) if lacking else math.nan,
        "target_oracle_overlap": len(tset & fewest) / k if k else math.nan,
    }
    if scores is not None and len(scores) == num_classes and all(s is not None for s in scores):
        out["coverage_auc"] = _auc([float(s) for s in scores], lacking)
    return out
