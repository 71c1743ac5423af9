"""Statistics of the attack claim: per-seed effects in the same round game, and the claim tables.

One seed is one observation: per-round quantities are summed (inflation, benign change) or
averaged (rank change, Kendall tau) over the rounds of a job first, then summarised over seeds
with :func:`~fedattr.report.stats.paired_stats`:

- :func:`round_effects`: per round, in the SAME round game, the attacker's inflation v_a - v_a^cf,
  its rank change, the Kendall tau of the benign clients' values between the real and the
  counterfactual game, and the benign change sum_b (v_b - v_b^cf); with an efficient evaluator
  (exact Shapley) the benign change equals LOO inflation - attacker inflation (value transferred
  from benign clients rather than created);
- :func:`claim_table`: one :class:`ClaimRow` per (attack arm, evaluator, attacker);
- :func:`control_table`: the attack against each control, paired by seed (same split, same
  training seed): per seed, the attack's inflation minus the control's;
- :func:`sweep_table`: the claim table of every point of a sweep.

``fedattr stats RESULTS_DIR [CONTROLS_DIR]`` prints these tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedattr.protocol import RoundRecord
from fedattr.report.reader import ScenarioResults, load_results, merge_results, round_inflation, sweep_meta
from fedattr.report.stats import PairedStats, as_float, finite, fmt_num, fmt_p, kendall_between, paired_stats, ranks

__all__ = ["ClaimRow", "ControlRow", "round_effects", "job_effects", "claim_table", "control_table",
           "sweep_table", "format_table", "format_control_table", "TABLE_HEADERS", "CONTROL_HEADERS"]


def _strs(d: Mapping[Any, Any] | None) -> dict[str, float]:
    return {str(k): as_float(v) for k, v in (d or {}).items()}


def round_effects(values: Mapping[Any, Any], cf_vector: Mapping[Any, Any], attacker: Any,
                  loo_values: Mapping[Any, Any] | None = None,
                  loo_cf_vector: Mapping[Any, Any] | None = None) -> dict[str, float]:
    """One round's same-game effects of the attack for one evaluator.

    ``values``: {client: value} in the real game; ``cf_vector``: {client: value} in the
    counterfactual game (the attacker's honest update in place of its reply, every benign
    update unchanged). Returns ``inflation`` (attacker's v - v^cf), ``rank_change`` (rank in the
    counterfactual game minus rank in the real one: positive = the attack moved it up),
    ``benign_tau`` (Kendall tau of benign values between the two games), ``benign_change``
    (sum over benign clients of v - v^cf), ``cf_value`` (attacker's v^cf), ``cf_total`` (sum of
    the counterfactual vector: the round gain for an efficient evaluator) and, given the LOO
    values and vector, ``loo_inflation`` (= v(N) - v(N^cf)). {} when the attacker is absent.
    """
    a = str(attacker)
    real, cf = _strs(values), _strs(cf_vector)
    common = [k for k in real if k in cf]
    if a not in common:
        return {}
    benign = [k for k in common if k != a]
    r_real, r_cf = ranks({k: real[k] for k in common}), ranks({k: cf[k] for k in common})
    out = {
        "inflation": real[a] - cf[a],
        "rank_change": r_cf[a] - r_real[a],
        "benign_tau": kendall_between(real, cf, keys=benign),
        "benign_change": float(sum(real[k] - cf[k] for k in benign)),
        "cf_value": cf[a],
        "cf_total": float(sum(cf[k] for k in common)),
    }
    if loo_values is not None and loo_cf_vector is not None:
        out["loo_inflation"] = as_float(_strs(loo_values).get(a)) - as_float(_strs(loo_cf_vector).get(a))
    return out


def _vector(rec: RoundRecord, ev: str, attacker: str) -> dict[str, float] | None:
    """The counterfactual vector of ``attacker`` for ``ev`` in one round, when recorded."""
    vec = {str(k): v for k, v in (rec.counterfactual_vectors.get(ev) or {}).items()}.get(attacker)
    return _strs(vec) if vec else None


def job_effects(rounds: Sequence[RoundRecord], evaluator: str, attacker: Any) -> dict[str, float]:
    """One job's per-seed effects: inflation, benign change, LOO inflation, cf value and gain summed
    over rounds; rank change and benign tau averaged over rounds. Rounds without a counterfactual
    vector fall back to the attacker's counterfactual value alone (inflation and cf value only)."""
    a = str(attacker)
    sums = {"inflation": 0.0, "benign_change": 0.0, "loo_inflation": 0.0, "cf_value": 0.0, "cf_total": 0.0}
    seen = {k: 0 for k in sums}
    means: dict[str, list[float]] = {"rank_change": [], "benign_tau": []}
    for rec in rounds:
        vec = _vector(rec, evaluator, a)
        if vec:
            loo_vec = _vector(rec, "loo", a)
            eff = round_effects(rec.values.get(evaluator) or {}, vec, a,
                                rec.values.get("loo") if loo_vec else None, loo_vec)
        else:
            infl = round_inflation(rec, evaluator)
            if a not in infl:
                continue
            cf = _strs(rec.counterfactual_values.get(evaluator))[a]
            eff = {"inflation": infl[a], "cf_value": cf}
        for k in sums:
            if k in eff and math.isfinite(eff[k]):
                sums[k] += eff[k]
                seen[k] += 1
        for k in means:
            if k in eff:
                means[k].append(eff[k])
    out = {k: (sums[k] if seen[k] else math.nan) for k in sums}
    for k, xs in means.items():
        out[k] = _nanmean(xs)
    out["rounds"] = float(seen["inflation"])
    return out


def _nanmean(xs: Sequence[float]) -> float:
    fin = finite(xs)
    return float(np.mean(fin)) if fin else math.nan


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b != 0 else math.nan


@dataclass(frozen=True)
class ClaimRow:
    """One (attack arm, evaluator, attacker) of the claim table, over the finished seeds.

    ``inflation``: paired statistics of the per-seed summed counterfactual inflation;
    ``rel_cf``: the seeds' total inflation / their total |summed counterfactual value| (a ratio
    of sums: one seed whose counterfactual value is near 0 would dominate a mean of ratios);
    ``rel_gain``: total inflation / the counterfactual round gains (the sum of the Shapley
    counterfactual vector) when recorded; ``rank_change``, ``benign_tau``, ``benign_change``,
    ``loo_inflation``: means over seeds; ``acc_attack``/``acc_honest``: mean final accuracy of
    this arm and the honest arm on the same seeds; ``acc_delta``: paired statistics of the
    difference; ``point``: the sweep point's overrides as text ("" outside a sweep).
    """

    arm: str
    attack: str
    evaluator: str
    attacker: str
    inflation: PairedStats
    rel_cf: float
    rel_gain: float
    rank_change: float
    benign_tau: float
    benign_change: float
    loo_inflation: float
    acc_attack: float
    acc_honest: float
    acc_delta: PairedStats
    point: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain fields for JSON (stats.json)."""
        return {"point": self.point, "arm": self.arm, "attack": self.attack, "evaluator": self.evaluator,
                "attacker": self.attacker, "counterfactual_inflation": self.inflation.as_dict(),
                "relative_to_cf_value": self.rel_cf, "share_of_gain": self.rel_gain,
                "rank_change": self.rank_change, "benign_tau": self.benign_tau,
                "benign_change": self.benign_change, "loo_inflation": self.loo_inflation,
                "accuracy_attack": self.acc_attack, "accuracy_honest": self.acc_honest,
                "accuracy_delta": self.acc_delta.as_dict()}


def claim_table(res: ScenarioResults, evaluators: Sequence[str] | None = None,
                reference: ScenarioResults | None = None, point: str = "") -> list[ClaimRow]:
    """One :class:`ClaimRow` per (non-honest arm, evaluator, attacker) of ``res`` (finished jobs only).

    ``reference`` gives the honest arm (same seeds, same splits) for the accuracy when ``res``
    has none.
    """
    ref = reference if reference is not None else res
    acc_h = ({r.seed: r.final_accuracy() for r in ref.runs(ref.honest_arm) if r.finished}
             if ref.honest_arm else {})
    rows = []
    for arm in res.arms:
        if arm == res.honest_arm:
            continue
        runs = [r for r in res.runs(arm) if r.finished]  # a job still running is not a seed yet
        acc_a = {r.seed: r.final_accuracy() for r in runs}
        both = [s for s in acc_a if s in acc_h]
        for ev in evaluators or res.evaluators:
            for pid in res.attacker_ids:
                per = {r.seed: job_effects(r.rounds, ev, pid) for r in runs}
                gains = {r.seed: job_effects(r.rounds, "shapley", pid)["cf_total"] for r in runs}

                def ratio_of_sums(den: Mapping[int, float]) -> float:
                    # against the magnitude: a negative counterfactual value would flip the sign
                    ok = [s for s in per if math.isfinite(per[s]["inflation"]) and math.isfinite(den[s])]
                    return _ratio(sum(per[s]["inflation"] for s in ok), sum(den[s] for s in ok)) if ok else math.nan

                rows.append(ClaimRow(
                    arm=arm, attack=res.attack_of(arm), evaluator=ev, attacker=pid,
                    inflation=paired_stats(per[s]["inflation"] for s in per),
                    rel_cf=ratio_of_sums({s: abs(per[s]["cf_value"]) for s in per}),
                    rel_gain=ratio_of_sums(gains),
                    rank_change=_nanmean([per[s]["rank_change"] for s in per]),
                    benign_tau=_nanmean([per[s]["benign_tau"] for s in per]),
                    benign_change=_nanmean([per[s]["benign_change"] for s in per]),
                    loo_inflation=_nanmean([per[s]["loo_inflation"] for s in per]),
                    acc_attack=_nanmean([acc_a[s] for s in both] if both else list(acc_a.values())),
                    acc_honest=_nanmean([acc_h[s] for s in both]),
                    acc_delta=paired_stats(acc_a[s] - acc_h[s] for s in both), point=point))
    return rows


@dataclass(frozen=True)
class ControlRow:
    """The attack arm against one control arm, paired by seed.

    ``n``: seeds finished in both; ``attack_mean``/``control_mean``: mean inflation over those
    seeds; ``diff``: paired statistics of attack minus control per seed.
    """

    arm: str
    control: str
    evaluator: str
    attacker: str
    n: int
    attack_mean: float
    control_mean: float
    diff: PairedStats

    def as_dict(self) -> dict[str, Any]:
        """Plain fields for JSON."""
        return {"arm": self.arm, "control": self.control, "evaluator": self.evaluator, "attacker": self.attacker,
                "n": self.n, "attack_inflation": self.attack_mean, "control_inflation": self.control_mean,
                "difference": self.diff.as_dict()}


def control_table(att: ScenarioResults, ctl: ScenarioResults,
                  evaluators: Sequence[str] | None = None) -> list[ControlRow]:
    """The attack arms of ``att`` against the control arms of ``ctl``, paired by seed.

    Both must hold the same regime (same splits and training seeds per seed); UserError otherwise.
    """
    merge_results([att, ctl])  # refuses directories of different regimes, or the same arm twice
    evs = list(evaluators) if evaluators else [e for e in att.evaluators if e in ctl.evaluators]
    rows = []
    for a_arm in (a for a in att.arms if a != att.honest_arm):
        for c_arm in (a for a in ctl.arms if a != ctl.honest_arm):
            for ev in evs:
                for pid in att.attacker_ids:
                    a = {r.seed: job_effects(r.rounds, ev, pid)["inflation"] for r in att.runs(a_arm) if r.finished}
                    c = {r.seed: job_effects(r.rounds, ev, pid)["inflation"] for r in ctl.runs(c_arm) if r.finished}
                    both = [s for s in a if s in c and math.isfinite(a[s]) and math.isfinite(c[s])]
                    rows.append(ControlRow(a_arm, c_arm, ev, pid, len(both), _nanmean([a[s] for s in both]),
                                           _nanmean([c[s] for s in both]), paired_stats(a[s] - c[s] for s in both)))
    return rows


def sweep_table(sweep_dir: Any, evaluators: Sequence[str] | None = None) -> list[ClaimRow]:
    """:func:`claim_table` of every point of a sweep directory, each row's ``point`` its overrides
    as ``key=value`` text; points with no results give no row."""
    from pathlib import Path

    root = Path(sweep_dir)
    rows: list[ClaimRow] = []
    for p in sweep_meta(root).points:
        if (root / p.dir / "scenario.json").is_file():
            label = ", ".join(f"{k}={v}" for k, v in p.overrides.items())
            rows += claim_table(load_results(root / p.dir), evaluators, point=label)
    return rows


TABLE_HEADERS = ["arm", "evaluator", "n", "inflation mean [95% t-CI]", "bootstrap CI", "Wilcoxon p", "min p",
                 "pos", "MDE", "rel. to cf", "share of gain", "rank change", "benign tau", "benign change",
                 "LOO infl.", "acc attack / honest"]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def format_table(rows: Sequence[ClaimRow]) -> str:
    """The claim table as markdown (a first column ``point`` when the rows come from a sweep)."""
    sweep = any(r.point for r in rows)
    out = []
    for r in rows:
        s = r.inflation
        out.append(([r.point] if sweep else []) + [
            r.arm, r.evaluator, str(s.n), f"{fmt_num(s.mean)} [{fmt_num(s.t_low)}, {fmt_num(s.t_high)}]",
            f"[{fmt_num(s.boot_low)}, {fmt_num(s.boot_high)}]", fmt_p(s.wilcoxon_p), fmt_p(s.min_p),
            f"{s.positive}/{s.n}", fmt_num(s.detectable, False), fmt_num(r.rel_cf), fmt_num(r.rel_gain),
            fmt_num(r.rank_change), fmt_num(r.benign_tau), fmt_num(r.benign_change), fmt_num(r.loo_inflation),
            f"{fmt_num(r.acc_attack, False)} / {fmt_num(r.acc_honest, False)}"])
    return _table((["point"] if sweep else []) + TABLE_HEADERS, out)


CONTROL_HEADERS = ["attack", "control", "evaluator", "n", "attack infl.", "control infl.",
                   "attack - control [95% t-CI]", "bootstrap CI", "Wilcoxon p", "attack larger"]


def format_control_table(rows: Sequence[ControlRow]) -> str:
    """The attack-minus-control table as markdown."""
    return _table(CONTROL_HEADERS, [[
        r.arm, r.control, r.evaluator, str(r.n), fmt_num(r.attack_mean), fmt_num(r.control_mean),
        f"{fmt_num(r.diff.mean)} [{fmt_num(r.diff.t_low)}, {fmt_num(r.diff.t_high)}]",
        f"[{fmt_num(r.diff.boot_low)}, {fmt_num(r.diff.boot_high)}]", fmt_p(r.diff.wilcoxon_p),
        f"{r.diff.positive}/{r.diff.n}"] for r in rows])
