"""The results reader: a scenario results directory as typed job results.

Reads ``scenario.json``, ``environment.json`` and ``jobs/<arm>__s<seed>/{rounds.jsonl,summary.json}``.
Every job file is validated first (:func:`fedattr.results.store.job_state`, through the typed records of
:mod:`fedattr.protocol`): a truncated or invalid file is one :class:`~fedattr.core.errors.UserError`
naming it and what to do. A job without ``summary.json`` (an interrupted run) is reported from its
last round record; a failed job is listed with its reason and left out of every statistic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedattr.core.errors import DamagedResultsError, UserError
from fedattr.report.stats import as_float
from fedattr.results.store import job_state
from fedattr.scenario.schema import HONEST_ATTACK

__all__ = ["JobResult", "ScenarioResults", "load_results", "pid_key", "is_sweep", "sweep_meta"]


def _read_json(path: Path, default: Any = None) -> Any:
    """A JSON file's content, or ``default`` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def _read_rounds(path: Path) -> list[dict[str, Any]]:
    """Round records of one job (already validated), sorted by round."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(records, key=lambda r: as_float(r.get("round")))


def pid_key(pid: Any) -> tuple[int, str]:
    """Sort partition ids numerically when they are numbers."""
    s = str(pid)
    return (int(s), s) if s.lstrip("-").isdigit() else (10**9, s)


@dataclass
class JobResult:
    """One (arm, seed) job: its round records and summary (derived from rounds if missing)."""

    arm: str
    seed: int
    rounds: list[dict[str, Any]]
    summary: dict[str, Any]

    def _last(self, key: str) -> dict[str, Any]:
        """``key`` of the summary, else of the last round record that has it."""
        if isinstance(self.summary.get(key), dict):
            return self.summary[key]
        for rec in reversed(self.rounds):
            if isinstance(rec.get(key), dict):
                return rec[key]
        return {}

    @property
    def status(self) -> str:
        """``finished``, ``failed`` (set by the server) or ``partial`` (no summary yet)."""
        return str(self.summary.get("status", "finished")) if self.summary else "partial"

    @property
    def finished(self) -> bool:
        """True when the job wrote a summary that says finished."""
        return self.status == "finished"

    def failures(self) -> list[dict[str, Any]]:
        """Every rejected reply and missing client of every round: ``round``, ``partition_id``,
        ``node_id``, ``reason``; plus one row for the job itself when it failed."""
        rows = []
        for rec in self.rounds:
            for rej in rec.get("rejected") or []:
                rows.append({"round": rec.get("round"), "partition_id": rej.get("partition_id"),
                             "node_id": rej.get("node_id"), "reason": str(rej.get("reason", "?"))})
            if rec.get("missing"):
                rows.append({"round": rec.get("round"), "partition_id": None, "node_id": None,
                             "reason": f"{rec['missing']} node(s) sent no reply"})
        if self.status == "failed":
            rows.append({"round": None, "partition_id": None, "node_id": None,
                         "reason": "job failed: " + str(self.summary.get("failure_reason") or "no reason recorded")})
        return rows

    def accuracy_curve(self) -> dict[int, float]:
        """Test accuracy by round (round 0 = the initial model, when recorded)."""
        curve = {}
        init = self.summary.get("initial_test") or {}
        if "accuracy" in init:
            curve[0] = as_float(init["accuracy"])
        for rec in self.rounds:
            curve[int(as_float(rec.get("round")))] = as_float((rec.get("test") or {}).get("accuracy"))
        return curve

    def final_accuracy(self) -> float:
        """Test accuracy of the final model."""
        final = self.summary.get("final_test") or {}
        if "accuracy" in final:
            return as_float(final["accuracy"])
        return as_float((self.rounds[-1].get("test") or {}).get("accuracy")) if self.rounds else math.nan

    def cumulative(self, ev: str) -> dict[str, float]:
        """Cumulative value per client at the end of the run."""
        return {str(k): as_float(v) for k, v in (self._last("cumulative").get(ev) or {}).items()}

    def normalised(self, ev: str) -> dict[str, float]:
        """Normalised cumulative value per client at the end of the run."""
        return {str(k): as_float(v)
                for k, v in (self._last("cumulative_normalised").get(ev) or {}).items()}

    def ranks(self, ev: str) -> dict[str, float]:
        """Rank per client (1 = highest cumulative value); computed when not stored."""
        stored = self._last("ranks").get(ev)
        if stored:
            return {str(k): as_float(v) for k, v in stored.items()}
        cum = self.cumulative(ev)
        order = sorted(cum, key=lambda k: -cum[k] if math.isfinite(cum[k]) else math.inf)
        return {k: float(i + 1) for i, k in enumerate(order)}

    def counterfactual_inflation(self, ev: str) -> dict[str, float]:
        """Sum over rounds of (value - counterfactual value) per attacker; {} if not recorded."""
        stored = (self.summary.get("counterfactual_inflation") or {}).get(ev)
        if stored is not None:
            return {str(k): as_float(v) for k, v in stored.items()}
        total: dict[str, float] = {}
        for rec in self.rounds:
            cf = (rec.get("counterfactual_values") or {}).get(ev) or {}
            vals = (rec.get("values") or {}).get(ev) or {}
            for pid, v in cf.items():
                total[str(pid)] = total.get(str(pid), 0.0) + as_float(vals.get(pid)) - as_float(v)
        return total

    def cumulative_curve(self, ev: str, pid: str) -> dict[int, float]:
        """Cumulative value of one client by round."""
        return {int(as_float(r.get("round"))): as_float(((r.get("cumulative") or {}).get(ev) or {})
                                                 .get(pid)) for r in self.rounds}

    def label_histograms(self) -> dict[str, list[float]]:
        """Label histogram per client from the first round record that has them."""
        for rec in self.rounds:
            if rec.get("label_histograms"):
                return {str(k): list(v) for k, v in rec["label_histograms"].items()}
        return {}


@dataclass
class ScenarioResults:
    """Everything stored in one scenario results directory."""

    path: Path
    scenario: dict[str, Any]
    environment: dict[str, Any]
    jobs: dict[tuple[str, int], JobResult]
    failed: list[JobResult] = field(default_factory=list)
    arms: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    evaluators: list[str] = field(default_factory=list)
    attacker_ids: list[str] = field(default_factory=list)
    honest_arm: str | None = None

    def runs(self, arm: str) -> list[JobResult]:
        """Jobs of one arm, by seed."""
        return [self.jobs[(arm, s)] for s in self.seeds if (arm, s) in self.jobs]

    def clients(self) -> list[str]:
        """Every partition id seen in any job, sorted."""
        ids: set[str] = set()
        for job in self.jobs.values():
            for ev in self.evaluators:
                ids.update(job.cumulative(ev))
        if not ids and self.scenario.get("num_clients"):
            ids = {str(i) for i in range(int(self.scenario["num_clients"]))}
        return sorted(ids, key=pid_key)


def _ordered(preferred: Sequence[Any], seen: Iterable[Any]) -> list[Any]:
    """``preferred`` items that were seen (in order), then the other seen items."""
    seen = list(dict.fromkeys(seen))
    return [x for x in preferred if x in seen] + [x for x in seen if x not in preferred]


def _load_job(job_dir: Path) -> JobResult | None:
    """One job directory, or None when it holds nothing yet; UserError when a file is damaged."""
    state = job_state(job_dir)
    if state.status == "damaged":
        raise DamagedResultsError(f"damaged results file: {state.detail}")
    if state.status == "absent":
        return None
    rounds = _read_rounds(job_dir / "rounds.jsonl")
    summary = _read_json(job_dir / "summary.json", {}) or {}
    if not rounds and not summary:
        return None
    first = rounds[0] if rounds else {}
    arm, _, seed = job_dir.name.rpartition("__s")
    arm = str(summary.get("arm", first.get("arm", arm)))
    seed_v = summary.get("seed", first.get("seed", seed))
    try:
        seed_i = int(seed_v)
    except (TypeError, ValueError):
        return None
    return JobResult(arm=arm, seed=seed_i, rounds=rounds, summary=summary)


def load_results(results_dir: str | Path) -> ScenarioResults:
    """Read a scenario results directory. Raises UserError if it is not one."""
    path = Path(results_dir)
    scenario = _read_json(path / "scenario.json")
    if not isinstance(scenario, dict):
        raise UserError(f"not a scenario results directory (no readable scenario.json): {path}")
    environment = _read_json(path / "environment.json", {}) or {}
    jobs: dict[tuple[str, int], JobResult] = {}
    failed: list[JobResult] = []
    for job_dir in sorted((path / "jobs").glob("*")) if (path / "jobs").is_dir() else []:
        job = _load_job(job_dir) if job_dir.is_dir() else None
        if job is not None and job.status == "failed":
            failed.append(job)  # its numbers cannot be used; it is listed with its reason
        elif job is not None:
            jobs[(job.arm, job.seed)] = job
    arm_specs = scenario.get("arms") or []
    arms = _ordered([a.get("name") for a in arm_specs], [a for a, _ in jobs])
    seeds = _ordered(list(scenario.get("seeds") or []), sorted(s for _, s in jobs))
    ev_cfg = [e.get("name") for e in (scenario.get("attribution") or {}).get("evaluators") or []]
    ev_seen = [ev for job in jobs.values() for ev in job._last("cumulative")]
    honest = next((a.get("name") for a in arm_specs if a.get("attack") == HONEST_ATTACK), None)
    if honest is None and "honest" in arms:
        honest = "honest"
    attackers = scenario.get("attacker_ids")
    if attackers is None:
        attackers = next((j.summary.get("attacker_ids") for j in jobs.values()
                          if j.summary.get("attacker_ids") is not None), [])
    return ScenarioResults(path=path, scenario=scenario, environment=environment, jobs=jobs, failed=failed,
                           arms=arms, seeds=seeds, evaluators=_ordered(ev_cfg, ev_seen),
                           attacker_ids=[str(a) for a in attackers], honest_arm=honest)


def is_sweep(path: Path) -> bool:
    """A sweep directory holds sweep.json."""
    return (path / "sweep.json").is_file()


def sweep_meta(path: Path) -> dict[str, Any]:
    """sweep.json, checked for the keys the report needs."""
    meta = _read_json(path / "sweep.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("points"), list):
        raise UserError(f"unreadable sweep.json (needs a 'points' list): {path / 'sweep.json'}")
    return meta


#: Settings that must agree for jobs of several results directories to be compared seed by seed.
_COMPARABLE = ("num_clients", "attacker_ids", "rounds", "model", "data", "partition", "train", "aggregation")


def merge_results(parts: Sequence[ScenarioResults]) -> ScenarioResults:
    """One view of several results directories of the same regime (e.g. a study and its controls):
    their arms side by side, paired by seed. Raises UserError when a setting in ``_COMPARABLE``
    differs or two directories hold the same arm."""
    if not parts:
        raise UserError("no results directories to merge")
    first = parts[0]
    for other in parts[1:]:
        diff = [k for k in _COMPARABLE if first.scenario.get(k) != other.scenario.get(k)]
        if diff:
            raise UserError(f"{other.path} is not comparable with {first.path}: {', '.join(diff)} differ")
        clash = sorted(set(first.arms) & set(other.arms))
        if clash:
            raise UserError(f"arm {clash[0]!r} is in both {first.path} and {other.path}; merge results of distinct arms")
        first = ScenarioResults(
            path=first.path,
            scenario={**first.scenario, "arms": [*(first.scenario.get("arms") or []), *(other.scenario.get("arms") or [])]},
            environment=first.environment, jobs={**first.jobs, **other.jobs}, failed=[*first.failed, *other.failed],
            arms=[*first.arms, *other.arms], seeds=sorted({*first.seeds, *other.seeds}),
            evaluators=list(dict.fromkeys([*first.evaluators, *other.evaluators])),
            attacker_ids=first.attacker_ids, honest_arm=first.honest_arm or other.honest_arm,
        )
    return first

