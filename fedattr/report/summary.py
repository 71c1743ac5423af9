"""Every reported number of a scenario or sweep directory, and the rows of the CLI's tables.

Quantities, per evaluator and attacker client (partition id):
- attacker value: its cumulative value at the end of the run (also normalised share and rank);
- counterfactual inflation: sum over rounds of (value - value of its honest update in the same
  round game), as the server recorded it;
- paired inflation: its cumulative value in an arm minus in the honest arm, same seed;
- Kendall tau: agreement of the benign clients' cumulative-value ranking between the honest arm
  and an arm, same seed (1 = ranking unchanged).
Every entry is a mean over seeds with a 95% confidence half-width from the t-distribution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedattr.core.errors import DamagedResultsError, UserError
from fedattr.report.reader import ScenarioResults, is_sweep, load_results, pid_key, sweep_meta
from fedattr.report.stats import MeanCI, ci_from, fmt_ci, fmt_num, kendall_between, mean_ci
from fedattr.scenario.schema import HONEST_ATTACK

__all__ = ["summarize", "scenario_summary", "summary_rows", "failures", "failure_rows", "client_rows", "arm_attack", "paired_accuracy",
           "inflation_difference", "kendall_ci"]


def arm_attack(res: ScenarioResults, arm: str) -> str:
    """The attack name of an arm, from scenario.json."""
    for spec in res.scenario.get("arms") or []:
        if spec.get("name") == arm:
            return str(spec.get("attack", HONEST_ATTACK))
    return HONEST_ATTACK if arm == res.honest_arm else "?"


def paired_value(res: ScenarioResults, arm: str, ev: str, pid: str) -> MeanCI:
    """Attacker value in ``arm`` minus in the honest arm, per seed."""
    if res.honest_arm is None or arm == res.honest_arm:
        return mean_ci([])
    diffs = []
    for seed in res.seeds:
        a, h = res.jobs.get((arm, seed)), res.jobs.get((res.honest_arm, seed))
        if a is not None and h is not None:
            diffs.append(a.cumulative(ev).get(pid, math.nan) - h.cumulative(ev).get(pid, math.nan))
    return mean_ci(diffs)


def paired_accuracy(res: ScenarioResults, arm: str) -> MeanCI:
    """Final accuracy in ``arm`` minus in the honest arm, per seed."""
    if res.honest_arm is None or arm == res.honest_arm:
        return mean_ci([])
    diffs = [res.jobs[(arm, s)].final_accuracy() - res.jobs[(res.honest_arm, s)].final_accuracy()
             for s in res.seeds if (arm, s) in res.jobs and (res.honest_arm, s) in res.jobs]
    return mean_ci(diffs)


def inflation_difference(res: ScenarioResults, a: str, b: str, ev: str, pid: str) -> MeanCI:
    """Counterfactual inflation in arm ``a`` minus in arm ``b``, per seed."""
    diffs = [res.jobs[(a, s)].counterfactual_inflation(ev).get(pid, math.nan)
             - res.jobs[(b, s)].counterfactual_inflation(ev).get(pid, math.nan)
             for s in res.seeds if (a, s) in res.jobs and (b, s) in res.jobs]
    return mean_ci(diffs)


def kendall_ci(res: ScenarioResults, arm: str, ev: str) -> MeanCI:
    """Kendall tau of benign clients' cumulative ranking, honest arm vs ``arm``, per seed."""
    if res.honest_arm is None or arm == res.honest_arm:
        return mean_ci([])
    taus = []
    for seed in res.seeds:
        a, h = res.jobs.get((arm, seed)), res.jobs.get((res.honest_arm, seed))
        if a is not None and h is not None:
            ca, ch = a.cumulative(ev), h.cumulative(ev)
            benign = [k for k in sorted(ch, key=pid_key) if k not in res.attacker_ids]
            taus.append(kendall_between(ch, ca, keys=benign))
    return mean_ci(taus)


def scenario_summary(res: ScenarioResults) -> dict[str, Any]:
    """All reported numbers of one scenario directory as a JSON-ready dict."""
    env = res.environment
    out: dict[str, Any] = {
        "kind": "scenario", "dir": str(res.path), "name": res.scenario.get("name"),
        "arms": res.arms, "honest_arm": res.honest_arm, "seeds": res.seeds,
        "evaluators": res.evaluators, "attacker_ids": res.attacker_ids,
        "jobs": {"found": len(res.jobs), "finished": sum(j.finished for j in res.jobs.values()),
                 "failed": len(res.failed),
                 "expected": len(res.scenario.get("arms") or []) * len(res.scenario.get("seeds")
                                                                      or [])},
        "failures": failures(res),
        "wall_s": env.get("wall_s"), "startup_s": env.get("startup_s"),
        "final_accuracy": {}, "attacker": {}, "kendall_tau": {},
    }
    for arm in res.arms:
        runs = res.runs(arm)
        out["final_accuracy"][arm] = mean_ci(j.final_accuracy() for j in runs).as_dict()
        out["attacker"][arm] = {}
        out["kendall_tau"][arm] = {}
        for ev in res.evaluators:
            per_pid = {}
            for pid in res.attacker_ids:
                is_attack = arm_attack(res, arm) != HONEST_ATTACK
                cf = mean_ci(j.counterfactual_inflation(ev).get(pid) for j in runs) if is_attack \
                    else mean_ci([])
                per_pid[pid] = {
                    "value": mean_ci(j.cumulative(ev).get(pid) for j in runs).as_dict(),
                    "normalised": mean_ci(j.normalised(ev).get(pid) for j in runs).as_dict(),
                    "rank": mean_ci(j.ranks(ev).get(pid) for j in runs).as_dict(),
                    "counterfactual_inflation": cf.as_dict(),
                    "paired_inflation": paired_value(res, arm, ev, pid).as_dict(),
                }
            out["attacker"][arm][ev] = per_pid
            if arm != res.honest_arm:
                out["kendall_tau"][arm][ev] = kendall_ci(res, arm, ev).as_dict()
    return out


def summarize(results_dir: str | Path) -> dict[str, Any]:
    """All reported numbers of a scenario or sweep directory as a JSON-ready dict.

    Each statistic is ``{"mean", "ci95", "n", "values"}`` over seeds (None for nan).
    """
    path = Path(results_dir)
    if not path.is_dir():
        raise UserError(f"results directory not found: {path}")
    if not is_sweep(path):
        return scenario_summary(load_results(path))
    meta = sweep_meta(path)
    points = []
    for point in meta["points"]:
        pdir = path / str(point.get("dir", ""))
        entry = {"overrides": point.get("overrides", {}), "dir": str(point.get("dir"))}
        try:
            entry["summary"] = scenario_summary(load_results(pdir))
        except DamagedResultsError:
            raise
        except UserError as exc:
            entry["summary"], entry["error"] = None, str(exc)
        points.append(entry)
    return {"kind": "sweep", "dir": str(path), "grid": meta.get("grid", {}), "points": points,
            "wall_s": meta.get("wall_s"), "startup_s": meta.get("startup_s")}


def failures(res: ScenarioResults) -> list[dict[str, Any]]:
    """Every failure of every job (rejected replies, silent nodes, failed jobs), grouped.

    One entry per (arm, seed, partition id, reason) with the rounds it happened in; a failed
    job's entries come first. Failed jobs are left out of every statistic, so this is the only
    place their numbers show.
    """
    grouped: dict[tuple, dict[str, Any]] = {}
    jobs = sorted(res.failed, key=lambda j: (j.arm, j.seed)) + [res.jobs[k] for k in sorted(res.jobs)]
    for job in jobs:
        for row in job.failures():
            key = (job.arm, job.seed, row["partition_id"], row["reason"])
            entry = grouped.setdefault(key, {"arm": job.arm, "seed": job.seed, "status": job.status,
                                             "partition_id": row["partition_id"], "node_id": row["node_id"],
                                             "reason": row["reason"], "rounds": []})
            if row["round"] is not None:
                entry["rounds"].append(row["round"])
    return list(grouped.values())


def failure_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the failures table (``fedattr run`` and the report print it)."""
    rows = [[f["arm"], str(f["seed"]), f["status"], "—" if f["partition_id"] is None else str(f["partition_id"]),
             ", ".join(map(str, f["rounds"])) or "—", f["reason"]] for f in summary.get("failures") or []]
    return ["arm", "seed", "job status", "client", "rounds", "reason"], rows


def summary_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows (one per arm, evaluator and attacker) of a scenario summary.

    What ``fedattr run`` prints: final accuracy, attacker value and rank, paired and
    counterfactual inflation, Kendall tau of benign ranks.
    """
    many = len(summary.get("attacker_ids") or []) > 1
    headers = ["arm", "evaluator"] + (["attacker"] if many else []) + [
        "final acc", "attacker value", "rank", "paired infl.", "counterf. infl.", "kendall tau"]
    rows = []
    for arm in summary.get("arms", []):
        acc = fmt_ci(ci_from(summary["final_accuracy"].get(arm)), signed=False)
        for ev in summary.get("evaluators", []):
            tau = fmt_ci(ci_from(summary["kendall_tau"].get(arm, {}).get(ev)))
            per_pid = summary["attacker"].get(arm, {}).get(ev, {}) or {"—": {}}
            for pid, st in per_pid.items():
                rows.append([arm, ev] + ([pid] if many else []) + [
                    acc, fmt_ci(ci_from(st.get("value"))), fmt_ci(ci_from(st.get("rank")), signed=False),
                    fmt_ci(ci_from(st.get("paired_inflation"))),
                    fmt_ci(ci_from(st.get("counterfactual_inflation"))), tau])
    return headers, rows


def client_rows(results_dir: str | Path) -> tuple[list[str], list[list[str]]]:
    """Per client: examples, then each arm's cumulative value per evaluator (mean over seeds).

    ``*`` marks attackers. This is the per-client attribution table ``fedattr run`` prints.
    """
    res = load_results(results_dir)
    headers = ["client", "examples"] + [f"{arm} {ev}" for arm in res.arms for ev in res.evaluators]
    first = next(iter(res.jobs.values()), None)
    hists = first.label_histograms() if first else {}
    rows = []
    for pid in res.clients():
        mark = "*" if pid in res.attacker_ids else ""
        row = [f"{pid}{mark}", str(int(sum(hists.get(pid, [])))) if pid in hists else "—"]
        for arm in res.arms:
            for ev in res.evaluators:
                vals = [job.cumulative(ev).get(pid, math.nan) for job in res.runs(arm)]
                ci = mean_ci(vals)
                row.append(fmt_num(ci.mean))
        rows.append(row)
    return headers, rows
