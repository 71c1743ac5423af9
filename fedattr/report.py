"""Reports of stored results: mean ± 95% CI tables over seeds, PNG plots, report.md/.html.

A results directory is re-reportable at any time without re-running: everything here reads
``scenario.json``, ``environment.json`` and ``jobs/<arm>__s<seed>/{rounds.jsonl,summary.json}``
(or, for a sweep, ``sweep.json`` and its ``points/pNNN/`` scenario directories). A job without
``summary.json`` (an interrupted run) is reported from its last round record.

Quantities, per evaluator and attacker client (partition id):
- attacker value: its cumulative value at the end of the run (also normalised share and rank);
- counterfactual inflation: sum over rounds of (value - value of its honest update in the same
  round game), as the server recorded it;
- paired inflation: its cumulative value in an arm minus in the honest arm, same seed;
- Kendall tau: agreement of the benign clients' cumulative-value ranking between the honest arm
  and an arm, same seed (1 = ranking unchanged).
Every table entry is a mean over seeds with a 95% confidence half-width from the t-distribution.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure  # pyplot-free: Figure.savefig renders PNG with Agg
from matplotlib.ticker import MaxNLocator
from scipy import stats

from fedattr.errors import UserError
from fedattr.results import atomic_write_text
from fedattr.scenario import HONEST_ATTACK, ScenarioError, scenario_from_dict

__all__ = [
    "MeanCI",
    "mean_ci",
    "fmt_ci",
    "kendall_between",
    "JobResult",
    "ScenarioResults",
    "load_results",
    "summarize",
    "summary_rows",
    "write_report",
    "markdown_to_html",
]

# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class MeanCI:
    """Mean of the finite values, 95% CI half-width (nan when n < 2), and n."""

    mean: float
    half: float
    n: int
    values: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form; nan becomes None."""
        def clean(x: float) -> float | None:
            return None if x is None or not math.isfinite(x) else float(x)
        return {"mean": clean(self.mean), "ci95": clean(self.half), "n": self.n,
                "values": [clean(v) for v in self.values]}


def _num(x: Any) -> float:
    """A float from a stored number; None/missing/non-numeric become nan."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def mean_ci(values: Iterable[Any], confidence: float = 0.95) -> MeanCI:
    """Mean and t-distribution confidence half-width of the finite values.

    n = 0 gives nan/nan; n = 1 gives the value and a nan half-width.
    """
    xs = [v for v in (_num(x) for x in values) if math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return MeanCI(math.nan, math.nan, 0, ())
    arr = np.asarray(xs, dtype=float)
    mean = float(arr.mean())
    if n == 1:
        return MeanCI(mean, math.nan, 1, tuple(xs))
    sem = float(arr.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sem
    return MeanCI(mean, half, n, tuple(xs))


def fmt_ci(ci: MeanCI) -> str:
    """``m ± h`` (4 and 2 significant digits); ``m (n=1)`` for one value; ``—`` for none."""
    if ci.n == 0:
        return "—"
    if ci.n == 1:
        return f"{ci.mean:.4g} (n=1)"
    return f"{ci.mean:.4g} ± {ci.half:.2g}"


def kendall_between(a: Mapping[Any, Any], b: Mapping[Any, Any],
                    keys: Iterable[Any] | None = None) -> float:
    """Kendall tau-b between two {client: value} maps over their common (or the given) keys.

    nan when fewer than two keys are shared or a side is constant.
    """
    a = {str(k): _num(v) for k, v in a.items()}
    b = {str(k): _num(v) for k, v in b.items()}
    common = [str(k) for k in keys] if keys is not None else [k for k in a if k in b]
    common = [k for k in common if k in a and k in b
              and math.isfinite(a[k]) and math.isfinite(b[k])]
    if len(common) < 2:
        return math.nan
    xa, xb = [a[k] for k in common], [b[k] for k in common]
    if len(set(xa)) < 2 or len(set(xb)) < 2:
        return math.nan
    return float(stats.kendalltau(xa, xb).statistic)


# --------------------------------------------------------------------------- loading


def _read_json(path: Path, default: Any = None) -> Any:
    """A JSON file's content, or ``default`` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def _read_rounds(path: Path) -> list[dict[str, Any]]:
    """Round records of one job, sorted by round; unparsable lines are skipped."""
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return sorted(records, key=lambda r: _num(r.get("round")))


def _pid_key(pid: Any) -> tuple[int, str]:
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
    def finished(self) -> bool:
        """True when the job wrote its summary."""
        return bool(self.summary)

    def accuracy_curve(self) -> dict[int, float]:
        """Test accuracy by round (round 0 = the initial model, when recorded)."""
        curve = {}
        init = self.summary.get("initial_test") or {}
        if "accuracy" in init:
            curve[0] = _num(init["accuracy"])
        for rec in self.rounds:
            curve[int(_num(rec.get("round")))] = _num((rec.get("test") or {}).get("accuracy"))
        return curve

    def final_accuracy(self) -> float:
        """Test accuracy of the final model."""
        final = self.summary.get("final_test") or {}
        if "accuracy" in final:
            return _num(final["accuracy"])
        return _num((self.rounds[-1].get("test") or {}).get("accuracy")) if self.rounds else math.nan

    def cumulative(self, ev: str) -> dict[str, float]:
        """Cumulative value per client at the end of the run."""
        return {str(k): _num(v) for k, v in (self._last("cumulative").get(ev) or {}).items()}

    def normalised(self, ev: str) -> dict[str, float]:
        """Normalised cumulative value per client at the end of the run."""
        return {str(k): _num(v)
                for k, v in (self._last("cumulative_normalised").get(ev) or {}).items()}

    def ranks(self, ev: str) -> dict[str, float]:
        """Rank per client (1 = highest cumulative value); computed when not stored."""
        stored = self._last("ranks").get(ev)
        if stored:
            return {str(k): _num(v) for k, v in stored.items()}
        cum = self.cumulative(ev)
        order = sorted(cum, key=lambda k: -cum[k] if math.isfinite(cum[k]) else math.inf)
        return {k: float(i + 1) for i, k in enumerate(order)}

    def counterfactual_inflation(self, ev: str) -> dict[str, float]:
        """Sum over rounds of (value - counterfactual value) per attacker; {} if not recorded."""
        stored = (self.summary.get("counterfactual_inflation") or {}).get(ev)
        if stored is not None:
            return {str(k): _num(v) for k, v in stored.items()}
        total: dict[str, float] = {}
        for rec in self.rounds:
            cf = (rec.get("counterfactual_values") or {}).get(ev) or {}
            vals = (rec.get("values") or {}).get(ev) or {}
            for pid, v in cf.items():
                total[str(pid)] = total.get(str(pid), 0.0) + _num(vals.get(pid)) - _num(v)
        return total

    def cumulative_curve(self, ev: str, pid: str) -> dict[int, float]:
        """Cumulative value of one client by round."""
        return {int(_num(r.get("round"))): _num(((r.get("cumulative") or {}).get(ev) or {})
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
        return sorted(ids, key=_pid_key)


def _ordered(preferred: Sequence[Any], seen: Iterable[Any]) -> list[Any]:
    """``preferred`` items that were seen (in order), then the other seen items."""
    seen = list(dict.fromkeys(seen))
    return [x for x in preferred if x in seen] + [x for x in seen if x not in preferred]


def _load_job(job_dir: Path) -> JobResult | None:
    """One job directory, or None when it holds nothing readable."""
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
    for job_dir in sorted((path / "jobs").glob("*")) if (path / "jobs").is_dir() else []:
        job = _load_job(job_dir) if job_dir.is_dir() else None
        if job is not None:
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
    return ScenarioResults(path=path, scenario=scenario, environment=environment, jobs=jobs,
                           arms=arms, seeds=seeds, evaluators=_ordered(ev_cfg, ev_seen),
                           attacker_ids=[str(a) for a in attackers], honest_arm=honest)


# --------------------------------------------------------------------------- summaries


def _arm_attack(res: ScenarioResults, arm: str) -> str:
    """The attack name of an arm, from scenario.json."""
    for spec in res.scenario.get("arms") or []:
        if spec.get("name") == arm:
            return str(spec.get("attack", HONEST_ATTACK))
    return HONEST_ATTACK if arm == res.honest_arm else "?"


def _paired(res: ScenarioResults, arm: str, ev: str, pid: str) -> MeanCI:
    """Attacker value in ``arm`` minus in the honest arm, per seed."""
    if res.honest_arm is None or arm == res.honest_arm:
        return mean_ci([])
    diffs = []
    for seed in res.seeds:
        a, h = res.jobs.get((arm, seed)), res.jobs.get((res.honest_arm, seed))
        if a is not None and h is not None:
            diffs.append(a.cumulative(ev).get(pid, math.nan) - h.cumulative(ev).get(pid, math.nan))
    return mean_ci(diffs)


def _paired_accuracy(res: ScenarioResults, arm: str) -> MeanCI:
    """Final accuracy in ``arm`` minus in the honest arm, per seed."""
    if res.honest_arm is None or arm == res.honest_arm:
        return mean_ci([])
    diffs = [res.jobs[(arm, s)].final_accuracy() - res.jobs[(res.honest_arm, s)].final_accuracy()
             for s in res.seeds if (arm, s) in res.jobs and (res.honest_arm, s) in res.jobs]
    return mean_ci(diffs)


def _inflation_difference(res: ScenarioResults, a: str, b: str, ev: str, pid: str) -> MeanCI:
    """Counterfactual inflation in arm ``a`` minus in arm ``b``, per seed."""
    diffs = [res.jobs[(a, s)].counterfactual_inflation(ev).get(pid, math.nan)
             - res.jobs[(b, s)].counterfactual_inflation(ev).get(pid, math.nan)
             for s in res.seeds if (a, s) in res.jobs and (b, s) in res.jobs]
    return mean_ci(diffs)


def _kendall(res: ScenarioResults, arm: str, ev: str) -> MeanCI:
    """Kendall tau of benign clients' cumulative ranking, honest arm vs ``arm``, per seed."""
    if res.honest_arm is None or arm == res.honest_arm:
        return mean_ci([])
    taus = []
    for seed in res.seeds:
        a, h = res.jobs.get((arm, seed)), res.jobs.get((res.honest_arm, seed))
        if a is not None and h is not None:
            ca, ch = a.cumulative(ev), h.cumulative(ev)
            benign = [k for k in sorted(ch, key=_pid_key) if k not in res.attacker_ids]
            taus.append(kendall_between(ch, ca, keys=benign))
    return mean_ci(taus)


def _scenario_summary(res: ScenarioResults) -> dict[str, Any]:
    """All reported numbers of one scenario directory as a JSON-ready dict."""
    env = res.environment
    out: dict[str, Any] = {
        "kind": "scenario", "dir": str(res.path), "name": res.scenario.get("name"),
        "arms": res.arms, "honest_arm": res.honest_arm, "seeds": res.seeds,
        "evaluators": res.evaluators, "attacker_ids": res.attacker_ids,
        "jobs": {"found": len(res.jobs), "finished": sum(j.finished for j in res.jobs.values()),
                 "expected": len(res.scenario.get("arms") or []) * len(res.scenario.get("seeds")
                                                                      or [])},
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
                is_attack = _arm_attack(res, arm) != HONEST_ATTACK
                cf = mean_ci(j.counterfactual_inflation(ev).get(pid) for j in runs) if is_attack \
                    else mean_ci([])
                per_pid[pid] = {
                    "value": mean_ci(j.cumulative(ev).get(pid) for j in runs).as_dict(),
                    "normalised": mean_ci(j.normalised(ev).get(pid) for j in runs).as_dict(),
                    "rank": mean_ci(j.ranks(ev).get(pid) for j in runs).as_dict(),
                    "counterfactual_inflation": cf.as_dict(),
                    "paired_inflation": _paired(res, arm, ev, pid).as_dict(),
                }
            out["attacker"][arm][ev] = per_pid
            if arm != res.honest_arm:
                out["kendall_tau"][arm][ev] = _kendall(res, arm, ev).as_dict()
    return out


def _is_sweep(path: Path) -> bool:
    """A sweep directory holds sweep.json."""
    return (path / "sweep.json").is_file()


def _sweep_meta(path: Path) -> dict[str, Any]:
    """sweep.json, checked for the keys the report needs."""
    meta = _read_json(path / "sweep.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("points"), list):
        raise UserError(f"unreadable sweep.json (needs a 'points' list): {path / 'sweep.json'}")
    return meta


def summarize(results_dir: str | Path) -> dict[str, Any]:
    """All reported numbers of a scenario or sweep directory as a JSON-ready dict.

    Each statistic is ``{"mean", "ci95", "n", "values"}`` over seeds (None for nan).
    """
    path = Path(results_dir)
    if not path.is_dir():
        raise UserError(f"results directory not found: {path}")
    if not _is_sweep(path):
        return _scenario_summary(load_results(path))
    meta = _sweep_meta(path)
    points = []
    for point in meta["points"]:
        pdir = path / str(point.get("dir", ""))
        entry = {"overrides": point.get("overrides", {}), "dir": str(point.get("dir"))}
        try:
            entry["summary"] = _scenario_summary(load_results(pdir))
        except UserError as exc:
            entry["summary"], entry["error"] = None, str(exc)
        points.append(entry)
    return {"kind": "sweep", "dir": str(path), "grid": meta.get("grid", {}), "points": points,
            "wall_s": meta.get("wall_s"), "startup_s": meta.get("startup_s")}


def _ci_from(d: Mapping[str, Any] | None) -> MeanCI:
    """A MeanCI back from its ``as_dict`` form."""
    if not d:
        return mean_ci([])
    return MeanCI(_num(d.get("mean")), _num(d.get("ci95")), int(d.get("n") or 0),
                  tuple(_num(v) for v in d.get("values") or ()))


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
        acc = fmt_ci(_ci_from(summary["final_accuracy"].get(arm)))
        for ev in summary.get("evaluators", []):
            tau = fmt_ci(_ci_from(summary["kendall_tau"].get(arm, {}).get(ev)))
            per_pid = summary["attacker"].get(arm, {}).get(ev, {}) or {"—": {}}
            for pid, st in per_pid.items():
                rows.append([arm, ev] + ([pid] if many else []) + [
                    acc, fmt_ci(_ci_from(st.get("value"))), fmt_ci(_ci_from(st.get("rank"))),
                    fmt_ci(_ci_from(st.get("paired_inflation"))),
                    fmt_ci(_ci_from(st.get("counterfactual_inflation"))), tau])
    return headers, rows


# --------------------------------------------------------------------------- plots


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
                row.append("—" if not math.isfinite(ci.mean) else f"{ci.mean:+.4f}")
        rows.append(row)
    return headers, rows


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.4, 4.0)):
    """A pyplot-free figure (no global backend state) and its axes array."""
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    """Write a figure as PNG atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    tmp.replace(path)
    return path


def _color(i: int) -> Any:
    """The i-th colour of the tab10 cycle."""
    return colormaps["tab10"](i % 10)


def _err(ci: MeanCI) -> float:
    """Error-bar length: the CI half-width, 0 when undefined."""
    return ci.half if math.isfinite(ci.half) else 0.0


def _slug(text: str) -> str:
    """A file-name-safe version of a key."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_") or "x"


def _grouped_bars(ax: Any, groups: Sequence[str], series: Sequence[str],
                  cis: Mapping[tuple[str, str], MeanCI], colors: Mapping[str, Any]) -> None:
    """Bars of mean ± CI: one group per ``groups`` item, one bar per ``series`` item."""
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for k, s in enumerate(series):
        vals = [cis[(g, s)] for g in groups]
        ax.bar(x + (k - (len(series) - 1) / 2) * width,
               [v.mean if v.n else np.nan for v in vals], width,
               yerr=[_err(v) for v in vals], capsize=3, label=s, color=colors[s])
    ax.set_xticks(x, list(groups))
    ax.axhline(0, color="grey", lw=0.6)


def _plot_accuracy(res: ScenarioResults, colors: Mapping[str, Any], out: Path) -> Path:
    """Test accuracy per round, mean over seeds with a 95% CI band, one line per arm."""
    fig, axes = _figure()
    ax = axes[0, 0]
    for arm in res.arms:
        curves = [j.accuracy_curve() for j in res.runs(arm)]
        rounds = sorted({r for c in curves for r in c})
        cis = [mean_ci(c.get(r) for c in curves) for r in rounds]
        mean = np.array([c.mean for c in cis])
        half = np.array([_err(c) for c in cis])
        ax.plot(rounds, mean, marker="o", ms=3, label=arm, color=colors[arm])
        ax.fill_between(rounds, mean - half, mean + half, alpha=0.2, color=colors[arm])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="round", ylabel="test accuracy",
           title=f"Test accuracy (mean ± 95% CI over {len(res.seeds)} seed(s))")
    ax.legend()
    return _save(fig, out / "accuracy.png")


def _plot_cumulative(res: ScenarioResults, ev: str, colors: Mapping[str, Any], out: Path) -> Path:
    """Cumulative value per client and arm (bars, 95% CI over seeds); attackers marked *."""
    clients = res.clients()
    cis = {(c, arm): mean_ci(j.cumulative(ev).get(c) for j in res.runs(arm))
           for c in clients for arm in res.arms}
    fig, axes = _figure(size=(max(6.4, 0.5 * len(clients) * max(1, len(res.arms))), 4.0))
    ax = axes[0, 0]
    _grouped_bars(ax, clients, res.arms, cis, colors)
    ax.set_xticks(range(len(clients)),
                  [f"{c}*" if c in res.attacker_ids else c for c in clients])
    ax.set(xlabel="client (* = attacker)", ylabel=f"cumulative {ev} value",
           title=f"Cumulative {ev} value per client (mean ± 95% CI)")
    ax.legend()
    return _save(fig, out / f"cumulative_{_slug(ev)}.png")


def _plot_attacker(res: ScenarioResults, pid: str, colors: Mapping[str, Any], out: Path) -> Path:
    """The attacker's cumulative value and rank per evaluator and arm (95% CI over seeds)."""
    fig, axes = _figure(1, 2)
    for ax, what in zip(axes[0], ("value", "rank")):
        def get(j: JobResult, ev: str) -> float:
            return (j.cumulative(ev) if what == "value" else j.ranks(ev)).get(pid, math.nan)
        cis = {(ev, arm): mean_ci(get(j, ev) for j in res.runs(arm))
               for ev in res.evaluators for arm in res.arms}
        _grouped_bars(ax, res.evaluators, res.arms, cis, colors)
        ax.set(xlabel="evaluator", ylabel="cumulative value" if what == "value" else
               "rank (1 = highest value)", title=f"Attacker {pid}: {what}")
        ax.legend()
    return _save(fig, out / f"attacker_{_slug(pid)}.png")


def _plot_attacker_rounds(res: ScenarioResults, pid: str, colors: Mapping[str, Any],
                          out: Path) -> Path:
    """The attacker's cumulative value by round, per evaluator and arm (95% CI band)."""
    fig, axes = _figure(1, max(1, len(res.evaluators)), size=(4.8, 3.6))
    for ax, ev in zip(axes[0], res.evaluators):
        for arm in res.arms:
            curves = [j.cumulative_curve(ev, pid) for j in res.runs(arm)]
            rounds = sorted({r for c in curves for r in c})
            cis = [mean_ci(c.get(r) for c in curves) for r in rounds]
            mean = np.array([c.mean for c in cis])
            half = np.array([_err(c) for c in cis])
            ax.plot(rounds, mean, marker="o", ms=3, label=arm, color=colors[arm])
            ax.fill_between(rounds, mean - half, mean + half, alpha=0.2, color=colors[arm])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="round", ylabel="cumulative value", title=f"{ev}: attacker {pid}")
        ax.legend(fontsize="small")
    return _save(fig, out / f"attacker_{_slug(pid)}_rounds.png")


def _plot_kendall(res: ScenarioResults, colors: Mapping[str, Any], out: Path) -> Path | None:
    """Kendall tau of benign rankings (honest vs each arm) per evaluator, mean ± CI."""
    others = [a for a in res.arms if a != res.honest_arm]
    if res.honest_arm is None or not others:
        return None
    cis = {(ev, arm): _kendall(res, arm, ev) for ev in res.evaluators for arm in others}
    fig, axes = _figure()
    ax = axes[0, 0]
    _grouped_bars(ax, res.evaluators, others, cis, colors)
    ax.set_ylim(-1.05, 1.05)
    ax.set(xlabel="evaluator", ylabel="Kendall tau vs honest",
           title="Benign ranking agreement with the honest arm (1 = unchanged)")
    ax.legend()
    return _save(fig, out / "kendall_tau.png")


def _plot_labels(res: ScenarioResults, out: Path) -> Path | None:
    """Heat map of label counts, clients × classes, from the first seed's first round."""
    arm = res.honest_arm if res.honest_arm in res.arms else (res.arms[0] if res.arms else None)
    runs = res.runs(arm) if arm else []
    hists = runs[0].label_histograms() if runs else {}
    if not hists:
        return None
    clients = sorted(hists, key=_pid_key)
    width = max(len(h) for h in hists.values())
    mat = np.array([list(map(_num, hists[c])) + [0.0] * (width - len(hists[c])) for c in clients])
    fig, axes = _figure(size=(max(5.0, 0.55 * width + 2), max(3.0, 0.35 * len(clients) + 1.5)))
    ax = axes[0, 0]
    im = ax.imshow(mat, aspect="auto", cmap="viridis")
    fig.colorbar(im, ax=ax, label="examples")
    ax.set_xticks(range(width), [str(i) for i in range(width)])
    ax.set_yticks(range(len(clients)),
                  [f"{c}*" if c in res.attacker_ids else c for c in clients])
    if mat.size <= 400:  # annotate counts only while they stay legible
        top = mat.max() if mat.size else 0
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                    color="black" if v > 0.6 * top else "white")
    ax.set(xlabel="class", ylabel="client (* = attacker)",
           title=f"Label coverage ({arm}, seed {runs[0].seed})")
    return _save(fig, out / "label_coverage.png")


def _scenario_plots(res: ScenarioResults, out: Path) -> list[tuple[str, Path]]:
    """Every plot of one scenario directory, as (caption, path)."""
    colors = {arm: _color(i) for i, arm in enumerate(res.arms)}
    plots = [("Test accuracy per round", _plot_accuracy(res, colors, out))]
    for ev in res.evaluators:
        plots.append((f"Cumulative {ev} value per client", _plot_cumulative(res, ev, colors, out)))
    for pid in res.attacker_ids:
        plots.append((f"Attacker {pid}: value and rank", _plot_attacker(res, pid, colors, out)))
        plots.append((f"Attacker {pid}: cumulative value by round",
                      _plot_attacker_rounds(res, pid, colors, out)))
    for caption, p in (("Benign ranking change (Kendall tau)", _plot_kendall(res, colors, out)),
                       ("Label coverage", _plot_labels(res, out))):
        if p is not None:
            plots.append((caption, p))
    return plots


# --------------------------------------------------------------------------- markdown


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _inline(value: Any) -> str:
    """Compact JSON for a table cell."""
    return json.dumps(value, sort_keys=True) if value not in ({}, None) else "—"


def _resolved_text(scenario: Mapping[str, Any]) -> tuple[str, str]:
    """The resolved scenario as TOML (re-runnable) or, if it no longer validates, as JSON."""
    try:
        return "toml", scenario_from_dict(scenario).to_toml()
    except ScenarioError:
        return "json", json.dumps(scenario, indent=2)


def _environment_lines(env: Mapping[str, Any]) -> list[str]:
    """Environment and timing, from environment.json."""
    if not env:
        return ["No environment.json.", ""]
    lines = []
    pk = env.get("packages") or {}
    if env.get("python"):
        lines.append(f"- python {env['python']}; " + ", ".join(f"{k} {v}" for k, v in pk.items()))
    wall, start = _num(env.get("wall_s")), _num(env.get("startup_s"))
    if math.isfinite(wall):
        share = f" ({start / wall:.0%} of it start-up)" if math.isfinite(start) and wall > 0 else ""
        lines.append(f"- wall time {wall:.1f} s{share}")
    if env.get("started"):
        lines.append(f"- started {env['started']}, finished {env.get('finished', '?')}")
    if env.get("command"):
        lines.append(f"- command: `{env['command']}`")
    return lines + [""]


def _scenario_markdown(res: ScenarioResults, summary: Mapping[str, Any],
                       plots: Sequence[tuple[str, Path]], base: Path) -> str:
    """The markdown report of one scenario directory."""
    sc = res.scenario
    data, part = sc.get("data") or {}, sc.get("partition") or {}
    md = [f"# fedattr report: {sc.get('name', res.path.name)}", ""]
    if sc.get("description"):
        md += [str(sc["description"]), ""]
    jobs = summary["jobs"]
    md += [f"- dataset {data.get('dataset')}, model {sc.get('model')}, "
           f"{sc.get('num_clients')} clients, partition {part.get('kind')}"
           + (f" (alpha {part.get('alpha')})" if part.get("kind") == "dirichlet" else "")
           + f", {sc.get('rounds')} rounds",
           f"- seeds {', '.join(map(str, res.seeds))}; attackers (partition ids): "
           f"{', '.join(res.attacker_ids) or 'none'}; "
           f"honest reference arm: {res.honest_arm or 'none'}",
           f"- jobs: {jobs['finished']} finished of {jobs['expected']} planned"
           + (f" ({jobs['found'] - jobs['finished']} unfinished, reported from their last round)"
              if jobs["found"] > jobs["finished"] else ""),
           "- every entry: mean ± 95% confidence half-width (t-distribution) over seeds; "
           "`(n=1)` marks a single seed; `—` means not available", ""]
    md += ["## Environment", ""] + _environment_lines(res.environment)

    md += ["## Final test accuracy", "",
           f"Δ: the arm's final accuracy minus the honest arm's (`{res.honest_arm}`), same seed.", ""]
    md += _table(["arm", "attack", "final accuracy", "Δ vs honest", "seeds"],
                 [[arm, _arm_attack(res, arm), fmt_ci(_ci_from(summary["final_accuracy"][arm])),
                   fmt_ci(_paired_accuracy(res, arm)), summary["final_accuracy"][arm]["n"]]
                  for arm in res.arms])

    md += ["## Attacker value", "",
           "Cumulative value at the end of the run, its normalised share and rank (1 = highest).",
           ""]
    rows = []
    for pid in res.attacker_ids:
        for arm in res.arms:
            for ev in res.evaluators:
                st = summary["attacker"][arm][ev][pid]
                rows.append([pid, arm, ev, fmt_ci(_ci_from(st["value"])),
                             fmt_ci(_ci_from(st["normalised"])), fmt_ci(_ci_from(st["rank"]))])
    md += _table(["attacker", "arm", "evaluator", "cumulative value", "normalised", "rank"], rows)

    md += ["## Inflation", "",
           "Counterfactual: sum over rounds of the attacker's value minus the value its honest "
           "update would have had in the same round game. Paired: attacker value in the arm minus "
           f"in the honest arm (`{res.honest_arm}`), same seed.", ""]
    rows = []
    for pid in res.attacker_ids:
        for arm in res.arms:
            if arm == res.honest_arm:
                continue
            for ev in res.evaluators:
                st = summary["attacker"][arm][ev][pid]
                rows.append([pid, arm, ev, fmt_ci(_ci_from(st["counterfactual_inflation"])),
                             fmt_ci(_ci_from(st["paired_inflation"]))])
    md += _table(["attacker", "arm", "evaluator", "counterfactual inflation", "paired inflation"],
                 rows) if rows else ["No attack arm or no attacker.", ""]

    md += ["## Arm against arm", "",
           "Counterfactual inflation of the row arm minus that of the column arm, paired by seed: "
           "does the attack beat its controls?", ""]
    rows = []
    attack_arms = [a for a in res.arms if _arm_attack(res, a) != HONEST_ATTACK]
    for pid in res.attacker_ids:
        for ev in res.evaluators:
            for a in attack_arms:
                for b in attack_arms:
                    if a != b:
                        rows.append([pid, ev, a, b, fmt_ci(_inflation_difference(res, a, b, ev, pid))])
    md += _table(["attacker", "evaluator", "arm", "minus arm", "difference"], rows) if rows else \
        ["Fewer than two attack arms.", ""]

    md += ["## Benign ranking change", "",
           "Kendall tau between the benign clients' cumulative-value rankings in the honest arm "
           "and in each arm, same seed (1 = unchanged).", ""]
    rows = [[arm, ev, fmt_ci(_ci_from(summary["kendall_tau"][arm][ev]))]
            for arm in res.arms if arm != res.honest_arm for ev in res.evaluators]
    md += _table(["arm", "evaluator", "Kendall tau"], rows) if rows and res.honest_arm else \
        ["No honest arm to compare with.", ""]

    md += ["## Plots", ""]
    for caption, p in plots:
        md += [f"### {caption}", "", f"![{caption}]({p.relative_to(base).as_posix()})", ""]

    md += ["## Arms and hyper-parameters", ""]
    md += _table(["arm", "attack", "start round", "counterfactual", "params"],
                 [[a.get("name"), a.get("attack"), a.get("start_round"), a.get("counterfactual"),
                   _inline(a.get("params"))] for a in sc.get("arms") or []])
    train, attr = sc.get("train") or {}, sc.get("attribution") or {}
    md += _table(["section", "settings"],
                 [["train", _inline(train)], ["data", _inline(data)], ["partition", _inline(part)],
                  ["attribution", _inline({k: v for k, v in attr.items() if k != "evaluators"})],
                  ["evaluators", _inline(attr.get("evaluators"))],
                  ["aggregation", _inline(sc.get("aggregation"))]])
    lang, text = _resolved_text(sc)
    md += ["### Resolved scenario", "", f"```{lang}", text.rstrip(), "```", ""]
    return "\n".join(md)


# --------------------------------------------------------------------------- sweeps


def _sweep_plot(summary: Mapping[str, Any], key: str, out: Path) -> Path | None:
    """Attacker inflation (counterfactual, paired) and final accuracy versus one grid key.

    One line per arm (and per combination of the other grid keys); error bars are 95% CIs.
    """
    pts = [p for p in summary["points"] if p.get("summary")]
    if not pts:
        return None
    values = list(dict.fromkeys(str(v) for v in summary["grid"][key]))
    numeric = all(math.isfinite(_num(v)) for v in values)
    xpos = {v: (_num(v) if numeric else i) for i, v in enumerate(values)}
    evs = list(dict.fromkeys(ev for p in pts for ev in p["summary"]["evaluators"]))
    arms = list(dict.fromkeys(a for p in pts for a in p["summary"]["arms"]))
    colors = {arm: _color(i) for i, arm in enumerate(arms)}
    rows = [("counterfactual_inflation", "counterfactual inflation"),
            ("paired_inflation", "paired inflation (arm − honest)"), ("accuracy", "final accuracy")]
    fig, axes = _figure(len(rows), max(1, len(evs)), size=(4.8, 3.4))
    others = [k for k in summary["grid"] if k != key]
    for col, ev in enumerate(evs):
        for row, (stat, label) in enumerate(rows):
            ax = axes[row, col]
            if stat == "accuracy" and col > 0:  # accuracy does not depend on the evaluator
                ax.set_visible(False)
                continue
            series: dict[tuple[str, str, str], list[tuple[float, MeanCI]]] = {}
            for p in pts:
                s, ov = p["summary"], p["overrides"]
                ctx = ", ".join(f"{k}={ov.get(k)}" for k in others)
                x = xpos.get(str(ov.get(key)))
                if x is None:
                    continue
                for arm in s["arms"]:
                    if stat == "accuracy":
                        series.setdefault((arm, "", ctx), []).append(
                            (x, _ci_from(s["final_accuracy"].get(arm))))
                        continue
                    if arm == s.get("honest_arm"):
                        continue
                    many = len(s["attacker_ids"]) > 1
                    for pid, st in (s["attacker"].get(arm, {}).get(ev) or {}).items():
                        series.setdefault((arm, pid if many else "", ctx), []).append(
                            (x, _ci_from(st.get(stat))))
            for (arm, pid, ctx), xs in series.items():
                xs.sort(key=lambda t: t[0])
                lab = arm + (f" c{pid}" if pid else "") + (f" [{ctx}]" if ctx else "")
                ax.errorbar([t[0] for t in xs], [t[1].mean for t in xs],
                            yerr=[_err(t[1]) for t in xs], marker="o", capsize=3, label=lab,
                            color=colors[arm], ls="-" if not ctx else "--")
            if not numeric:
                ax.set_xticks(range(len(values)), values)
            if stat != "accuracy":
                ax.axhline(0, color="grey", lw=0.6)
            ax.set(xlabel=key, ylabel=label, title=ev if stat != "accuracy" else "final accuracy")
            if series:
                ax.legend(fontsize="x-small")
    return _save(fig, out / f"sweep_{_slug(key)}.png")


def _sweep_markdown(summary: Mapping[str, Any], meta: Mapping[str, Any],
                    plots: Sequence[tuple[str, Path]], base: Path,
                    point_reports: Mapping[str, Path]) -> str:
    """The markdown report of a sweep directory."""
    pts = summary["points"]
    first = next((p["summary"] for p in pts if p.get("summary")), None)
    name = first["name"] if first else base.name
    keys = list(summary["grid"])
    md = [f"# fedattr sweep report: {name}", "",
          "- grid: " + "; ".join(f"`{k}` ∈ {{{', '.join(map(str, v))}}}"
                                  for k, v in summary["grid"].items()),
          f"- {len(pts)} points; every entry: mean ± 95% confidence half-width (t-distribution) "
          "over seeds; `(n=1)` marks a single seed", ""]
    wall, start = _num(meta.get("wall_s")), _num(meta.get("startup_s"))
    if math.isfinite(wall):
        share = f" ({start / wall:.0%} of it start-up)" if math.isfinite(start) and wall > 0 else ""
        md += [f"- wall time {wall:.1f} s{share}", ""]
    md += ["## Points", ""]
    md += _table(["point"] + keys + ["report"],
                 [[p["dir"]] + [p["overrides"].get(k, "") for k in keys]
                  + ([f"[report]({point_reports[p['dir']].relative_to(base).as_posix()})"]
                     if p["dir"] in point_reports else [p.get("error", "—")]) for p in pts])
    evs = list(dict.fromkeys(ev for p in pts if p.get("summary")
                             for ev in p["summary"]["evaluators"]))
    for ev in evs:
        md += [f"## {ev}", ""]
        rows = []
        for p in pts:
            s = p.get("summary")
            if not s:
                continue
            for arm in s["arms"]:
                acc = fmt_ci(_ci_from(s["final_accuracy"].get(arm)))
                tau = fmt_ci(_ci_from(s["kendall_tau"].get(arm, {}).get(ev)))
                for pid, st in (s["attacker"].get(arm, {}).get(ev) or {}).items():
                    rows.append([p["dir"]] + [p["overrides"].get(k, "") for k in keys] + [
                        arm, pid, acc, fmt_ci(_ci_from(st["value"])),
                        fmt_ci(_ci_from(st["counterfactual_inflation"])),
                        fmt_ci(_ci_from(st["paired_inflation"])), tau])
        md += _table(["point"] + keys + ["arm", "attacker", "final accuracy", "attacker value",
                                         "counterfactual inflation", "paired inflation",
                                         "Kendall tau"], rows)
    md += ["## Plots", ""]
    for caption, p in plots:
        md += [f"### {caption}", "", f"![{caption}]({p.relative_to(base).as_posix()})", ""]
    return "\n".join(md)


# --------------------------------------------------------------------------- HTML


def _inline_html(text: str) -> str:
    """Escape text and render `code`, **bold**, ![img](src) and [link](href)."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r'<img alt="\1" src="\2">', out)
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', out)


def markdown_to_html(md: str, title: str = "fedattr report") -> str:
    """A standalone HTML page for the markdown subset the reports use.

    Headings, paragraphs, bullet lists, tables, fenced code, images, links, inline code.
    """
    body: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            body.append("<pre><code>" + html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
            continue
        m = re.match(r"(#{1,6}) (.*)", line)
        if m:
            n = len(m.group(1))
            body.append(f"<h{n}>{_inline_html(m.group(2))}</h{n}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", r.strip())[1:-1]]
                     for r in rows if not re.fullmatch(r"\|(-+\|)+", r.strip())]
            head, rest = cells[0], cells[1:]
            body.append("<table>\n<tr>" + "".join(f"<th>{_inline_html(c)}</th>" for c in head)
                        + "</tr>\n" + "\n".join("<tr>" + "".join(
                            f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in rest)
                        + "\n</table>")
            continue
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline_html(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>\n" + "\n".join(items) + "\n</ul>")
            continue
        elif line.strip():
            body.append(f"<p>{_inline_html(line)}</p>")
        i += 1
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:left}img{max-width:100%}pre{background:#f4f4f4;"
             "padding:1em;overflow:auto}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


# --------------------------------------------------------------------------- entry point


def _write(path: Path, md: str, title: str) -> Path:
    """Write report.md and report.html next to each other; return the .md path."""
    atomic_write_text(path / "report.md", md)
    atomic_write_text(path / "report.html", markdown_to_html(md, title))
    return path / "report.md"


def _write_scenario_report(path: Path) -> Path:
    """Tables, plots and report files of one scenario directory."""
    res = load_results(path)
    if not res.jobs:
        raise UserError(f"no job results under {path / 'jobs'} yet: nothing to report")
    summary = _scenario_summary(res)
    plots = _scenario_plots(res, path / "plots")
    md = _scenario_markdown(res, summary, plots, path)
    return _write(path, md, f"fedattr report: {res.scenario.get('name', path.name)}")


def write_report(results_dir: str | Path, *, points: bool = True) -> Path:
    """Write report.md, report.html and plots/*.png for a scenario or sweep directory.

    A sweep directory (it holds sweep.json) gets sweep tables and plots versus every grid key
    and, with ``points``, a report of every point. Returns the path of report.md. Raises
    UserError when the directory holds no readable results.
    """
    path = Path(results_dir)
    if not path.is_dir():
        raise UserError(f"results directory not found: {path}")
    if not _is_sweep(path):
        return _write_scenario_report(path)
    meta = _sweep_meta(path)
    summary = summarize(path)
    point_reports = {}
    if points:
        for p in summary["points"]:
            if p.get("summary") and p["summary"]["jobs"]["found"]:
                point_reports[p["dir"]] = _write_scenario_report(path / p["dir"])
    plots = []
    for key in summary["grid"]:
        plot = _sweep_plot(summary, key, path / "plots")
        if plot is not None:
            plots.append((f"Attacker inflation and accuracy vs {key}", plot))
    md = _sweep_markdown(summary, meta, plots, path, point_reports)
    return _write(path, md, "fedattr sweep report")
