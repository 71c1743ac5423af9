"""Statistics of the attack claim: per-seed paired inflation and the tests a referee asks for.

Pure numpy/scipy over round records (plain dicts, as stored in ``rounds.jsonl``). One seed is
one observation: per-round quantities are summed (inflation, benign change) or averaged (rank
change, Kendall tau) over the rounds of a job first, then summarised over seeds:

- ``paired_stats``: mean with a t confidence interval, Wilcoxon signed-rank test, bootstrap
  confidence interval and the count of positive seeds;
- ``round_effects``: per round, in the SAME round game, the attacker's inflation v_a - v_a^cf,
  its rank change, the Kendall tau of the benign clients' values between the real and the
  counterfactual game, and the benign change sum_b (v_b - v_b^cf); with an efficient evaluator
  (exact Shapley) the benign change equals LOO inflation - attacker inflation (value transferred
  from benign clients rather than created);
- ``claim_table``: one row per (arm, evaluator, attacker) of a results directory;
- ``control_table``: the attack against each control, paired by seed (same split, same training
  seed): per seed, the attack's inflation minus the control's.

``python -m fedattr.report.claim_stats RESULTS_DIR [CONTROLS_DIR]`` prints the table and this machine's
matmul rate; with a second directory (the same regime's controls and honest arm) also that
directory's table and the attack-minus-control comparison, and the second directory's honest arm
is the accuracy reference when the first has none. A sweep directory gives one table, a row per
(point, arm, evaluator), the point named by its overrides.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

__all__ = [
    "PairedStats", "paired_stats", "ranks_of", "round_effects", "job_effects", "claim_table",
    "format_table", "matmul_rate", "detectable_effect", "control_table", "format_control_table", "sweep_table",
]


def _f(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


@dataclass(frozen=True)
class PairedStats:
    """Summary of per-seed paired differences (nan where undefined, e.g. n < 2)."""

    n: int
    mean: float
    t_low: float
    t_high: float
    wilcoxon_p: float
    boot_low: float
    boot_high: float
    positive: int
    values: tuple[float, ...] = ()

    @property
    def t_half(self) -> float:
        """Half-width of the t interval."""
        return (self.t_high - self.t_low) / 2

    @property
    def detectable(self) -> float:
        """The smallest effect these seeds detect (80% power, 5% two-sided), from their spread."""
        sd = float(np.std(self.values, ddof=1)) if len(self.values) > 1 else math.nan
        return detectable_effect(sd, self.n)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (nan stays nan; the results writer turns it into null)."""
        d = asdict(self)
        d["values"] = list(self.values)
        return d


def paired_stats(
    diffs: Iterable[Any], confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0
) -> PairedStats:
    """Mean ± t-CI, two-sided Wilcoxon signed-rank p, percentile bootstrap CI and positive count.

    ``diffs`` are per-seed paired differences (non-finite ones are dropped). The Wilcoxon test
    uses scipy's exact null distribution for small n without ties and zeros; a sample of zeros
    gives p = 1. The bootstrap resamples seeds (``n_resamples``, seeded).
    """
    xs = np.asarray([v for v in (_f(x) for x in diffs) if math.isfinite(v)], dtype=float)
    n = len(xs)
    if n == 0:
        return PairedStats(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(xs.mean())
    positive = int((xs > 0).sum())
    if n < 2:
        return PairedStats(n, mean, math.nan, math.nan, math.nan, math.nan, math.nan, positive, tuple(xs))
    sd = float(xs.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    if np.all(xs == 0):
        p = 1.0
    else:
        p = float(sps.wilcoxon(xs, alternative="two-sided").pvalue)
    if sd == 0:
        lo = hi = mean
    else:
        boot = sps.bootstrap((xs,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                             method="percentile", random_state=np.random.default_rng(seed))
        lo, hi = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    return PairedStats(n, mean, mean - half, mean + half, p, lo, hi, positive, tuple(float(v) for v in xs))


def detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest mean a two-sided paired t test of ``n`` seeds detects with ``power`` at level ``alpha``.

    (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n), the usual t approximation; nan for n < 2.
    """
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return float((sps.t.ppf(1 - alpha / 2, n - 1) + sps.t.ppf(power, n - 1)) * sd / math.sqrt(n))


def ranks_of(values: Mapping[Any, float]) -> dict[str, float]:
    """Rank of each client by value (1 = highest); ties share their mean rank."""
    keys = [str(k) for k in values]
    v = np.asarray([_f(values[k]) for k in values], dtype=float)
    r = sps.rankdata(-v, method="average")
    return {k: float(x) for k, x in zip(keys, r)}


def round_effects(
    values: Mapping[Any, Any], cf_vector: Mapping[Any, Any], attacker: Any,
    loo_values: Mapping[Any, Any] | None = None, loo_cf_vector: Mapping[Any, Any] | None = None,
) -> dict[str, float]:
    """One round's same-game effects of the attack for one evaluator.

    ``values``: {client: value} in the real game; ``cf_vector``: {client: value} in the
    counterfactual game (the attacker's honest update in place of its reply, every benign
    update unchanged). Returns ``inflation`` (attacker's v - v^cf), ``rank_change`` (rank in the
    counterfactual game minus rank in the real one: positive = the attack moved it up),
    ``benign_tau`` (Kendall tau of benign values between the two games), ``benign_change``
    (sum over benign clients of v - v^cf), ``cf_value`` (attacker's v^cf), ``cf_total`` (sum of
    the counterfactual vector: the round gain for an efficient evaluator) and, given the LOO
    values and vector, ``loo_inflation`` (= v(N) - v(N^cf)).
    """
    a = str(attacker)
    real = {str(k): _f(v) for k, v in values.items()}
    cf = {str(k): _f(v) for k, v in cf_vector.items()}
    common = [k for k in real if k in cf]
    if a not in common:
        return {}
    benign = [k for k in common if k != a]
    r_real, r_cf = ranks_of({k: real[k] for k in common}), ranks_of({k: cf[k] for k in common})
    tau = math.nan
    if len(benign) >= 2:
        xa, xb = [real[k] for k in benign], [cf[k] for k in benign]
        if len(set(xa)) > 1 and len(set(xb)) > 1:
            tau = float(sps.kendalltau(xa, xb).statistic)
    out = {
        "inflation": real[a] - cf[a],
        "rank_change": r_cf[a] - r_real[a],
        "benign_tau": tau,
        "benign_change": float(sum(real[k] - cf[k] for k in benign)),
        "cf_value": cf[a],
        "cf_total": float(sum(cf[k] for k in common)),
    }
    if loo_values is not None and loo_cf_vector is not None:
        lv, lc = _f(loo_values.get(a, loo_values.get(attacker))), _f(loo_cf_vector.get(a, loo_cf_vector.get(attacker)))
        out["loo_inflation"] = lv - lc
    return out


def _get(d: Mapping[Any, Any] | None, key: Any) -> Any:
    if not d:
        return None
    return d.get(str(key), d.get(key))


def job_effects(rounds: Sequence[Mapping[str, Any]], evaluator: str, attacker: Any) -> dict[str, float]:
    """One job's per-seed effects: inflation, benign change, LOO inflation, cf value and gain summed over
    rounds; rank change and benign tau averaged over rounds. Rounds without a counterfactual vector
    fall back to the attacker's counterfactual value alone (inflation and cf value only)."""
    sums = {"inflation": 0.0, "benign_change": 0.0, "loo_inflation": 0.0, "cf_value": 0.0, "cf_total": 0.0}
    seen = {k: 0 for k in sums}
    means: dict[str, list[float]] = {"rank_change": [], "benign_tau": []}
    for rec in rounds:
        vals = _get(rec.get("values"), evaluator) or {}
        vec = _get(_get(rec.get("counterfactual_vectors"), evaluator), attacker)
        if vec:
            loo_vals = _get(rec.get("values"), "loo")
            loo_vec = _get(_get(rec.get("counterfactual_vectors"), "loo"), attacker)
            eff = round_effects(vals, vec, attacker, loo_vals, loo_vec)
        else:
            cf = _get(_get(rec.get("counterfactual_values"), evaluator), attacker)
            v = _get(vals, attacker)
            if cf is None or v is None:
                continue
            eff = {"inflation": _f(v) - _f(cf), "cf_value": _f(cf)}
        for k in sums:
            if k in eff and math.isfinite(eff[k]):
                sums[k] += eff[k]
                seen[k] += 1
        for k in means:
            if k in eff:
                means[k].append(eff[k])
    out = {k: (sums[k] if seen[k] else math.nan) for k in sums}
    for k, xs in means.items():
        fin = [x for x in xs if math.isfinite(x)]
        out[k] = float(np.mean(fin)) if fin else math.nan
    out["rounds"] = float(seen["inflation"])
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b != 0 else math.nan


def claim_table(
    results_dir: str | Path, evaluators: Sequence[str] | None = None, honest_from: str | Path | None = None
) -> list[dict[str, Any]]:
    """One row per (non-honest arm, evaluator, attacker) of a results directory (finished jobs only).

    ``honest_from`` names another results directory whose honest arm (same seeds, same splits)
    gives the accuracy reference when ``results_dir`` has none.

    Row keys: ``arm``, ``attack``, ``evaluator``, ``attacker``, ``n`` (seeds), ``inflation``
    (:class:`PairedStats` of the per-seed summed inflation), ``rel_cf`` (the seeds' total
    inflation / their total |summed counterfactual value|: a ratio of sums, since one seed whose
    counterfactual value is near 0 would dominate a mean of ratios), ``rel_gain`` (total inflation /
    the counterfactual round gains, i.e. the sum of the Shapley counterfactual vector, when
    recorded), ``rank_change``, ``benign_tau``, ``benign_change``, ``loo_inflation`` (means over
    seeds), ``acc_attack`` and ``acc_honest`` (mean final test accuracy of this arm and of the
    honest arm on the same seeds) and ``acc_delta`` (:class:`PairedStats` of the difference).
    """
    from fedattr.report import load_results

    res = load_results(results_dir)
    ref = load_results(honest_from) if honest_from is not None else res
    arms_attack = {a.get("name"): a.get("attack") for a in res.scenario.get("arms") or []}
    evs = list(evaluators) if evaluators else list(res.evaluators)
    honest = res.honest_arm
    rows = []
    for arm in res.arms:
        if arm == honest:
            continue
        runs = [r for r in res.runs(arm) if r.finished]  # a job still running is not a seed yet
        for ev in evs:
            for pid in res.attacker_ids:
                per = {r.seed: job_effects(r.rounds, ev, pid) for r in runs}
                gains = {r.seed: job_effects(r.rounds, "shapley", pid).get("cf_total", math.nan) for r in runs}
                infl = [per[s]["inflation"] for s in per]
                acc_a = {r.seed: r.final_accuracy() for r in runs}
                acc_h = ({r.seed: r.final_accuracy() for r in ref.runs(ref.honest_arm) if r.finished}
                         if ref.honest_arm else {})
                both = [s for s in acc_a if s in acc_h]

                def mean_of(key: str, d: Mapping[int, Mapping[str, float]] = per) -> float:
                    xs = [d[s][key] for s in d if math.isfinite(d[s].get(key, math.nan))]
                    return float(np.mean(xs)) if xs else math.nan

                # Against the magnitude: a negative counterfactual value would flip the sign.
                def ratio_of_sums(den: Mapping[int, float]) -> float:
                    both = [s for s in per if math.isfinite(per[s]["inflation"]) and math.isfinite(den[s])]
                    return _ratio(sum(per[s]["inflation"] for s in both), sum(den[s] for s in both)) if both \
                        else math.nan

                rel_cf = ratio_of_sums({s: abs(per[s]["cf_value"]) for s in per})
                rel_gain = ratio_of_sums(gains)
                rows.append({
                    "arm": arm, "attack": arms_attack.get(arm, arm), "evaluator": ev, "attacker": pid,
                    "n": len([x for x in infl if math.isfinite(x)]),
                    "inflation": paired_stats(infl),
                    "rel_cf": rel_cf, "rel_gain": rel_gain,
                    "rank_change": mean_of("rank_change"), "benign_tau": mean_of("benign_tau"),
                    "benign_change": mean_of("benign_change"), "loo_inflation": mean_of("loo_inflation"),
                    "acc_attack": _nanmean([acc_a[s] for s in both]) if both else _nanmean(list(acc_a.values())),
                    "acc_honest": _nanmean([acc_h[s] for s in both]),
                    "acc_delta": paired_stats([acc_a[s] - acc_h[s] for s in both]),
                })
    return rows


def control_table(
    attack_dir: str | Path, controls_dir: str | Path, evaluators: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The attack against each control, paired by seed: one row per (attack arm, control arm,
    evaluator) with ``n`` (seeds finished in both), ``attack`` and ``control`` (mean inflation
    over those seeds) and ``diff`` (:class:`PairedStats` of attack minus control per seed).

    Both directories must hold the same regime (same splits and training seeds per seed); the
    attack arms are the non-honest arms of ``attack_dir``, the controls those of ``controls_dir``.
    """
    from fedattr.report import load_results, merge_results

    att, ctl = load_results(attack_dir), load_results(controls_dir)
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
                    rows.append({
                        "arm": a_arm, "control": c_arm, "evaluator": ev, "attacker": pid, "n": len(both),
                        "attack": _nanmean([a[s] for s in both]), "control_mean": _nanmean([c[s] for s in both]),
                        "diff": paired_stats([a[s] - c[s] for s in both]),
                    })
    return rows


CONTROL_HEADERS = ["attack", "control", "evaluator", "n", "attack infl.", "control infl.",
                   "attack - control [95% t-CI]", "bootstrap CI", "Wilcoxon p", "attack larger"]


def format_control_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The attack-minus-control table as markdown."""
    lines = ["| " + " | ".join(CONTROL_HEADERS) + " |", "|" + "---|" * len(CONTROL_HEADERS)]
    for r in rows:
        d: PairedStats = r["diff"]
        lines.append("| " + " | ".join([
            str(r["arm"]), str(r["control"]), str(r["evaluator"]), str(r["n"]), _num(r["attack"]),
            _num(r["control_mean"]), f"{_num(d.mean)} [{_num(d.t_low)}, {_num(d.t_high)}]",
            f"[{_num(d.boot_low)}, {_num(d.boot_high)}]", _p(d.wilcoxon_p), f"{d.positive}/{d.n}",
        ]) + " |")
    return "\n".join(lines)


def sweep_table(sweep_dir: str | Path, evaluators: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """:func:`claim_table` of every point of a sweep directory, each row with ``point`` (its
    overrides as ``key=value`` text); points with no finished job give no row."""
    from fedattr.report import sweep_meta

    root = Path(sweep_dir)
    rows = []
    for p in sweep_meta(root)["points"]:
        label = ", ".join(f"{k}={v}" for k, v in (p.get("overrides") or {}).items())
        if (root / p["dir"] / "scenario.json").is_file():
            rows += [{**r, "point": label} for r in claim_table(root / p["dir"], evaluators)]
    return rows


def _nanmean(xs: Sequence[float]) -> float:
    fin = [x for x in xs if math.isfinite(x)]
    return float(np.mean(fin)) if fin else math.nan


def _num(x: float, signed: bool = True) -> str:
    if not math.isfinite(x):
        return "—"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def _p(x: float) -> str:
    return "—" if not math.isfinite(x) else (f"{x:.4f}" if x >= 1e-4 else f"{x:.1e}")


TABLE_HEADERS = ["arm", "evaluator", "n", "inflation mean [95% t-CI]", "bootstrap CI", "Wilcoxon p", "pos", "MDE",
                 "rel. to cf", "share of gain", "rank change", "benign tau", "benign change", "LOO infl.",
                 "acc attack / honest"]


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The claim table as markdown (a first column ``point`` when the rows come from a sweep)."""
    sweep = any("point" in r for r in rows)
    headers = (["point"] if sweep else []) + TABLE_HEADERS
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        s: PairedStats = r["inflation"]
        cells = ([str(r.get("point", ""))] if sweep else []) + [
            str(r["arm"]), str(r["evaluator"]), str(s.n),
            f"{_num(s.mean)} [{_num(s.t_low)}, {_num(s.t_high)}]",
            f"[{_num(s.boot_low)}, {_num(s.boot_high)}]", _p(s.wilcoxon_p), f"{s.positive}/{s.n}",
            _num(s.detectable, False),
            _num(r["rel_cf"]), _num(r["rel_gain"]), _num(r["rank_change"]), _num(r["benign_tau"]),
            _num(r["benign_change"]), _num(r["loo_inflation"]),
            f"{_num(r['acc_attack'], False)} / {_num(r['acc_honest'], False)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def matmul_rate(n: int = 512, seconds: float = 0.5) -> float:
    """This machine's float32 matmul rate in GFLOP/s (torch, CPU, current thread count)."""
    import torch

    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b  # warm-up
    reps, start = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * n**3 * reps / elapsed / 1e9


def main(argv: Sequence[str] | None = None) -> int:
    """Print the claim table of RESULTS_DIR and the machine's matmul rate."""
    from fedattr.core.errors import UserError

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (1, 2):
        print("usage: python -m fedattr.report.claim_stats RESULTS_DIR [CONTROLS_DIR]\n"
              "       python -m fedattr.report.claim_stats SWEEP_DIR [EVALUATOR,...]", file=sys.stderr)
        return 2
    try:
        from fedattr.report import is_sweep

        if is_sweep(Path(args[0])):
            rows = sweep_table(args[0], evaluators=args[1].split(",") if len(args) == 2 else None)
            args = args[:1]
        else:
            rows = claim_table(args[0], honest_from=args[1] if len(args) == 2 else None)
        if len(args) == 2:
            controls = claim_table(args[1])
            versus = control_table(args[0], args[1])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if len(args) == 2:
        print(f"\nControls ({args[1]}):\n")
        print(format_table(controls))
        print("\nAttack against each control, paired by seed:\n")
        print(format_control_table(versus))
    print(f"\nmatmul rate: {matmul_rate():.1f} GFLOP/s (float32, 512x512, torch CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
