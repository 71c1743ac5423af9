"""The breadth study's numbers: cells, detector flag rates and AUCs, the cheap estimators' error, verdicts.

A *cell* is one scenario results directory of the breadth study: the claim regime with one factor
changed (dataset, model or aggregator). Per cell, over the seeds whose honest and attack jobs both
finished (a job still running is not a seed yet):

- per evaluator, the attacker's counterfactual and paired inflation (from
  :func:`~fedattr.report.summary.scenario_summary`), and the benign Kendall tau and benign value
  change between the real and the counterfactual round game (from
  :func:`~fedattr.report.claim_stats.job_effects`);
- the final-accuracy difference attack - honest, paired by seed;
- per detector: the attacker's flag rate in the attack arm minus in the honest arm, paired by seed,
  and the AUC of the attacker against the benign clients (:func:`pairwise_auc`);
- per cheap estimator: the relative L1 error of its value vector against exact Shapley's in every
  round game (:func:`relative_l1`), and whether its inflation verdict agrees with exact Shapley's.

The verdict rules (:func:`inflation_verdict`, :func:`accuracy_verdict`, :func:`reshape_verdict`,
:func:`detector_verdict`, :func:`combine`) are explicit functions of these statistics, with their
margins as module constants; :data:`RULES` is their text, printed on the page.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedattr.protocol import DetectorRound, RoundRecord
from fedattr.report.claim_stats import job_effects
from fedattr.report.detectors import detector_names
from fedattr.report.reader import JobResult, ScenarioResults, load_results
from fedattr.report.stats import (MeanCI, PairedStats, as_float, bounded_ci, finite, fmt_num, fmt_p, mean_ci,
                                  paired_stats)
from fedattr.report.summary import ScenarioSummary, scenario_summary
from fedattr.scenario import HONEST_ATTACK

__all__ = ["HOLDS", "FAILS", "OPEN", "ALPHA", "INFLATION_MARGIN", "ACCURACY_MARGIN", "FLAG_MARGIN",
           "WITHIN", "MIN_SEEDS", "EXTENDED_SEEDS", "ATTACK_METRICS", "attack_metrics", "EXACT",
           "CHEAP_ESTIMATORS", "NOT_MARGINAL", "RULES",
           "significant", "inflation_verdict", "accuracy_verdict", "equivalent", "reshape_verdict",
           "detector_verdict", "combine", "relative_l1", "round_games", "flag_rate", "pairwise_auc",
           "flatten_settings", "EvaluatorStats", "DetectorStats", "EstimatorAccuracy", "Cell", "load_cell", "factor_of",
           "Clause", "verdict_table"]

HOLDS, FAILS, OPEN = "holds", "does not hold", "not settled"
#: two-sided level of every test
ALPHA = 0.05
#: the smallest summed inflation of interest (utility units, summed over rounds): a t interval
#: entirely below it rules out an inflation that large
INFLATION_MARGIN = 0.01
#: accuracy is preserved when the attack costs less than this (2 accuracy points)
ACCURACY_MARGIN = 0.02
#: a detector is not triggered when the attack raises the attacker's flag rate by less than this
FLAG_MARGIN = 0.10
#: a round game whose relative L1 error is at most this counts as "within 5%"
WITHIN = 0.05
#: the study's planned minimum of seeds per cell
MIN_SEEDS = 6
#: seeds a cell needs when its exact-Shapley inflation interval includes 0 at fewer seeds
EXTENDED_SEEDS = 12
#: the attack's own round metrics shown per cell: what the synthetic batch and the update did
ATTACK_METRICS = {
    "target_precision": "targets right (precision)",
    "teacher_prob_after": "teacher's confidence in the targets",
    "alignment_after": "cos(synthetic batch gradient, proxy-validation gradient)",
    "cosine_to_honest": "cos(update, the attacker's honest update)",
}
#: the reference of every estimator
EXACT = "shapley"
#: the cheap estimators measured against exact Shapley, in table order
CHEAP_ESTIMATORS = ("logit_surrogate_shapley", "tmc", "gtg", "cv_shapley")
#: evaluators that are not marginal-utility attributions: a geometry score and the two mitigations
NOT_MARGINAL = frozenset({"cgsv", "clipped", "filtered"})

RULES = [
    f"**significant**: the 95% t interval excludes 0 and the two-sided Wilcoxon p < {ALPHA}.",
    f"**inflates** (an evaluator in a cell; the counterfactual inflation, summed over rounds, per seed): "
    f"holds when significant and positive; does not hold when the t interval lies entirely below "
    f"+{INFLATION_MARGIN} (no inflation of that size) and is not above 0; otherwise not settled.",
    f"**accuracy preserved** (final accuracy, attack - honest, per seed): holds when the t interval's "
    f"lower end is at or above -{ACCURACY_MARGIN} (the attack costs less than {ACCURACY_MARGIN * 100:.0f} points); "
    f"does not hold when its upper end is below -{ACCURACY_MARGIN}; otherwise not settled. "
    f"\"Equivalent within {ACCURACY_MARGIN * 100:.0f} points\" when the whole interval lies inside "
    f"±{ACCURACY_MARGIN}.",
    "**reshapes benign attribution** (exact Shapley; per seed the mean over rounds of the Kendall tau "
    "of the benign clients' values between the real and the counterfactual round game): holds when "
    "1 - tau is significant and positive; does not hold when every seed's tau is 1 (no "
    "benign ranking moved in any round); otherwise not settled. The benign value change "
    "sum_b (v_b - v_b^cf) is shown with it.",
    f"**a detector is triggered** (the attacker's flag rate, attack arm - honest arm, per seed): when "
    f"the difference is significant and positive; it is not triggered when the t interval's upper "
    f"end is below +{FLAG_MARGIN}; otherwise not settled. The AUC (attacker against benign clients, "
    f"pairs within a round, ties 0.5) is shown with it.",
    "**evades geometry-based detection** (a cell): holds when no detector is triggered and every one "
    "is settled as not triggered; does not hold when any detector is triggered; otherwise not settled.",
    f"**across datasets / across models**: the exact-Shapley *inflates* verdict of the reference cell "
    f"and of every cell that changes the dataset (the model); **across evaluators**: *inflates* for "
    f"every marginal-utility evaluator (all but {', '.join(sorted(NOT_MARGINAL))}) of the reference "
    f"cell; **survives robust aggregation**: exact Shapley's *inflates* in every cell with an "
    f"aggregator other than FedAvg; **inflates**, **reshapes**, **accuracy preserved**, **evades "
    f"detection** over cells: the reference cell for *inflates*, every cell for the others.",
    "**over several verdicts**: does not hold when any does not hold; holds when all hold; otherwise "
    "not settled (also when no cell bears on the clause).",
    f"A cell with fewer paired seeds than its scenario plans, or fewer than {MIN_SEEDS}, or fewer than "
    f"{EXTENDED_SEEDS} while its exact-Shapley inflation interval includes 0, is marked **short**; "
    f"with n seeds no Wilcoxon p can be below 2/2^n (0.125 at 4 seeds), so such a cell cannot hold "
    f"a significant result.",
]


# --- verdict rules -------------------------------------------------------------------------------

def significant(st: PairedStats, alpha: float = ALPHA) -> bool:
    """True when the t interval excludes 0 and the Wilcoxon p is below ``alpha``."""
    ok = math.isfinite(st.t_low) and math.isfinite(st.t_high) and math.isfinite(st.wilcoxon_p)
    return ok and (st.t_low > 0 or st.t_high < 0) and st.wilcoxon_p < alpha


def inflation_verdict(st: PairedStats, margin: float = INFLATION_MARGIN) -> str:
    """``holds`` (significant, positive), ``does not hold`` (t interval below +margin, not above 0) or ``not settled``."""
    if significant(st) and st.t_low > 0:
        return HOLDS
    if math.isfinite(st.t_high) and st.t_high < margin and not st.t_low > 0:
        return FAILS
    return OPEN


def accuracy_verdict(st: PairedStats, margin: float = ACCURACY_MARGIN) -> str:
    """``holds`` when the t interval of attack - honest starts at or above -margin; ``does not hold``
    when it ends below -margin; ``not settled`` otherwise (also for fewer than 2 seeds)."""
    if not (math.isfinite(st.t_low) and math.isfinite(st.t_high)):
        return OPEN
    if st.t_low >= -margin:
        return HOLDS
    return FAILS if st.t_high < -margin else OPEN


def equivalent(st: PairedStats, margin: float = ACCURACY_MARGIN) -> bool:
    """True when the whole t interval lies inside [-margin, +margin]."""
    return math.isfinite(st.t_low) and math.isfinite(st.t_high) and -margin <= st.t_low and st.t_high <= margin


def reshape_verdict(tau: MeanCI) -> str:
    """From the per-seed benign taus: ``holds`` when 1 - tau is significant and positive, ``does not
    hold`` when every seed's tau is 1 (no benign ranking moved), ``not settled`` otherwise."""
    if tau.n >= 1 and all(v == 1.0 for v in tau.values):
        return FAILS
    moved = paired_stats(1.0 - v for v in tau.values)
    return HOLDS if significant(moved) and moved.t_low > 0 else OPEN


def detector_verdict(diff: PairedStats, margin: float = FLAG_MARGIN) -> str:
    """``triggered``, ``not triggered`` (t interval's upper end below +margin) or ``not settled``."""
    if significant(diff) and diff.t_low > 0:
        return "triggered"
    if math.isfinite(diff.t_high) and diff.t_high < margin:
        return "not triggered"
    return OPEN


def combine(verdicts: Iterable[str]) -> str:
    """Several verdicts as one: does not hold if any does not, holds if all hold (and there is one)."""
    vs = list(verdicts)
    if FAILS in vs:
        return FAILS
    return HOLDS if vs and all(v == HOLDS for v in vs) else OPEN


# --- round games and detectors -------------------------------------------------------------------

def relative_l1(estimate: Mapping[Any, Any], exact: Mapping[Any, Any]) -> float:
    """``||v_hat - v||_1 / ||v||_1`` over the exact vector's clients; nan when a value is missing or ``v = 0``."""
    ex = {str(k): as_float(v) for k, v in exact.items()}
    est = {str(k): as_float(v) for k, v in estimate.items()}
    if not ex or any(k not in est or not math.isfinite(est[k]) or not math.isfinite(ex[k]) for k in ex):
        return math.nan
    norm = sum(abs(v) for v in ex.values())
    return sum(abs(est[k] - ex[k]) for k in ex) / norm if norm > 0 else math.nan


def round_games(rec: RoundRecord, attackers: Sequence[str]) -> list[dict[str, dict[str, float]]]:
    """The value vectors of every evaluator in each distinct round game of one round record.

    The real game, then each attacker's counterfactual game (its honest update in place of its
    reply) when recorded; a counterfactual game whose exact-Shapley vector equals the real one (the
    attacker sent its honest update, e.g. in a warm-up round) is the same game and is left out.
    """
    real = {ev: {str(k): as_float(v) for k, v in vec.items()} for ev, vec in rec.values.items() if vec}
    games = [real]
    for a in attackers:
        cf = {}
        for ev, per in rec.counterfactual_vectors.items():
            vec = {str(k): v for k, v in (per or {}).items()}.get(str(a))
            if vec:
                cf[ev] = {str(k): as_float(v) for k, v in vec.items()}
        if cf.get(EXACT) and cf[EXACT] != real.get(EXACT):
            games.append(cf)
    return games


def flag_rate(job: JobResult, name: str, clients: set[str]) -> float:
    """Share of (round, client) pairs of ``clients`` that detector ``name`` flagged in one job (nan: none)."""
    flags = [bool(f) for rec in job.rounds for pid, f in
             (rec.detectors[name].flags.items() if name in rec.detectors else ()) if str(pid) in clients]
    return float(np.mean(flags)) if flags else math.nan


def _suspicious_high(det: DetectorRound) -> bool | None:
    """Whether a higher score is more suspicious in this round, read from its ranks (None: all tied)."""
    scored = [(det.ranks[p], as_float(s)) for p, s in det.scores.items() if p in det.ranks and math.isfinite(as_float(s))]
    scored.sort()
    for (_, s_top), (_, s_low) in zip(scored, reversed(scored)):
        if s_top != s_low:
            return s_top > s_low
    return None


def pairwise_auc(rounds: Iterable[RoundRecord], name: str, attackers: set[str]) -> float:
    """AUC of detector ``name``'s scores for the attacker against the benign clients (Mann-Whitney form).

    Pairs (attacker, benign client) of the same round, pooled over rounds: 1 when the attacker's
    score is the more suspicious, 0.5 on a tie, 0 otherwise; their mean (nan without a pair).
    Scores are compared only within a round, since their scale changes from round to round; the
    direction (higher or lower = more suspicious) is read from the round's recorded ranks.
    """
    wins: list[float] = []
    for rec in rounds:
        det = rec.detectors.get(name)
        if det is None:
            continue
        high = _suspicious_high(det)
        scores = {str(p): as_float(s) for p, s in det.scores.items()}
        scores = {p: s for p, s in scores.items() if math.isfinite(s)}
        for a in (p for p in scores if p in attackers):
            for b in (p for p in scores if p not in attackers):
                if high is None or scores[a] == scores[b]:
                    wins.append(0.5)
                else:
                    wins.append(float((scores[a] > scores[b]) == high))
    return float(np.mean(wins)) if wins else math.nan


# --- one cell ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvaluatorStats:
    """One evaluator in one cell: counterfactual and paired inflation, benign tau and change, verdict."""

    evaluator: str
    counterfactual: PairedStats
    paired: PairedStats
    benign_tau: MeanCI
    benign_change: PairedStats
    verdict: str


@dataclass(frozen=True)
class DetectorStats:
    """One detector in one cell: the attacker's flag rate per arm, their paired difference, the AUCs."""

    detector: str
    rate_attack: MeanCI
    rate_honest: MeanCI
    difference: PairedStats
    auc_attack: MeanCI
    auc_honest: MeanCI
    verdict: str


@dataclass(frozen=True)
class EstimatorAccuracy:
    """One cheap estimator against exact Shapley in one cell: per-round-game relative L1 errors and
    whether its inflation verdict (sign, significance) agrees with exact Shapley's."""

    estimator: str
    errors: tuple[float, ...]
    inflation: PairedStats
    exact_inflation: PairedStats

    @property
    def games(self) -> int:
        """Round games with a defined error."""
        return len(self.errors)

    @property
    def median(self) -> float:
        """Median relative L1 error (nan without a game)."""
        return float(np.median(self.errors)) if self.errors else math.nan

    @property
    def within(self) -> float:
        """Share of round games whose error is at most :data:`WITHIN`."""
        return float(np.mean([e <= WITHIN for e in self.errors])) if self.errors else math.nan

    @property
    def worst(self) -> float:
        """The largest error (nan without a game)."""
        return float(max(self.errors)) if self.errors else math.nan

    @property
    def agrees(self) -> bool | None:
        """Same sign of mean inflation and same significance as exact Shapley (None when undefined)."""
        a, b = self.inflation, self.exact_inflation
        if not (math.isfinite(a.mean) and math.isfinite(b.mean)):
            return None
        return bool(np.sign(a.mean) == np.sign(b.mean) and significant(a) == significant(b))


@dataclass
class Cell:
    """One breadth cell, read from its results directory (finished jobs only).

    ``factor``/``value``: the setting it changes from the reference (``reference`` for the
    reference cell itself); ``other``: further differing settings as ``key: value (reference)``;
    ``seeds``: seeds with both arms finished; ``planned``: the scenario's seeds.
    """

    name: str
    path: Path
    res: ScenarioResults
    summary: ScenarioSummary
    attack_arm: str | None
    attacker: str | None
    seeds: list[int]
    planned: int
    factor: str = ""
    value: str = ""
    other: list[str] = field(default_factory=list)
    evaluators: dict[str, EvaluatorStats] = field(default_factory=dict)
    accuracy: PairedStats | None = None
    detectors: dict[str, DetectorStats] = field(default_factory=dict)
    estimators: dict[str, EstimatorAccuracy] = field(default_factory=dict)
    attack: dict[str, MeanCI] = field(default_factory=dict)

    @property
    def required(self) -> int:
        """Paired seeds the cell needs: its scenario's, at least :data:`MIN_SEEDS`, and
        :data:`EXTENDED_SEEDS` while exact Shapley's inflation interval includes 0."""
        need = max(self.planned, MIN_SEEDS)
        st = self.evaluators.get(EXACT)
        ci = st.counterfactual if st is not None else None
        if ci is not None and not (ci.t_low > 0 or ci.t_high < 0):  # includes 0, or undefined (nan)
            need = max(need, EXTENDED_SEEDS)
        return need

    @property
    def short(self) -> bool:
        """Fewer paired seeds than :attr:`required`."""
        return len(self.seeds) < self.required

    @property
    def aggregator(self) -> str:
        """The cell's aggregation strategy."""
        return self.res.scenario.aggregation.strategy

    def verdict(self, clause: str) -> str:
        """The cell's own verdict on ``inflates`` (exact Shapley), ``accuracy``, ``reshapes`` or ``evades``."""
        if clause == "inflates":
            st = self.evaluators.get(EXACT)
            return st.verdict if st is not None else OPEN
        if clause == "accuracy":
            return accuracy_verdict(self.accuracy) if self.accuracy is not None else OPEN
        if clause == "reshapes":
            st = self.evaluators.get(EXACT)
            return reshape_verdict(st.benign_tau) if st is not None else OPEN
        if clause == "evades":
            vs = [d.verdict for d in self.detectors.values()]
            if "triggered" in vs:
                return FAILS
            return HOLDS if vs and all(v == "not triggered" for v in vs) else OPEN
        raise KeyError(clause)


def flatten_settings(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A scenario dump as dotted keys; a list of named tables (arms, evaluators, detectors) becomes
    ``key[name]`` = ``present`` plus ``key[name].field`` keys, so that one added or changed item is
    one difference."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten_settings(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, list) and obj and all(isinstance(x, dict) and "name" in x for x in obj):
        out = {}
        for x in obj:
            key = f"{prefix[:-1]}[{x['name']}]"
            out[key] = "present"
            out.update(flatten_settings({k: v for k, v in x.items() if k != "name"}, key + "."))
        return out
    return {prefix[:-1]: obj}


#: settings that are not the regime (what a cell is called, its seeds, where it writes)
_IGNORED = ("name", "description", "seeds", "output_dir")
#: the study's factors, in the order a cell's factor is named: (label, setting-key prefix)
_FACTORS = (("dataset", "data.dataset"), ("model", "model"), ("aggregator", "aggregation."))


def factor_of(settings: Mapping[str, Any], reference: Mapping[str, Any]) -> tuple[str, str, list[str]]:
    """The factor a cell changes from ``reference`` (flattened scenarios): (label, value, other differences).

    ``("reference", "", [])`` when nothing differs; the factor is the first of dataset, model,
    aggregator that differs; every other differing setting is listed as ``key: value (reference)``.
    """
    diff = sorted(k for k in set(settings) | set(reference)
                  if k not in _IGNORED and settings.get(k) != reference.get(k))
    label, value, used = "reference", "", set()
    for name, key in _FACTORS:
        keys = [k for k in diff if k == key or (key.endswith(".") and k.startswith(key))]
        if keys:
            label, used = name, set(keys)
            if name == "aggregator":  # the strategy with the parameters that differ
                params = [f"{k.removeprefix('aggregation.params.')}={settings.get(k)}" for k in keys
                          if k != "aggregation.strategy"]
                value = str(settings.get("aggregation.strategy")) + (f" ({', '.join(params)})" if params else "")
            else:
                value = str(settings.get(key))
            break
    def shown(x: Any) -> str:
        return "absent" if x is None else str(x)

    other = [f"{k}: {shown(settings.get(k))} ({shown(reference.get(k))})" for k in diff if k not in used]
    return label, value, other


def _finished_only(res: ScenarioResults) -> ScenarioResults:
    """The results without unfinished jobs (a job still running is not a seed yet)."""
    return replace(res, jobs={k: j for k, j in res.jobs.items() if j.finished})


def _detector_stats(res: ScenarioResults, arm: str, honest: str, attacker: str, seeds: list[int]) -> dict[str, DetectorStats]:
    out = {}
    attackers = {attacker}
    for name in detector_names(res):
        r_a = {s: flag_rate(res.jobs[(arm, s)], name, attackers) for s in seeds}
        r_h = {s: flag_rate(res.jobs[(honest, s)], name, attackers) for s in seeds}
        diff = paired_stats(r_a[s] - r_h[s] for s in seeds)
        out[name] = DetectorStats(
            detector=name, rate_attack=bounded_ci(r_a.values()), rate_honest=bounded_ci(r_h.values()),
            difference=diff,
            auc_attack=bounded_ci(pairwise_auc(res.jobs[(arm, s)].rounds, name, attackers) for s in seeds),
            auc_honest=bounded_ci(pairwise_auc(res.jobs[(honest, s)].rounds, name, attackers) for s in seeds),
            verdict=detector_verdict(diff))
    return out


def _estimator_accuracy(res: ScenarioResults, cell_arms: Sequence[str], attacker: str, seeds: list[int],
                        infl: Mapping[str, PairedStats]) -> dict[str, EstimatorAccuracy]:
    if EXACT not in res.evaluators:
        return {}
    out = {}
    for est in (e for e in CHEAP_ESTIMATORS if e in res.evaluators):
        errors = []
        for arm in cell_arms:
            for s in seeds:
                for rec in res.jobs[(arm, s)].rounds:
                    for game in round_games(rec, [attacker]):
                        if EXACT in game and est in game:
                            e = relative_l1(game[est], game[EXACT])
                            if math.isfinite(e):
                                errors.append(e)
        out[est] = EstimatorAccuracy(est, tuple(errors), infl[est], infl[EXACT])
    return out


def attack_metrics(jobs: Sequence[JobResult], attacker: str) -> dict[str, MeanCI]:
    """Per metric of :data:`ATTACK_METRICS`: mean and t-CI over jobs of each job's mean over the
    rounds in which the attacker injected (active, past its warm-up); a metric no round recorded
    has ``n = 0``."""
    per_job: dict[str, list[float]] = {name: [] for name in ATTACK_METRICS}
    for job in jobs:
        injecting = [m for m in (r.attack_metrics.get(int(attacker)) or {} for r in job.rounds)
                     if m.get("active") and not m.get("warming_up")]
        for name, means in per_job.items():
            xs = finite(m.get(name) for m in injecting)
            if xs:
                means.append(float(np.mean(xs)))
    return {name: mean_ci(means) for name, means in per_job.items()}


def load_cell(path: str | Path) -> Cell:
    """Read one cell directory (finished jobs only) and compute its statistics; its factor is named by
    :func:`fedattr.report.breadth.load_cells`, which compares the cells."""
    path = Path(path)
    res = _finished_only(load_results(path))
    summary = scenario_summary(res)
    honest = res.honest_arm
    attack = next((a for a in res.arms if res.attack_of(a) != HONEST_ATTACK), None)
    attacker = res.attacker_ids[0] if res.attacker_ids else None
    seeds = [s for s in res.seeds if honest is not None and attack is not None
             and (honest, s) in res.jobs and (attack, s) in res.jobs]
    cell = Cell(name=path.name, path=path, res=res, summary=summary, attack_arm=attack, attacker=attacker,
                seeds=seeds, planned=len(res.scenario.seeds))
    if attack is None or attacker is None or honest is None:
        return cell
    infl = {}
    for ev in res.evaluators:
        st = summary.attacker[attack][ev][attacker]
        per = [job_effects(res.jobs[(attack, s)].rounds, ev, attacker) for s in seeds]
        # over the paired seeds, like every other number of the cell
        infl[ev] = paired_stats(res.jobs[(attack, s)].counterfactual_inflation(ev).get(attacker, math.nan)
                                for s in seeds)
        cell.evaluators[ev] = EvaluatorStats(
            evaluator=ev, counterfactual=infl[ev], paired=st.paired_inflation,
            benign_tau=bounded_ci(p["benign_tau"] for p in per),
            benign_change=paired_stats(p["benign_change"] for p in per), verdict=inflation_verdict(infl[ev]))
    cell.accuracy = paired_stats(res.jobs[(attack, s)].final_accuracy() - res.jobs[(honest, s)].final_accuracy()
                                 for s in seeds)
    cell.detectors = _detector_stats(res, attack, honest, attacker, seeds)
    cell.estimators = _estimator_accuracy(res, [honest, attack], attacker, seeds, infl)
    cell.attack = attack_metrics([res.jobs[(attack, s)] for s in seeds], attacker)
    return cell


# --- the verdict table ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Clause:
    """One clause of the claim: its verdict and the figures behind it (one line per cell or evaluator)."""

    clause: str
    verdict: str
    figures: list[str]


def _mark(cell: Cell) -> str:
    return f"{cell.name}{' (short: ' + str(len(cell.seeds)) + ' seeds)' if cell.short else ''}"


def _infl_fig(cell: Cell, ev: str = EXACT) -> str:
    st = cell.evaluators[ev].counterfactual if ev in cell.evaluators else None
    if st is None:
        return f"{_mark(cell)}: no {ev}"
    return (f"{_mark(cell)}: {ev} {fmt_num(st.mean)} [{fmt_num(st.t_low)}, {fmt_num(st.t_high)}], "
            f"p {fmt_p(st.wilcoxon_p)}, {st.positive}/{st.n} positive: {cell.evaluators[ev].verdict}")


def verdict_table(cells: Sequence[Cell], reference: Cell | None) -> list[Clause]:
    """The eight clauses of the claim with their verdicts over ``cells`` (rules: :data:`RULES`)."""
    ref = [reference] if reference is not None else []
    by = {lab: [c for c in cells if c.factor == lab] for lab, _ in _FACTORS}
    clauses = []

    def over(name: str, group: Sequence[Cell]) -> Clause:
        return Clause(name, combine(c.verdict("inflates") for c in group) if group else OPEN,
                      [_infl_fig(c) for c in group] or ["no cell"])

    def across(name: str, factor: str) -> Clause:
        if not by[factor]:
            return Clause(name, OPEN, [f"no cell changes the {factor}"])
        c = over(name, ref + by[factor])
        if reference is None:  # the claim regime itself is one of the places it must hold
            return Clause(name, combine([c.verdict, OPEN]), c.figures + ["no reference cell"])
        return c

    clauses.append(over("inflates (reference cell)", ref))
    clauses.append(across("across datasets", "dataset"))
    clauses.append(across("across models", "model"))
    if reference is not None:
        evs = [ev for ev in reference.evaluators if ev not in NOT_MARGINAL]
        clauses.append(Clause("across evaluators", combine(reference.evaluators[ev].verdict for ev in evs) if evs else OPEN,
                              [_infl_fig(reference, ev) for ev in evs]))
    else:
        clauses.append(Clause("across evaluators", OPEN, ["no reference cell"]))

    def per_cell(name: str, clause: str, fig: Any) -> Clause:
        return Clause(name, combine(c.verdict(clause) for c in cells) if cells else OPEN,
                      [f"{_mark(c)}: {fig(c)}: {c.verdict(clause)}" for c in cells])

    def reshape_fig(c: Cell) -> str:
        st = c.evaluators.get(EXACT)
        if st is None:
            return "no exact Shapley"
        t, b = st.benign_tau, st.benign_change
        return (f"benign tau {fmt_num(t.mean)} [{fmt_num(t.low)}, {fmt_num(t.high)}], benign change "
                f"{fmt_num(b.mean)} [{fmt_num(b.t_low)}, {fmt_num(b.t_high)}]")

    def acc_fig(c: Cell) -> str:
        a = c.accuracy
        if a is None:
            return "no paired seeds"
        eq = "equivalent within 2 points" if equivalent(a) else "not shown equivalent within 2 points"
        return f"attack - honest {fmt_num(a.mean)} [{fmt_num(a.t_low)}, {fmt_num(a.t_high)}], {eq}"

    def det_fig(c: Cell) -> str:
        return "; ".join(f"{d.detector} {fmt_num(d.difference.mean)} [{fmt_num(d.difference.t_low)}, "
                         f"{fmt_num(d.difference.t_high)}] AUC {fmt_num(d.auc_attack.mean, False)} ({d.verdict})"
                         for d in c.detectors.values()) or "no detector"

    clauses.append(per_cell("reshapes benign attribution", "reshapes", reshape_fig))
    clauses.append(per_cell("accuracy preserved", "accuracy", acc_fig))
    clauses.append(per_cell("evades geometry-based detection", "evades", det_fig))
    robust = [c for c in cells if c.aggregator != "fedavg"]
    clauses.append(over("survives robust aggregation", robust) if robust else
                   Clause("survives robust aggregation", OPEN, ["no cell with a robust aggregator"]))
    return clauses
