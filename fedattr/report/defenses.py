"""The defences page: each mitigation against issue 23's bar, the genuine holder and the adaptive attacker.

``fedattr report --defenses RESULTS_DIR --holder HOLDER_DIR --to docs/results/defenses.md`` calls
:func:`write_defenses_page`. RESULTS_DIR is a run of ``scenarios/defenses_new.toml`` (an honest
arm, a ``latent`` attack arm and, optionally, a ``latent_mixed`` adaptive arm); HOLDER_DIR a run of
``scenarios/defenses_holder.toml`` (``partition.genuine_holder`` really holds the withheld classes,
the attacker is honest). Every evaluator but plain :data:`PLAIN` (the reference) is a mitigation.

Figures per mitigation (all paired by seed with plain Shapley):

- removed: ``1 - sum_s infl_ev(s) / sum_s infl_shapley(s)`` over the seeds of one arm, where
  ``infl`` is the attacker's counterfactual inflation summed over rounds, with a bootstrap
  percentile interval over seeds (:func:`removed_ci`);
- benign tau: Kendall tau of the benign clients' cumulative values under the mitigation in the
  attack arm against plain Shapley's in the honest arm, same seed;
- honest tau and rank shift: all clients, the mitigation against plain Shapley in the honest arm;
- kept: the genuine holder's cumulative value under the mitigation over its plain-Shapley value;
- cost: utility evaluations and seconds per round in the honest arm, over plain Shapley's.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedattr.core.errors import UserError
from fedattr.report.markdown import generated_lines, provenance_line
from fedattr.report.reader import JobResult, ScenarioResults, load_results
from fedattr.report.render import md_table
from fedattr.report.stats import MeanCI, fmt_ci, fmt_num, kendall_between, mean_ci
from fedattr.results.store import atomic_write_text

__all__ = ["PLAIN", "ATTACK", "ADAPTIVE", "BAR", "Removed", "Mitigation", "finished", "arm_of", "cost",
           "mitigation_table", "removed_ci", "holder_table", "mitigations", "best_mitigation",
           "defenses_markdown", "write_defenses_page"]

#: the unmitigated reference every mitigation is measured against
PLAIN = "shapley"
#: the attack of the claim's attack arm, and of the adaptive attacker's arm
ATTACK, ADAPTIVE = "latent", "latent_mixed"
#: Issue 23's bar: share of the exact-Shapley inflation removed, benign Kendall tau, share of the
#: genuine holder's value kept.
BAR = {"removed": 0.5, "tau": 0.8, "kept": 0.8}
#: a Kendall tau of exactly 0.8 (one discordant pair of five) can come out as 0.7999999999999999
_TOL = 1e-9


def finished(res: ScenarioResults, arm: str | None) -> list[JobResult]:
    """The arm's finished jobs by seed: a job still running is not a seed yet."""
    return [j for j in res.runs(arm) if j.finished] if arm else []


def arm_of(res: ScenarioResults, attack: str) -> str | None:
    """The first arm whose attack is ``attack`` (None without one)."""
    return next((a.name for a in res.scenario.arms if a.attack == attack), None)


def _nanmean(xs) -> float:
    fin = [float(x) for x in xs if math.isfinite(float(x))]
    return float(np.mean(fin)) if fin else math.nan


def cost(job: JobResult, ev: str) -> tuple[float, float]:
    """Mean utility evaluations (distinct coalitions ``ev`` requests) and seconds per round in one job."""
    evals, secs = [], []
    for rec in job.rounds:
        per_ev = rec.timings.get("evaluators_s") or {}
        evals.append(float(rec.utility_evaluations.get(ev, math.nan)))
        secs.append(float(per_ev.get(ev, math.nan)))
    return _nanmean(evals), _nanmean(secs)


def _inflation(job: JobResult, ev: str, attacker: str) -> float:
    return float(job.counterfactual_inflation(ev).get(attacker, math.nan))


def mitigation_table(res: ScenarioResults, attack: str = ATTACK) -> dict[str, dict[str, Any]]:
    """``{evaluator: {inflation, left, left_median, tau, tau_own, honest_tau, evals, seconds}}``.

    Inflation and the taus come from the arm whose attack is ``attack``; ``honest_tau`` (all
    clients, the evaluator against plain Shapley in the honest arm) and the cost from the honest arm.
    """
    arm = arm_of(res, attack)
    att = res.attacker_ids[0] if res.attacker_ids else None
    attack_runs = finished(res, arm) if att is not None else []
    honest_runs = finished(res, res.honest_arm)
    plain_infl = {j.seed: _inflation(j, PLAIN, att) for j in attack_runs}
    out = {}
    for ev in res.evaluators:
        infl, ratios, taus, taus_own = {}, [], [], []
        for job in attack_runs:
            infl[job.seed] = _inflation(job, ev, att)
            p = plain_infl.get(job.seed, math.nan)
            if math.isfinite(p) and p != 0 and math.isfinite(infl[job.seed]):
                ratios.append(infl[job.seed] / p)
            honest = res.jobs.get((res.honest_arm, job.seed)) if res.honest_arm else None
            if honest is not None:
                benign = [c for c in job.cumulative(ev) if c not in res.attacker_ids]
                taus.append(kendall_between(honest.cumulative(PLAIN), job.cumulative(ev), keys=benign))
                taus_own.append(kendall_between(honest.cumulative(ev), job.cumulative(ev), keys=benign))
        costs = [cost(j, ev) for j in honest_runs]
        paired = [s for s in infl if math.isfinite(infl[s]) and math.isfinite(plain_infl.get(s, math.nan))]
        denom = sum(plain_infl[s] for s in paired)
        out[ev] = {
            "inflation": mean_ci(infl.values()),
            "left": sum(infl[s] for s in paired) / denom if paired and denom != 0 else math.nan,
            "left_median": float(np.median(ratios)) if ratios else math.nan,
            "tau": mean_ci(taus),
            "tau_own": mean_ci(taus_own),
            "honest_tau": mean_ci([kendall_between(j.cumulative(PLAIN), j.cumulative(ev)) for j in honest_runs]),
            "evals": _nanmean([c[0] for c in costs]),
            "seconds": _nanmean([c[1] for c in costs]),
        }
    return out


def _ratio_ci(pairs: np.ndarray, confidence: float, draws: int) -> tuple[float, float, float]:
    """``sum(num) / sum(den)`` over rows ``(num, den)`` and its bootstrap percentile interval over rows."""
    if len(pairs) == 0 or pairs[:, 1].sum() == 0:
        return math.nan, math.nan, math.nan
    point = pairs[:, 0].sum() / pairs[:, 1].sum()
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(pairs), size=(draws, len(pairs)))
    num, den = pairs[idx, 0].sum(1), pairs[idx, 1].sum(1)
    boot = num[den != 0] / den[den != 0]
    if boot.size == 0:
        return float(point), math.nan, math.nan
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(point), float(lo), float(hi)


def _pairs(res: ScenarioResults, ev: str, arm: str | None, ref_arm: str | None) -> np.ndarray:
    """Rows (``ev``'s inflation in ``arm``, plain Shapley's in ``ref_arm``) of the seeds finished in both."""
    att = res.attacker_ids[0] if res.attacker_ids else None
    if arm is None or ref_arm is None or att is None:
        return np.zeros((0, 2))
    rows = []
    for job in finished(res, arm):
        ref = res.jobs.get((ref_arm, job.seed))
        if ref is not None and ref.finished:
            rows.append((_inflation(job, ev, att), _inflation(ref, PLAIN, att)))
    rows = [r for r in rows if math.isfinite(r[0]) and math.isfinite(r[1])]
    return np.array(rows, dtype=float).reshape(-1, 2)


def removed_ci(res: ScenarioResults, ev: str, confidence: float = 0.95, draws: int = 2000,
               attack: str = ATTACK) -> tuple[float, float, float]:
    """Share of plain Shapley's counterfactual inflation that ``ev`` removes, ``1 - sum(ev)/sum(plain)``
    over the seeds of the arm whose attack is ``attack``, with a bootstrap percentile interval over seeds."""
    r = _removed(res, ev, attack, confidence, draws)
    return r.point, r.low, r.high


def holder_table(res: ScenarioResults) -> dict[str, MeanCI]:
    """``{evaluator: MeanCI}``: per seed, the genuine holder's cumulative value under the evaluator
    over its cumulative plain-Shapley value, in every finished job of the holder run."""
    holder = res.scenario.partition.genuine_holder
    if holder is None:
        raise ValueError(f"{res.path}: its scenario has no partition.genuine_holder")
    jobs = [j for arm in res.arms for j in finished(res, arm)]
    out = {}
    for ev in res.evaluators:
        kept = []
        for job in jobs:
            plain = job.cumulative(PLAIN).get(str(holder), math.nan)
            mine = job.cumulative(ev).get(str(holder), math.nan)
            if math.isfinite(plain) and plain != 0 and math.isfinite(mine):
                kept.append(mine / plain)
        out[ev] = mean_ci(kept)
    return out


def _fails(fig: dict[str, float]) -> dict[str, float]:
    """Per condition of :data:`BAR` missed, by how much (NaN where the figure is missing)."""
    return {k: BAR[k] - v if math.isfinite(v) else math.nan for k, v in fig.items()
            if not (math.isfinite(v) and v >= BAR[k] - _TOL)}


@dataclass(frozen=True)
class Removed:
    """A share of plain Shapley's inflation removed: point estimate, bootstrap interval, seeds paired."""

    point: float
    low: float
    high: float
    n: int

    def text(self) -> str:
        """``+0.123 [+0.01, +0.2]``, or ``—`` without a paired seed."""
        if not math.isfinite(self.point):
            return "—"
        if not math.isfinite(self.low):
            return f"{fmt_num(self.point)} (n={self.n})"
        return f"{fmt_num(self.point)} [{fmt_num(self.low)}, {fmt_num(self.high)}]"


@dataclass(frozen=True)
class Mitigation:
    """One mitigation's item-3 figures (see the module docstring) and its verdict against :data:`BAR`.

    ``removed`` / ``left``: the share of plain Shapley's inflation removed (bootstrap interval) and
    the attacker's inflation under the mitigation (t interval), in the attack arm; ``*_adaptive``:
    the same in the adaptive arm (n = 0 without one). ``fails``: ``{condition: shortfall}`` on
    the point estimates.
    """

    evaluator: str
    removed: Removed
    left: MeanCI
    removed_adaptive: Removed
    left_adaptive: MeanCI
    benign_tau: MeanCI
    honest_tau: MeanCI
    rank_shift: MeanCI
    kept: MeanCI
    evals_ratio: float
    seconds_ratio: float
    fails: dict[str, float] = field(default_factory=dict)

    @property
    def met(self) -> int:
        """How many of the bar's three conditions the point estimates meet."""
        return len(BAR) - len(self.fails)

    @property
    def lower_clears(self) -> bool | None:
        """Whether the removed share's interval lies above the bar (None without an interval)."""
        return None if not math.isfinite(self.removed.low) else self.removed.low >= BAR["removed"] - _TOL

    def verdict(self) -> str:
        """``passes``, or each condition missed and by how much."""
        if not self.fails:
            return "passes"
        return "; ".join(f"{k} short by {v:.3f}" if math.isfinite(v) else f"{k} missing" for k, v in self.fails.items())


def _rank_shift(job: JobResult, ev: str) -> float:
    """Mean over clients of |rank under ``ev`` - rank under plain Shapley| in one job."""
    a, b = job.ranks(ev), job.ranks(PLAIN)
    common = [k for k in a if k in b]
    return float(np.mean([abs(a[k] - b[k]) for k in common])) if common else math.nan


def _removed(res: ScenarioResults, ev: str, attack: str, confidence: float, draws: int) -> Removed:
    arm = arm_of(res, attack)
    pairs = _pairs(res, ev, arm, arm)
    left, lo, hi = _ratio_ci(pairs, confidence, draws)
    return Removed(1.0 - left, 1.0 - hi, 1.0 - lo, len(pairs))


def _over_plain(table: dict[str, dict[str, Any]], ev: str, key: str) -> float:
    """``ev``'s figure over plain Shapley's in :func:`mitigation_table` (NaN when plain's is 0 or missing)."""
    plain = table.get(PLAIN, {}).get(key, math.nan)
    return table[ev][key] / plain if math.isfinite(plain) and plain != 0 else math.nan


def mitigations(res: ScenarioResults, holder: ScenarioResults | None = None, confidence: float = 0.95,
                draws: int = 2000) -> list[Mitigation]:
    """Every evaluator of ``res`` but :data:`PLAIN`, with its item-3 figures and bar verdict."""
    att = res.attacker_ids[0] if res.attacker_ids else None
    adaptive_arm = arm_of(res, ADAPTIVE)
    honest = finished(res, res.honest_arm)
    table = mitigation_table(res)
    kept = holder_table(holder) if holder is not None else {}
    out = []
    for ev in res.evaluators:
        if ev == PLAIN:
            continue
        removed = _removed(res, ev, ATTACK, confidence, draws)
        tau = table[ev]["tau"]
        keep = kept.get(ev, mean_ci([]))
        out.append(Mitigation(
            evaluator=ev, removed=removed, left=table[ev]["inflation"],
            removed_adaptive=(_removed(res, ev, ADAPTIVE, confidence, draws) if adaptive_arm
                              else Removed(math.nan, math.nan, math.nan, 0)),
            left_adaptive=mean_ci(_inflation(j, ev, att) for j in finished(res, adaptive_arm)) if att else mean_ci([]),
            benign_tau=tau, honest_tau=table[ev]["honest_tau"],
            rank_shift=mean_ci(_rank_shift(j, ev) for j in honest), kept=keep,
            evals_ratio=_over_plain(table, ev, "evals"), seconds_ratio=_over_plain(table, ev, "seconds"),
            fails=_fails({"removed": removed.point, "tau": tau.mean, "kept": keep.mean})))
    return out


def best_mitigation(rows: list[Mitigation]) -> Mitigation | None:
    """The mitigation closest to the bar: most conditions met, then the largest share removed."""
    key = lambda m: (m.met, m.removed.point if math.isfinite(m.removed.point) else -math.inf)  # noqa: E731
    return max(rows, key=key) if rows else None


@dataclass(frozen=True)
class Adaptive:
    """The adaptive attacker against one mitigation: its inflation under it (t interval) and that
    inflation as a share of plain Shapley's in the attack arm, same seeds (bootstrap interval);
    ``plain_share``: the same share under plain Shapley (the adaptive attack without a defence)."""

    evaluator: str
    inflation: MeanCI
    share: Removed
    plain_share: Removed


def adaptive_against(res: ScenarioResults, ev: str, confidence: float = 0.95, draws: int = 2000) -> Adaptive | None:
    """The adaptive arm's inflation under ``ev`` and as a share of plain Shapley's in the attack arm."""
    adaptive, attack = arm_of(res, ADAPTIVE), arm_of(res, ATTACK)
    att = res.attacker_ids[0] if res.attacker_ids else None
    if adaptive is None or attack is None or att is None:
        return None

    def share(name: str) -> Removed:
        pairs = _pairs(res, name, adaptive, attack)
        return Removed(*_ratio_ci(pairs, confidence, draws), len(pairs))

    return Adaptive(ev, mean_ci(_inflation(j, ev, att) for j in finished(res, adaptive)), share(ev), share(PLAIN))


# --- the page ------------------------------------------------------------------------------------

def _planned(res: ScenarioResults) -> int:
    return len(res.scenario.seeds)


def _ci(ci: MeanCI, planned: int, signed: bool = True) -> str:
    """``fmt_ci`` with the seed count added where it is short of the planned seeds."""
    text = fmt_ci(ci, signed)
    return text + (f" *(n={ci.n})*" if 0 < ci.n < planned and "(n=" not in text else "")


def _rm(r: Removed, planned: int) -> str:
    text = r.text()
    return text + (f" *(n={r.n})*" if 0 < r.n < planned and "(n=" not in text else "")


def _ratio(x: float) -> str:
    if not math.isfinite(x):
        return "—"
    return f"{x:.2f}x" if x >= 0.01 or x == 0 else f"{x:.1g}x"  # a cache read costs ~1e-4 of Shapley


def _runs_section(res: ScenarioResults, holder: ScenarioResults | None) -> list[str]:
    rows = []
    for r in (res, holder):
        if r is None:
            continue
        for arm in [a.name for a in r.scenario.arms]:
            jobs = r.runs(arm)
            done = [j for j in jobs if j.finished]
            failed = [j for j in r.failed if j.arm == arm]
            rows.append([f"`{r.path}`", arm, r.attack_of(arm), f"{len(done)} of {_planned(r)}"
                         + (" **short**" if len(done) < _planned(r) else ""),
                         ", ".join(str(j.seed) for j in done) or "—", str(len(jobs) - len(done)), str(len(failed))])
    return ["## Runs", ""] + md_table(["results", "arm", "attack", "finished jobs (seeds)", "seeds finished",
                                       "unfinished", "failed"], rows)


def _header(res: ScenarioResults, holder: ScenarioResults | None, page: Path, command: str | None) -> list[str]:
    cmd = command or ("fedattr report --defenses " + shlex.quote(str(res.path))
                      + (f" --holder {shlex.quote(str(holder.path))}" if holder is not None else "")
                      + f" --to {shlex.quote(str(page))}")
    lines = generated_lines(cmd, page)
    lines += [f"- {provenance_line(r)}" for r in (res, holder) if r is not None]
    return lines + [""]


def _notes(res: ScenarioResults, holder: ScenarioResults | None) -> list[str]:
    hold = (f"client {holder.scenario.partition.genuine_holder} of `{holder.path}`" if holder is not None
            else "no holder run given")
    return [
        "How to read it (every figure paired by seed with plain Shapley, the unmitigated reference; "
        f"*(n=k)*: fewer seeds than the {_planned(res)} planned):", "",
        "- **removed**: share of exact Shapley's counterfactual inflation of the attacker that the mitigation "
        "removes, `1 - sum_s infl_ev(s) / sum_s infl_shapley(s)` over the arm's seeds (inflation: the attacker's "
        "value minus its honest update's value in the same round game, summed over rounds); 95% bootstrap "
        "percentile interval over seeds. Attack arm: the latent attack; adaptive arm: `latent_mixed`, the "
        "attacker that mixes real public images into its batch.",
        "- **inflation left**: the attacker's counterfactual inflation under the mitigation, mean ± 95% t-CI "
        "over seeds.",
        "- **benign tau**: Kendall tau of the benign clients' cumulative values under the mitigation in the "
        "attack arm against plain Shapley's in the honest arm, same seed (mean ± t-CI).",
        "- **honest tau** and **rank shift**: in the honest arm, Kendall tau over all clients between the "
        "mitigation and plain Shapley, and the mean over clients of |rank change|.",
        f"- **holder kept**: the genuine holder's ({hold}) cumulative value under the mitigation over its "
        "plain-Shapley value (mean ± t-CI).",
        "- **evals** and **seconds**: per round in the honest arm, the mitigation's utility evaluations "
        "(the distinct coalitions it requests: its cost run alone) and seconds, over plain Shapley's.",
        f"- **bar**: removed >= {BAR['removed']}, benign tau >= {BAR['tau']}, holder kept >= {BAR['kept']}, "
        "on the point estimates; otherwise each condition missed and by how much. **CI clears**: whether the "
        "removed share's lower bound is >= 0.5 too.", ""]


def _table(rows: list[Mitigation], planned: int, holder_planned: int) -> list[str]:
    yes = lambda b: "—" if b is None else ("yes" if b else "no")  # noqa: E731
    return md_table(
        ["mitigation", "removed (attack)", "inflation left (attack)", "removed (adaptive)",
         "inflation left (adaptive)", "benign tau", "honest tau", "rank shift", "holder kept", "evals",
         "seconds", "bar", "CI clears 0.5"],
        [[f"`{m.evaluator}`", _rm(m.removed, planned), _ci(m.left, planned), _rm(m.removed_adaptive, planned),
          _ci(m.left_adaptive, planned), _ci(m.benign_tau, planned), _ci(m.honest_tau, planned),
          _ci(m.rank_shift, planned, signed=False), _ci(m.kept, holder_planned, signed=False),
          _ratio(m.evals_ratio), _ratio(m.seconds_ratio), m.verdict(), yes(m.lower_clears)] for m in rows])


def _reference(res: ScenarioResults) -> list[str]:
    att = res.attacker_ids[0] if res.attacker_ids else None
    planned = _planned(res)
    cells, unsettled = [], []
    for attack in (ATTACK, ADAPTIVE):
        arm = arm_of(res, attack)
        if arm is not None and att is not None:
            ci = mean_ci(_inflation(j, PLAIN, att) for j in finished(res, arm))
            cells.append(f"{arm} arm {_ci(ci, planned)}")
            if not (ci.n > 1 and ci.low > 0):
                unsettled.append(arm)
    md = [f"Plain `{PLAIN}` (the reference row): the attacker's counterfactual inflation, "
          + ("; ".join(cells) or "not recorded") + "."]
    if unsettled:
        # a share of an inflation that may be 0 has no meaning: its interval spans several times the figure
        md.append(f"**Its 95% interval does not lie above 0 in the {' and '.join(unsettled)} arm"
                  f"{'s' if len(unsettled) > 1 else ''}**: there the shares removed are not measured, whatever "
                  "their point estimates say.")
    return [" ".join(md), ""]


def _adaptive_section(res: ScenarioResults, rows: list[Mitigation]) -> list[str]:
    md = ["## The adaptive attacker", ""]
    best = best_mitigation(rows)
    ad = adaptive_against(res, best.evaluator) if best is not None else None
    if best is None or ad is None:
        return md + ["No adaptive (`latent_mixed`) arm in these results, or no mitigation.", ""]
    planned = _planned(res)
    md += [f"Best mitigation (closest to the bar: most conditions met, then the largest share removed): "
           f"`{best.evaluator}` ({best.met} of {len(BAR)} conditions; {best.verdict()}).", "",
           f"The adaptive arm `{arm_of(res, ADAPTIVE)}` mixes real public images of the targets into its batch. "
           f"Share: its inflation summed over seeds over plain `{PLAIN}`'s inflation in the attack arm "
           f"`{arm_of(res, ATTACK)}`, same seeds (95% bootstrap interval over seeds).", ""]
    plain = mean_ci(_inflation(j, PLAIN, res.attacker_ids[0]) for j in finished(res, arm_of(res, ADAPTIVE)))
    md += md_table(["scoring", "adaptive attacker's inflation", f"share of plain {PLAIN}'s in the attack arm"],
                   [[f"`{best.evaluator}`", _ci(ad.inflation, planned), _rm(ad.share, planned)],
                    [f"`{PLAIN}` (no defence)", _ci(plain, planned), _rm(ad.plain_share, planned)]])
    share = ad.share.point
    md += [f"The best inflation the adaptive attacker still gets under `{best.evaluator}`: "
           f"**{fmt_ci(ad.inflation)}**, "
           + (f"{share:.0%} of what the latent attack gets under plain {PLAIN}." if math.isfinite(share)
              else "its share not defined (no paired seed)."), ""]
    return md


def defenses_markdown(res: ScenarioResults, holder: ScenarioResults | None, header: list[str] = ()) -> str:
    """The defences page: runs, the item-3 table, the bar, the adaptive attacker."""
    rows = mitigations(res, holder)
    planned = _planned(res)
    holder_planned = _planned(holder) if holder is not None else planned
    passing = [m.evaluator for m in rows if not m.fails]
    md = ["# Defences: removing the inflation, keeping the honest ranking, sparing the genuine holder", "",
          *header]
    md += _runs_section(res, holder)
    md += ["## Mitigations", ""] + _notes(res, holder) + _reference(res)
    md += _table(rows, planned, holder_planned)
    md += ["Bar: " + (f"**passed by {', '.join(f'`{p}`' for p in passing)}**." if passing
                      else "**no mitigation passes**; the table says which condition each one misses and by how much.")
           + ("" if holder is not None else " (No holder run given: the holder condition is missing.)"), ""]
    md += _adaptive_section(res, rows)
    return "\n".join(md).rstrip() + "\n"


def _load(results_dir: str | Path, holder_dir: str | Path | None) -> tuple[ScenarioResults, ScenarioResults | None]:
    """Both directories, checked: the results need a latent arm and plain Shapley, the holder run a holder."""
    if not Path(results_dir).is_dir():
        raise UserError(f"results directory not found: {results_dir}")
    res = load_results(results_dir)
    if arm_of(res, ATTACK) is None:
        raise UserError(f"{results_dir}: no arm with attack {ATTACK!r}; --defenses reads a run of "
                        "scenarios/defenses_new.toml")
    if PLAIN not in [e.name for e in res.scenario.attribution.evaluators]:
        raise UserError(f"{results_dir}: plain {PLAIN!r} is not among its evaluators; it is the reference")
    holder = None
    if holder_dir is not None:
        if not Path(holder_dir).is_dir():
            raise UserError(f"holder results directory not found: {holder_dir}")
        holder = load_results(holder_dir)
        if holder.scenario.partition.genuine_holder is None:
            raise UserError(f"--holder {holder_dir}: its scenario has no partition.genuine_holder "
                            "(a run of scenarios/defenses_holder.toml)")
    return res, holder


def write_defenses_page(results_dir: str | Path, holder_dir: str | Path | None, to: str | Path,
                        command: str | None = None) -> Path:
    """Write the defences page ``to`` (a .md file) from a defences run and its genuine-holder run."""
    page = Path(to)
    if page.suffix != ".md":
        raise UserError(f"--to must name a markdown file (….md): {page}")
    res, holder = _load(results_dir, holder_dir)
    page.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(page, defenses_markdown(res, holder, _header(res, holder, page, command)))
    return page
