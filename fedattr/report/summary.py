"""Every reported number of a scenario or sweep directory, as typed objects, and the CLI's table rows.

Quantities, per evaluator and attacker client (partition id), over seeds:

- attacker value: its cumulative value at the end of the run, normalised share and rank;
- counterfactual inflation: sum over rounds of (value - value of its honest update in the same
  round game), with the paired claim statistics (t interval, Wilcoxon, bootstrap, positive
  seeds, smallest detectable effect);
- paired inflation: its cumulative value in an arm minus in the honest arm, same seed, with
  the same statistics;
- Kendall tau: agreement of the benign clients' cumulative-value ranking between the honest arm
  and an arm, same seed (1 = ranking unchanged);
- participation (client sampling): the rounds each client was sampled and scored in, and its
  cumulative value per participation (the total divided by that count).

Unbounded quantities get a t interval; ranks, Kendall tau and accuracy a bootstrap interval
inside their range (:mod:`fedattr.report.stats`). Unfinished jobs count with their last round
reached and are flagged; failed jobs are listed and left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from fedattr.core.errors import DamagedResultsError, UserError
from fedattr.core.io import json_safe
from fedattr.report.claim_stats import ClaimRow, claim_table
from fedattr.report.reader import ScenarioResults, is_sweep, load_results, pid_key, sweep_meta
from fedattr.report.stats import MeanCI, PairedStats, bounded_ci, fmt_ci, fmt_num, kendall_between, mean_ci, paired_stats
from fedattr.scenario import HONEST_ATTACK

__all__ = ["AttackerStats", "CappedWeight", "JobCounts", "UnfinishedJob", "Failure", "ScenarioSummary", "PointSummary",
           "SweepSummary", "summarize", "scenario_summary", "summary_rows", "failure_rows", "client_rows",
           "unfinished_rows", "plain", "paired_values", "kendall_values", "reached_label", "participations",
           "per_participation", "is_sampled", "SAMPLING_NOTE"]

#: Which cumulative value to read when clients are sampled (the report prints it).
SAMPLING_NOTE = ("Read the total to know what a client earned over the run: it grows with the rounds the client "
                 "was sampled in. Read the value per participation (the total divided by the rounds it took part "
                 "in) for its contribution rate: it compares clients fairly when sampling picked some more often "
                 "than others.")


def plain(obj: Any) -> Any:
    """Dataclasses (through their ``as_dict`` when they have one), dicts and lists as plain data."""
    if hasattr(obj, "as_dict"):
        return plain(obj.as_dict())
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


@dataclass(frozen=True)
class AttackerStats:
    """One attacker under one evaluator in one arm, over seeds."""

    value: MeanCI
    normalised: MeanCI
    rank: MeanCI
    counterfactual_inflation: PairedStats
    paired_inflation: PairedStats
    #: Rounds the attacker took part in, and its cumulative value per participation.
    participations: MeanCI | None = None
    per_participation: MeanCI | None = None


@dataclass(frozen=True)
class JobCounts:
    """Jobs planned (arms x seeds), found, finished, unfinished (no summary) and failed."""

    expected: int
    found: int
    finished: int
    unfinished: int
    failed: int


@dataclass(frozen=True)
class UnfinishedJob:
    """A job without a summary: reported from ``last_round`` of ``planned_rounds``."""

    arm: str
    seed: int
    last_round: int
    planned_rounds: int


@dataclass(frozen=True)
class Failure:
    """Rejected replies, silent nodes or a failed job: one (arm, seed, client, reason) with its rounds."""

    arm: str
    seed: int
    status: str
    partition_id: int | None
    node_id: int | None
    reason: str
    rounds: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class CappedWeight:
    """A client whose claimed example count the weight policy capped, in one job: the rounds it
    happened in, the largest claim and the largest weight used."""

    arm: str
    seed: int
    partition_id: str
    rounds: list[int]
    claimed: float
    used: float


@dataclass
class ScenarioSummary:
    """Every reported number of one scenario directory (see the module docstring)."""

    dir: Path
    name: str
    arms: list[str]
    honest_arm: str | None
    seeds: list[int]
    evaluators: list[str]
    attacker_ids: list[str]
    attacks: dict[str, str]
    rounds: int
    jobs: JobCounts
    unfinished: list[UnfinishedJob]
    failures: list[Failure]
    in_progress: bool
    wall_s: float | None
    startup_s: float | None
    final_accuracy: dict[str, MeanCI]
    accuracy_delta: dict[str, PairedStats]
    attacker: dict[str, dict[str, dict[str, AttackerStats]]]
    kendall_tau: dict[str, dict[str, MeanCI]]
    claim: list[ClaimRow]
    capped_weights: list[CappedWeight] = field(default_factory=list)
    #: Whether rounds sampled their clients (participation counts and per-participation values apply).
    sampled: bool = False
    kind: Literal["scenario"] = "scenario"

    @property
    def failed_jobs(self) -> int:
        """Failed jobs (left out of every statistic)."""
        return self.jobs.failed

    def unfinished_in(self, arm: str) -> list[UnfinishedJob]:
        """Unfinished jobs of one arm."""
        return [u for u in self.unfinished if u.arm == arm]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (``stats.json``, ``--json``): nan becomes None."""
        return json_safe({f.name: plain(getattr(self, f.name)) for f in fields(self)})


@dataclass
class PointSummary:
    """One sweep point: its directory, overrides and summary (None with ``error`` when unreadable)."""

    dir: str
    overrides: dict[str, Any]
    summary: ScenarioSummary | None
    error: str | None = None


@dataclass
class SweepSummary:
    """Every reported number of a sweep directory: one :class:`ScenarioSummary` per point."""

    dir: Path
    grid: dict[str, list[Any]]
    points: list[PointSummary]
    wall_s: float | None
    startup_s: float | None
    kind: Literal["sweep"] = "sweep"

    @property
    def failed_jobs(self) -> int:
        """Failed jobs of every point."""
        return sum(p.summary.failed_jobs for p in self.points if p.summary)

    @property
    def in_progress(self) -> bool:
        """True when a live run holds a point's directory."""
        return any(p.summary.in_progress for p in self.points if p.summary)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: nan becomes None."""
        return json_safe({f.name: plain(getattr(self, f.name)) for f in fields(self)})


def paired_values(res: ScenarioResults, arm: str, get: Any) -> list[tuple[int, float]]:
    """Per seed with both jobs: ``get(job)`` in ``arm`` minus in the honest arm."""
    if res.honest_arm is None or arm == res.honest_arm:
        return []
    out = []
    for seed in res.seeds:
        a, h = res.jobs.get((arm, seed)), res.jobs.get((res.honest_arm, seed))
        if a is not None and h is not None:
            out.append((seed, get(a) - get(h)))
    return out


def kendall_values(res: ScenarioResults, arm: str, ev: str) -> list[float]:
    """Per seed: Kendall tau of the benign clients' cumulative ranking, honest arm vs ``arm``."""
    if res.honest_arm is None or arm == res.honest_arm:
        return []
    taus = []
    for seed in res.seeds:
        a, h = res.jobs.get((arm, seed)), res.jobs.get((res.honest_arm, seed))
        if a is not None and h is not None:
            ch = h.cumulative(ev)
            benign = [k for k in sorted(ch, key=pid_key) if k not in res.attacker_ids]
            taus.append(kendall_between(ch, a.cumulative(ev), keys=benign))
    return taus


def participations(job: Any, ev: str) -> dict[str, int]:
    """Rounds in which each client had a value of ``ev`` (was sampled, replied and was scored)."""
    counts: dict[str, int] = {}
    for rec in job.rounds:
        for pid, v in (rec.values.get(ev) or {}).items():
            if v is not None:
                counts[str(pid)] = counts.get(str(pid), 0) + 1
    return counts


def per_participation(job: Any, ev: str) -> dict[str, float]:
    """Each client's cumulative value of ``ev`` divided by its participation count."""
    counts = participations(job, ev)
    return {pid: v / counts[pid] for pid, v in job.cumulative(ev).items() if counts.get(pid)}


def is_sampled(res: ScenarioResults) -> bool:
    """Whether the scenario samples clients (``[sampling]``) or its records name sampled clients."""
    spec = getattr(res.scenario, "sampling", None)
    if spec is not None and spec.active:
        return True
    return any("sampled" in (rec.model_extra or {}) for job in res.jobs.values() for rec in job.rounds[:1])


def _failures(res: ScenarioResults) -> list[Failure]:
    """Every failure of every job, one entry per (arm, seed, partition id, reason) with its rounds."""
    grouped: dict[tuple, Failure] = {}
    jobs = sorted(res.failed, key=lambda j: (j.arm, j.seed)) + [res.jobs[k] for k in sorted(res.jobs)]
    for job in jobs:
        events: list[tuple[int | None, int | None, int | None, str]] = []
        for rec in job.rounds:
            for rej in rec.rejected:
                claimed = rej.claimed_partition_id
                note = f" (the reply claimed partition {claimed})" if claimed is not None and claimed != rej.partition_id \
                    else ""
                events.append((rec.round, rej.partition_id, rej.node_id, rej.reason + note))
            known = list(rec.missing_partitions)
            events += [(rec.round, pid, None, "sent no reply") for pid in known]
            if rec.missing > len(known):
                events.append((rec.round, None, None, f"{rec.missing - len(known)} node(s) sent no reply"))
        if job.status == "failed":
            reason = job.summary.failure_reason if job.summary is not None else None
            events.append((None, None, None, "job failed: " + (reason or "no reason recorded")))
        for rnd, pid, node, reason in events:
            entry = grouped.setdefault((job.arm, job.seed, pid, reason),
                                       Failure(job.arm, job.seed, job.status, pid, node, reason))
            if rnd is not None:
                entry.rounds.append(rnd)
    return list(grouped.values())


def _capped_weights(res: ScenarioResults) -> list[CappedWeight]:
    """Every (job, client) whose used aggregation weight is below the count it claimed."""
    out = []
    for arm, seed in sorted(res.jobs):
        job = res.jobs[(arm, seed)]
        capped: dict[str, list[tuple[int, float, float]]] = {}
        for rec in job.rounds:
            claims = rec.claimed_num_examples
            for pid, claimed in claims.items():
                used = rec.num_examples.get(pid)
                if used is not None and claimed is not None and used < claimed:
                    capped.setdefault(str(pid), []).append((rec.round, float(claimed), float(used)))
        out += [CappedWeight(arm, seed, pid, [r for r, _, _ in rows], max(c for _, c, _ in rows),
                             max(u for _, _, u in rows)) for pid, rows in sorted(capped.items(), key=lambda kv: pid_key(kv[0]))]
    return out


def scenario_summary(res: ScenarioResults) -> ScenarioSummary:
    """All reported numbers of one scenario directory."""
    found = len(res.jobs)
    finished = sum(j.finished for j in res.jobs.values())
    attacker: dict[str, dict[str, dict[str, AttackerStats]]] = {}
    taus: dict[str, dict[str, MeanCI]] = {}
    for arm in res.arms:
        runs = res.runs(arm)
        is_attack = res.attack_of(arm) != HONEST_ATTACK
        attacker[arm], taus[arm] = {}, {}
        for ev in res.evaluators:
            attacker[arm][ev] = {pid: AttackerStats(
                value=mean_ci(j.cumulative(ev).get(pid) for j in runs),
                normalised=mean_ci(j.normalised(ev).get(pid) for j in runs),
                rank=bounded_ci(j.ranks(ev).get(pid) for j in runs),
                counterfactual_inflation=paired_stats(
                    j.counterfactual_inflation(ev).get(pid) for j in runs) if is_attack else paired_stats([]),
                paired_inflation=paired_stats(v for _, v in paired_values(
                    res, arm, lambda j, ev=ev, pid=pid: j.cumulative(ev).get(pid, math.nan))),
                participations=mean_ci(participations(j, ev).get(pid, 0) for j in runs),
                per_participation=mean_ci(per_participation(j, ev).get(pid) for j in runs),
            ) for pid in res.attacker_ids}
            if arm != res.honest_arm:
                taus[arm][ev] = bounded_ci(kendall_values(res, arm, ev))
    env = res.environment
    return ScenarioSummary(
        dir=res.path, name=res.scenario.name, arms=list(res.arms), honest_arm=res.honest_arm,
        seeds=list(res.seeds), evaluators=list(res.evaluators), attacker_ids=list(res.attacker_ids),
        attacks={arm: res.attack_of(arm) for arm in res.arms}, rounds=res.scenario.rounds,
        jobs=JobCounts(expected=len(res.scenario.arms) * len(res.scenario.seeds), found=found,
                       finished=finished, unfinished=found - finished, failed=len(res.failed)),
        unfinished=[UnfinishedJob(j.arm, j.seed, j.last_round, j.planned_rounds) for j in res.unfinished()],
        failures=_failures(res), in_progress=res.in_progress, wall_s=env.wall_s, startup_s=env.startup_s,
        final_accuracy={arm: bounded_ci(j.final_accuracy() for j in res.runs(arm)) for arm in res.arms},
        accuracy_delta={arm: paired_stats(v for _, v in paired_values(res, arm, lambda j: j.final_accuracy()))
                        for arm in res.arms},
        attacker=attacker, kendall_tau=taus, claim=claim_table(res), capped_weights=_capped_weights(res),
        sampled=is_sampled(res))


def summarize(results_dir: str | Path) -> ScenarioSummary | SweepSummary:
    """All reported numbers of a scenario or sweep directory. UserError when it is neither."""
    path = Path(results_dir)
    if not path.is_dir():
        raise UserError(f"results directory not found: {path}")
    if not is_sweep(path):
        return scenario_summary(load_results(path))
    meta = sweep_meta(path)
    points = []
    for point in meta.points:
        try:
            points.append(PointSummary(point.dir, point.overrides, scenario_summary(load_results(path / point.dir))))
        except DamagedResultsError:
            raise
        except UserError as exc:
            points.append(PointSummary(point.dir, point.overrides, None, str(exc)))
    return SweepSummary(dir=path, grid=meta.grid, points=points, wall_s=meta.wall_s, startup_s=meta.startup_s)


def reached_label(jobs: list[UnfinishedJob]) -> str:
    """``last round reached (r of R)`` for the unfinished jobs of one arm ("" when none)."""
    if not jobs:
        return ""
    reached = ", ".join(str(r) for r in sorted({u.last_round for u in jobs}))
    return f"last round reached ({reached} of {jobs[0].planned_rounds})"


def _acc_cell(summary: ScenarioSummary, arm: str) -> str:
    label = reached_label(summary.unfinished_in(arm))
    return fmt_ci(summary.final_accuracy[arm], signed=False) + (f", {label}" if label else "")


def failure_rows(summary: ScenarioSummary) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the failures table (``fedattr run`` and the report print it)."""
    rows = [[f.arm, str(f.seed), f.status, "—" if f.partition_id is None else str(f.partition_id),
             ", ".join(map(str, f.rounds)) or "—", f.reason] for f in summary.failures]
    return ["arm", "seed", "job status", "client", "rounds", "reason"], rows


def unfinished_rows(summary: ScenarioSummary) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the unfinished-jobs table: each job and the last round it reached."""
    rows = [[u.arm, str(u.seed), f"last round reached ({u.last_round} of {u.planned_rounds})"]
            for u in summary.unfinished]
    return ["arm", "seed", "reported from"], rows


def summary_rows(summary: ScenarioSummary) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows (one per arm, evaluator and attacker) of a scenario summary.

    Final accuracy (labelled with the last round reached when a job is unfinished), attacker
    value and rank, paired and counterfactual inflation, Kendall tau of benign ranks.
    """
    many = len(summary.attacker_ids) > 1
    headers = ["arm", "evaluator"] + (["attacker"] if many else []) + [
        "final acc", "attacker value", "rank", "paired infl.", "counterf. infl.", "kendall tau"]
    rows = []
    for arm in summary.arms:
        acc = _acc_cell(summary, arm)
        for ev in summary.evaluators:
            tau = summary.kendall_tau[arm].get(ev)
            per_pid = summary.attacker[arm][ev]
            for pid, st in per_pid.items():
                rows.append([arm, ev] + ([pid] if many else []) + [
                    acc, fmt_ci(st.value), fmt_ci(st.rank, signed=False), fmt_ci(st.paired_inflation.ci),
                    fmt_ci(st.counterfactual_inflation.ci), fmt_ci(tau) if tau else "—"])
            if not per_pid:
                rows.append([arm, ev] + (["—"] if many else []) + [acc, "—", "—", "—", "—",
                                                                    fmt_ci(tau) if tau else "—"])
    return headers, rows


def client_rows(results: ScenarioResults | str | Path) -> tuple[list[str], list[list[str]]]:
    """Per client: examples, then each arm's cumulative value per evaluator (mean over seeds).

    ``*`` marks attackers. This is the per-client attribution table ``fedattr run`` prints. With
    client sampling, each arm also gets the client's participation count and each evaluator its
    value per participation (means over seeds).
    """
    res = results if isinstance(results, ScenarioResults) else load_results(results)
    headers = ["client", "examples"] + [f"{arm} {ev}" for arm in res.arms for ev in res.evaluators]
    if is_sampled(res):
        return _sampled_client_rows(res, headers)
    first = next(iter(res.jobs.values()), None)
    hists = first.label_histograms() if first else {}
    rows = []
    for pid in res.clients():
        row = [f"{pid}{'*' if pid in res.attacker_ids else ''}",
               str(int(sum(hists[pid]))) if pid in hists else "—"]
        row += [fmt_num(mean_ci(j.cumulative(ev).get(pid, math.nan) for j in res.runs(arm)).mean)
                for arm in res.arms for ev in res.evaluators]
        rows.append(row)
    return headers, rows


def _sampled_client_rows(res: ScenarioResults, headers: list[str]) -> tuple[list[str], list[list[str]]]:
    """:func:`client_rows` with participation counts and per-participation values."""
    ev0 = res.evaluators[0] if res.evaluators else None
    headers = ["client"] + [f"{arm} rounds" for arm in res.arms] + headers[2:] + [
        f"{arm} {ev} per part." for arm in res.arms for ev in res.evaluators]
    # Each job's counts and rates once, not once per client.
    counts = {arm: [participations(j, ev0) for j in res.runs(arm)] if ev0 else [] for arm in res.arms}
    rates = {(arm, ev): [per_participation(j, ev) for j in res.runs(arm)] for arm in res.arms for ev in res.evaluators}
    rows = []
    for pid in res.clients():
        row = [f"{pid}{'*' if pid in res.attacker_ids else ''}"]
        row += [f"{mean_ci(c.get(pid, 0) for c in counts[arm]).mean:g}" if ev0 else "—" for arm in res.arms]
        row += [fmt_num(mean_ci(j.cumulative(ev).get(pid, math.nan) for j in res.runs(arm)).mean)
                for arm in res.arms for ev in res.evaluators]
        row += [fmt_num(mean_ci(r.get(pid, math.nan) for r in rates[arm, ev]).mean)
                for arm in res.arms for ev in res.evaluators]
        rows.append(row)
    return headers, rows
