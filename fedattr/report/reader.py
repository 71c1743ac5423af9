"""The results reader: a results directory parsed once into typed records.

``scenario.json`` becomes a :class:`~fedattr.scenario.schema.Scenario`, every job's
``rounds.jsonl``/``summary.json`` the protocol's :class:`~fedattr.protocol.RoundRecord` list and
:class:`~fedattr.protocol.JobSummary` (read and validated by :func:`fedattr.results.store.load_job`),
``environment.json`` an :class:`Environment` and ``sweep.json`` a :class:`SweepMeta`. A damaged
file is one :class:`~fedattr.core.errors.DamagedResultsError` naming it and what to do. A job
without ``summary.json`` (interrupted, or still running) is reported from its last round and
flagged; a failed job is listed with its reason and left out of every statistic.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from fedattr.core.errors import DamagedResultsError, UserError
from fedattr.protocol import JobSummary, RoundRecord
from fedattr.report.stats import as_float, ranks
from fedattr.results.store import LOCK_NAME, load_job
from fedattr.scenario import HONEST_ATTACK, Scenario, ScenarioError, scenario_from_dict

__all__ = ["Environment", "SweepPoint", "SweepMeta", "JobResult", "ScenarioResults", "load_results",
           "merge_results", "pid_key", "is_sweep", "sweep_meta", "read_scenario", "read_environment", "held_by_live_run", "round_inflation"]



class _Meta(BaseModel):
    model_config = ConfigDict(extra="allow")


class Environment(_Meta):
    """``environment.json``: software, machine, command and timings of a run."""

    python: str | None = None
    platform: str | None = None
    packages: dict[str, str | None] = {}
    command: str | None = None
    commit: str | None = None
    cpu_count: int | None = None
    started: str | None = None
    finished: str | None = None
    wall_s: float | None = None
    startup_s: float | None = None
    matmul_gflops: float | None = None
    load_average: float | None = None


class SweepPoint(_Meta):
    """One point of a sweep: its directory (relative to the sweep) and grid overrides."""

    dir: str
    overrides: dict[str, Any] = {}


class SweepMeta(_Meta):
    """``sweep.json``: the grid, its points and timings."""

    grid: dict[str, list[Any]] = {}
    points: list[SweepPoint]
    wall_s: float | None = None
    startup_s: float | None = None
    started: str | None = None
    finished: str | None = None


def _read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pid_key(pid: Any) -> tuple[int, str]:
    """Sort partition ids numerically when they are numbers."""
    s = str(pid)
    return (int(s), s) if s.lstrip("-").isdigit() else (10**9, s)


def _strs(d: dict[Any, Any] | None) -> dict[str, float]:
    """A stored {partition id: number} map with string keys and float values."""
    return {str(k): as_float(v) for k, v in (d or {}).items()}


def round_inflation(rec: RoundRecord, ev: str) -> dict[str, float]:
    """One round's counterfactual inflation per attacker: its value minus its counterfactual value."""
    values = rec.values.get(ev) or {}
    return {str(pid): as_float(values.get(pid)) - as_float(cf)
            for pid, cf in (rec.counterfactual_values.get(ev) or {}).items()}


@dataclass
class JobResult:
    """One (arm, seed) job: its round records, its summary (None while unfinished) and status.

    ``status``: ``finished``, ``failed`` (set by the server) or ``partial`` (no summary: the job
    was interrupted or is still running). ``planned_rounds`` is the scenario's round count.
    """

    arm: str
    seed: int
    rounds: list[RoundRecord]
    summary: JobSummary | None
    planned_rounds: int

    @property
    def status(self) -> Literal["finished", "failed", "partial"]:
        """``finished``, ``failed`` or ``partial``."""
        return self.summary.status if self.summary is not None else "partial"

    @property
    def finished(self) -> bool:
        """True when the job wrote a summary that says finished."""
        return self.status == "finished"

    @property
    def last_round(self) -> int:
        """The last round recorded (0 when none)."""
        return self.rounds[-1].round if self.rounds else 0

    def _last(self, key: str) -> dict[str, dict[str, float]]:
        """A per-evaluator map of the summary, else of the last round record that has it."""
        stored = getattr(self.summary, key, None) if self.summary is not None else None
        if stored:
            return {ev: _strs(m) for ev, m in stored.items()}
        for rec in reversed(self.rounds):
            if getattr(rec, key):
                return {ev: _strs(m) for ev, m in getattr(rec, key).items()}
        return {}

    def evaluators(self) -> list[str]:
        """Evaluators with a cumulative value in this job."""
        return list(self._last("cumulative"))

    def accuracy_curve(self) -> dict[int, float]:
        """Test accuracy by round (round 0 = the initial model, when recorded)."""
        curve = {}
        init = self.summary.initial_test if self.summary is not None else {}
        if "accuracy" in init:
            curve[0] = as_float(init["accuracy"])
        for rec in self.rounds:
            curve[rec.round] = as_float(rec.test.get("accuracy"))
        return curve

    def final_accuracy(self) -> float:
        """Test accuracy of the final model (of the last round reached when unfinished)."""
        final = self.summary.final_test if self.summary is not None else None
        if final and "accuracy" in final:
            return as_float(final["accuracy"])
        return as_float(self.rounds[-1].test.get("accuracy")) if self.rounds else math.nan

    def cumulative(self, ev: str) -> dict[str, float]:
        """Cumulative value per client at the end of the run (or the last round reached)."""
        return self._last("cumulative").get(ev, {})

    def normalised(self, ev: str) -> dict[str, float]:
        """Normalised cumulative value per client."""
        return self._last("cumulative_normalised").get(ev, {})

    def ranks(self, ev: str) -> dict[str, float]:
        """Rank per client (1 = highest cumulative value): as stored, else by :func:`~fedattr.report.stats.ranks`."""
        return self._last("ranks").get(ev) or ranks(self.cumulative(ev))

    def counterfactual_inflation(self, ev: str) -> dict[str, float]:
        """Sum over rounds of :func:`round_inflation` per attacker ({} when not recorded)."""
        total: dict[str, float] = {}
        for rec in self.rounds:
            for pid, x in round_inflation(rec, ev).items():
                total[pid] = total.get(pid, 0.0) + x
        return total

    def cumulative_curve(self, ev: str, pid: str) -> dict[int, float]:
        """Cumulative value of one client by round."""
        return {rec.round: as_float({str(k): v for k, v in (rec.cumulative.get(ev) or {}).items()}.get(pid))
                for rec in self.rounds}

    def label_histograms(self) -> dict[str, list[float]]:
        """Label histogram per client from the first round record that has them."""
        for rec in self.rounds:
            if rec.label_histograms:
                return {str(k): [float(c) for c in v] for k, v in rec.label_histograms.items()}
        return {}

    def num_examples(self) -> dict[str, float]:
        """Examples each client claimed in the first round that records them."""
        for rec in self.rounds:
            if rec.num_examples:
                return _strs(rec.num_examples)
        return {}


@dataclass
class ScenarioResults:
    """Everything stored in one scenario results directory.

    ``jobs``: usable jobs (finished or unfinished) by (arm, seed); ``failed``: failed jobs, left
    out of every statistic; ``in_progress``: a live run holds the directory.
    """

    path: Path
    scenario: Scenario
    environment: Environment
    jobs: dict[tuple[str, int], JobResult]
    failed: list[JobResult] = field(default_factory=list)
    arms: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    evaluators: list[str] = field(default_factory=list)
    attacker_ids: list[str] = field(default_factory=list)
    honest_arm: str | None = None
    in_progress: bool = False

    def runs(self, arm: str) -> list[JobResult]:
        """Jobs of one arm, by seed."""
        return [self.jobs[(arm, s)] for s in self.seeds if (arm, s) in self.jobs]

    def unfinished(self) -> list[JobResult]:
        """Jobs without a summary (interrupted or running), by arm and seed."""
        return [self.jobs[k] for k in sorted(self.jobs) if not self.jobs[k].finished]

    def attack_of(self, arm: str) -> str:
        """The attack name of an arm."""
        spec = next((a for a in self.scenario.arms if a.name == arm), None)
        return spec.attack if spec is not None else (HONEST_ATTACK if arm == self.honest_arm else "?")

    def clients(self) -> list[str]:
        """Every partition id seen in any job, sorted."""
        ids: set[str] = set()
        for job in self.jobs.values():
            for ev in self.evaluators:
                ids.update(job.cumulative(ev))
        if not ids:
            ids = {str(i) for i in range(self.scenario.num_clients)}
        return sorted(ids, key=pid_key)


def _ordered(preferred: Sequence[Any], seen: Iterable[Any]) -> list[Any]:
    """``preferred`` items that were seen (in order), then the other seen items."""
    seen = list(dict.fromkeys(seen))
    return [x for x in preferred if x in seen] + [x for x in seen if x not in preferred]


def _load_job(job_dir: Path, planned_rounds: int) -> JobResult | None:
    """One job directory, or None when it holds nothing yet; DamagedResultsError when a file is damaged."""
    stored = load_job(job_dir)
    if stored.state.status == "damaged":
        raise DamagedResultsError(f"damaged results file: {stored.state.detail}")
    if stored.state.status == "absent":
        return None
    rounds = sorted(stored.rounds, key=lambda r: r.round)
    first = stored.summary if stored.summary is not None else rounds[0]
    return JobResult(arm=first.arm, seed=first.seed, rounds=rounds, summary=stored.summary,
                     planned_rounds=stored.summary.rounds if stored.summary is not None else planned_rounds)


def held_by_live_run(path: Path) -> bool:
    """True when a live run holds ``path``'s run lock (``.fedattr.lock``, an flock held while it runs)."""
    lock = path / LOCK_NAME
    if not lock.is_file():
        return False
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def read_scenario(path: Path) -> Scenario:
    """``path/scenario.json`` as a Scenario; UserError when missing or invalid."""
    if not path.is_dir():
        raise UserError(f"results directory not found: {path}")
    data = _read_json(path / "scenario.json")
    if not isinstance(data, dict):
        raise UserError(f"not a scenario results directory (no readable scenario.json): {path}")
    try:
        return scenario_from_dict(data, where=str(path / "scenario.json"))
    except ScenarioError as exc:
        raise UserError(f"{path / 'scenario.json'} does not validate with this fedattr: {exc}") from None


def read_environment(path: Path) -> Environment:
    """``path/environment.json``; an empty Environment when missing or unreadable."""
    try:
        return Environment.model_validate(_read_json(Path(path) / "environment.json") or {})
    except ValidationError:
        return Environment()


def load_results(results_dir: str | Path) -> ScenarioResults:
    """Read a scenario results directory. Raises UserError if it is not one."""
    path = Path(results_dir)
    scenario = read_scenario(path)
    environment = read_environment(path)
    jobs: dict[tuple[str, int], JobResult] = {}
    failed: list[JobResult] = []
    for job_dir in sorted((path / "jobs").glob("*")) if (path / "jobs").is_dir() else []:
        job = _load_job(job_dir, scenario.rounds) if job_dir.is_dir() else None
        if job is not None and job.status == "failed":
            failed.append(job)  # its numbers cannot be used; it is listed with its reason
        elif job is not None:
            jobs[(job.arm, job.seed)] = job
    arms = _ordered([a.name for a in scenario.arms], [a for a, _ in jobs])
    seeds = _ordered(list(scenario.seeds), sorted(s for _, s in jobs))
    ev_seen = [ev for job in jobs.values() for ev in job.evaluators()]
    honest = next((a.name for a in scenario.arms if a.attack == HONEST_ATTACK), None)
    return ScenarioResults(path=path, scenario=scenario, environment=environment, jobs=jobs, failed=failed,
                           arms=arms, seeds=seeds,
                           evaluators=_ordered([e.name for e in scenario.attribution.evaluators], ev_seen),
                           attacker_ids=[str(a) for a in scenario.attacker_ids], honest_arm=honest,
                           in_progress=held_by_live_run(path))


def is_sweep(path: Path) -> bool:
    """A sweep directory holds sweep.json."""
    return (Path(path) / "sweep.json").is_file()


def sweep_meta(path: Path) -> SweepMeta:
    """sweep.json, checked for the keys the report needs."""
    try:
        return SweepMeta.model_validate(_read_json(Path(path) / "sweep.json"))
    except ValidationError:
        raise UserError(f"unreadable sweep.json (needs a 'points' list): {Path(path) / 'sweep.json'}") from None


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
        diff = [k for k in _COMPARABLE if getattr(first.scenario, k) != getattr(other.scenario, k)]
        if diff:
            raise UserError(f"{other.path} is not comparable with {first.path}: {', '.join(diff)} differ")
        clash = sorted(set(first.arms) & set(other.arms))
        if clash:
            raise UserError(f"arm {clash[0]!r} is in both {first.path} and {other.path}; merge results of distinct arms")
        first = replace(
            first, scenario=first.scenario.model_copy(update={"arms": [*first.scenario.arms, *other.scenario.arms]}),
            jobs={**first.jobs, **other.jobs}, failed=[*first.failed, *other.failed],
            arms=[*first.arms, *other.arms], seeds=sorted({*first.seeds, *other.seeds}),
            evaluators=list(dict.fromkeys([*first.evaluators, *other.evaluators])),
            honest_arm=first.honest_arm or other.honest_arm, in_progress=first.in_progress or other.in_progress)
    return first
