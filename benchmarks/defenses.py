"""Detector flag rates and robust-scoring inflation on the coverage-gap regime (issue 10's table).

Run ``python -m benchmarks.defenses`` to run ``scenarios/defenses_claim.toml`` through ``fedattr
run`` and print the table, or ``python -m benchmarks.defenses --results DIR [DIR ...]`` to print
it from finished (or interrupted) results directories; several directories of the same regime
are read as one, their arms paired by seed (the claim study, its controls with the honest arm,
and the detectors' positive controls:
``--results results/claim results/claim_controls results/defenses_baselines``). Options after
``--set`` override scenario fields as in ``fedattr run``.

Table 1, per detector: the share of (seed, round) pairs in which the attacker is flagged in the
latent-attack, scaling and free-rider arms, and the share of benign (client, round) pairs flagged
in the honest arm (every client behaves there); mean ± 95% CI over seeds.

Table 2, per evaluator: the attacker's counterfactual inflation in the attack arm (sum over rounds
of its value minus the value its honest update would have had in the same round game), the
inflation left as a fraction of exact Shapley's (paired by seed: the sum over seeds of the
evaluator's inflation over the sum of Shapley's, and the per-seed ratios' median), the Kendall
tau of the benign clients' cumulative values in the attack arm against plain Shapley's in the
honest arm (same seed), and the cost (distinct utility evaluations and seconds per round).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fedattr.report import fmt_ci, fmt_num, kendall_between, load_results, mean_ci, merge_results  # noqa: E402

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "defenses_claim.toml"
PLAIN = "shapley"


def _flag_rate(job, detector: str, pids: list[str]) -> float:
    """Share of (client, round) pairs of ``pids`` that ``detector`` flagged in one job."""
    hits = total = 0
    for rec in job.rounds:
        flags = ((rec.get("detectors") or {}).get(detector) or {}).get("flags") or {}
        for pid in pids:
            if pid in flags:
                hits += bool(flags[pid])
                total += 1
    return hits / total if total else math.nan


def _detectors(res) -> list[str]:
    names: list[str] = []
    for job in res.jobs.values():
        for rec in job.rounds:
            for d in rec.get("detectors") or {}:
                if d not in names:
                    names.append(d)
    return names


def _arm_of(res, attack: str) -> str | None:
    return next((a["name"] for a in res.scenario.get("arms") or [] if a.get("attack") == attack), None)


def detector_table(res) -> dict[str, dict[str, Any]]:
    """``{detector: {column: MeanCI over seeds}}``."""
    attackers = list(res.attacker_ids)
    columns = {"latent attack": _arm_of(res, "latent"), "scaling": _arm_of(res, "scaling"),
               "free rider": _arm_of(res, "free_rider")}
    out = {}
    for det in _detectors(res):
        row = {}
        for col, arm in columns.items():
            row[col] = mean_ci([_flag_rate(j, det, attackers) for j in res.runs(arm)] if arm else [])
        if res.honest_arm:
            # The attacker's partition behaving honestly: how often its data alone gets it flagged.
            row["attacker id, honest arm"] = mean_ci([_flag_rate(j, det, attackers) for j in res.runs(res.honest_arm)])
            row["benign (honest arm)"] = mean_ci(
                [_flag_rate(j, det, [p for p in _clients(j)]) for j in res.runs(res.honest_arm)])
        out[det] = row
    return out


def _clients(job) -> list[str]:
    return sorted({str(c) for rec in job.rounds for c in rec.get("clients") or []}, key=int)


def _nanmean(xs) -> float:
    fin = [x for x in xs if math.isfinite(x)]
    return float(np.mean(fin)) if fin else math.nan


def _cost(job, ev: str) -> tuple[float, float]:
    """Mean distinct utility evaluations and seconds per round of ``ev`` in one job."""
    evals, secs = [], []
    for rec in job.rounds:
        timings = rec.get("timings") or {}
        # Flower runs record ``evaluators_s``; the in-process stand-in ``evaluators``.
        per_ev = timings.get("evaluators_s") or timings.get("evaluators") or {}
        evals.append(float((rec.get("utility_evaluations") or {}).get(ev, math.nan)))
        secs.append(float(per_ev.get(ev, math.nan)))
    return _nanmean(evals), _nanmean(secs)


def mitigation_table(res) -> dict[str, dict[str, Any]]:
    """``{evaluator: {inflation, left, left_median, tau, tau_own, honest_tau, evals, seconds}}``.

    Inflation and the taus come from the latent-attack arm; ``honest_tau`` (all clients, the
    evaluator against plain Shapley in the honest arm) and the cost from the honest arm.
    """
    arm = _arm_of(res, "latent")
    att = res.attacker_ids[0] if res.attacker_ids else None
    attack_runs = res.runs(arm) if arm and att is not None else []
    honest_runs = res.runs(res.honest_arm) if res.honest_arm else []
    plain_infl = {j.seed: j.counterfactual_inflation(PLAIN).get(att, math.nan) for j in attack_runs}
    out = {}
    for ev in res.evaluators:
        infl, ratios, taus, taus_own = {}, [], [], []
        for job in attack_runs:
            infl[job.seed] = job.counterfactual_inflation(ev).get(att, math.nan)
            p = plain_infl.get(job.seed, math.nan)
            if math.isfinite(p) and p != 0 and math.isfinite(infl[job.seed]):
                ratios.append(infl[job.seed] / p)
            honest = res.jobs.get((res.honest_arm, job.seed)) if res.honest_arm else None
            if honest is not None:
                benign = [c for c in job.cumulative(ev) if c not in res.attacker_ids]
                taus.append(kendall_between(honest.cumulative(PLAIN), job.cumulative(ev), keys=benign))
                taus_own.append(kendall_between(honest.cumulative(ev), job.cumulative(ev), keys=benign))
        costs = [_cost(j, ev) for j in honest_runs]
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


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def render(res) -> str:
    det = detector_table(res)
    cols = list(next(iter(det.values())).keys()) if det else []
    n_seeds = {arm: len(res.runs(arm)) for arm in res.arms}
    md = [f"Results: {res.path} (jobs per arm: {', '.join(f'{a} {n}' for a, n in n_seeds.items())})", "",
          "Detector flag rates (share of rounds the attacker is flagged; benign: share of client-rounds "
          "flagged in the honest arm), mean ± 95% CI over seeds:", ""]
    md.append(_table(["detector", *cols], [[d, *[fmt_ci(r[c], signed=False) for c in cols]] for d, r in det.items()]))
    mit = mitigation_table(res)
    md += ["", f"Mitigations on the latent-attack arm (inflation = counterfactual inflation of the attacker, "
           f"summed over rounds; left = paired share of {PLAIN}'s; tau = benign Kendall tau vs honest-arm {PLAIN}; "
           "tau own = vs the same evaluator's honest arm; honest tau = all clients, vs shapley, in the honest arm; "
           "cost per round in the honest arm):", ""]
    md.append(_table(
        ["evaluator", "inflation", "left (sum)", "left (median)", "benign tau", "tau own", "honest tau", "evals/round",
         "s/round"],
        [[ev, fmt_ci(r["inflation"]), fmt_num(r["left"], signed=False), fmt_num(r["left_median"], signed=False),
          fmt_ci(r["tau"]), fmt_ci(r["tau_own"]), fmt_ci(r["honest_tau"]), f"{r['evals']:.0f}" if math.isfinite(r["evals"]) else "—",
          f"{r['seconds']:.2f}" if math.isfinite(r["seconds"]) else "—"] for ev, r in mit.items()]))
    return "\n".join(md)


def as_json(res) -> dict[str, Any]:
    return {
        "results": str(res.path),
        "detectors": {d: {c: v.as_dict() for c, v in row.items()} for d, row in detector_table(res).items()},
        "mitigations": {ev: {k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in row.items()}
                        for ev, row in mitigation_table(res).items()},
    }


# -- the in-process stand-in ----------------------------------------------------------------------


class _Job:
    """What the tables read of one (arm, seed) run, for runs made in this process."""

    def __init__(self, arm: str, seed: int):
        self.arm, self.seed = arm, seed
        self.rounds: list[dict[str, Any]] = []
        self.totals = None

    def cumulative(self, ev: str) -> dict[str, float]:
        return {str(k): float(v) for k, v in (self.totals.cumulative.get(ev) or {}).items()} if self.totals else {}

    def counterfactual_inflation(self, ev: str) -> dict[str, float]:
        return {str(k): float(v) for k, v in (self.totals.inflation.get(ev) or {}).items()} if self.totals else {}


def _job_from_records(arm: str, seed: int, records: list[dict[str, Any]]) -> _Job:
    """A job rebuilt from its round records (values summed over rounds, as AttributionTotals)."""
    from fedattr.attribution import AttributionTotals, RoundAttribution

    job = _Job(arm, seed)
    job.rounds = records
    if any("values" in r for r in records):
        job.totals = AttributionTotals()
        for r in records:
            job.totals.update(RoundAttribution(r.get("values") or {}, r.get("counterfactual_values") or {}, {}, {}))
    return job


class _Results:
    """The slice of :class:`fedattr.report.ScenarioResults` the tables use."""

    def __init__(self, scenario, path: Path):
        self.path = path
        self.scenario = scenario.model_dump(mode="json")
        self.arms = [a.name for a in scenario.arms]
        self.seeds = list(scenario.seeds)
        self.evaluators = [e.name for e in scenario.attribution.evaluators]
        self.attacker_ids = [str(a) for a in scenario.attacker_ids]
        self.honest_arm = next((a.name for a in scenario.arms if a.attack == "honest"), None)
        self.jobs: dict[tuple[str, int], _Job] = {}

    def runs(self, arm: str) -> list[_Job]:
        return [self.jobs[(arm, s)] for s in self.seeds if (arm, s) in self.jobs]


def load_in_process(scenario, dirs: list[Path]) -> _Results:
    """The jobs that in-process runs wrote to ``dirs`` (``<arm>__s<seed>.jsonl``), finished ones only."""
    res = _Results(scenario, dirs[0])
    for d in dirs:
        for f in sorted(Path(d).glob("*__s*.jsonl")):
            arm, _, seed = f.stem.rpartition("__s")
            records = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
            if len(records) == scenario.rounds:
                res.jobs[(arm, int(seed))] = _job_from_records(arm, int(seed), records)
    res.seeds = sorted({s for _, s in res.jobs})
    return res


def run_in_process(scenario, out: Path, log=print, after_seed=None) -> _Results:
    """Every (arm, seed) of ``scenario`` in this process, with the server's own parts and no Flower.

    Same data, partitions, seeds, client training (``train_local``), attacker round
    (``run_attacker_round``), FedAvg of the float state, detectors (FLTrust's root set: the first
    100 validation images, as the ServerApp) and scoring (``RoundScorer``, counterfactuals
    included). Arms without a counterfactual (the baselines) are only watched by the detectors,
    not scored. Jobs run seed by seed (every arm of a seed, then the next seed) and
    ``after_seed(results)`` is called after each seed, so an interrupted run still has paired
    arms. Each job's round records go to ``out/<arm>__s<seed>.jsonl``.
    """
    import copy

    from fedattr.attacks import AttackContext, make_attack, run_attacker_round
    from fedattr.attribution import AttributionTotals, RoundScorer
    from fedattr.data import label_histogram
    from fedattr.defenses import RoundUpdates, make_detector, root_update
    from fedattr.evaluators import StateLayout
    from fedattr.protocol import default_cache_dir
    from fedattr.task import Job, job_spec
    from fedattr.training import seed_everything, train_local

    out.mkdir(parents=True, exist_ok=True)
    res = _Results(scenario, out)
    n = scenario.num_clients
    attackers = set(scenario.attacker_ids)
    for seed in scenario.seeds:
        for arm in scenario.arms:
            scored = arm.attack == "honest" or arm.counterfactual
            t0 = time.perf_counter()
            job = Job(job_spec(scenario, arm, seed, job_id=f"{scenario.name}/{arm.name}__s{seed}"))
            splits = job.splits()
            seed_everything(seed)
            model = job.build_model()
            template = job.build_model()
            layout = StateLayout.from_module(model)
            train = job.train_kwargs()
            parts = {pid: job.partition(pid) for pid in range(n)}
            hists = {pid: label_histogram(parts[pid][1], splits.num_classes) for pid in range(n)}
            scorer = RoundScorer(
                job.build_model(), splits.x_val, splits.y_val,
                [(e.name, dict(e.params)) for e in scenario.attribution.evaluators],
                utility=scenario.attribution.utility, val_subset=scenario.attribution.val_subset,
                engine=scenario.attribution.engine, device="cpu", seed=seed, num_classes=splits.num_classes,
                num_threads=scenario.attribution.num_threads,
            ) if scored else None
            detectors = [make_detector(d.name, **dict(d.params)) for d in scenario.detectors]
            attacker_state: dict[str, Any] = {}
            rec_job = _Job(arm.name, seed)
            rec_job.totals = AttributionTotals() if scored else None
            for r in range(1, scenario.rounds + 1):
                w_t = {k: v.detach().clone() for k, v in model.state_dict().items()}
                states, weights, cfs, cfw = {}, {}, {}, {}
                for pid in range(n):
                    x, y = parts[pid]
                    if pid in attackers:
                        ctx = AttackContext(
                            global_model=copy.deepcopy(model), x_local=x, y_local=y, x_aux=splits.x_aux,
                            y_aux=splits.y_aux, num_classes=splits.num_classes, channels=splits.channels,
                            side=splits.side, server_round=r, seed=job.client_seed(r, pid), run_seed=seed,
                            device="cpu", train=train, cache_dir=default_cache_dir(), state=attacker_state,
                            benign_histograms={p: h for p, h in hists.items() if p not in attackers},
                        )
                        o = run_attacker_round(make_attack(arm.attack, **dict(arm.params)), ctx,
                                               start_round=arm.start_round, counterfactual=arm.counterfactual)
                        states[pid], weights[pid] = o.state_dict, float(o.num_examples)
                        if arm.counterfactual and arm.attack != "honest" and o.honest_state_dict is not None:
                            cfs[pid], cfw[pid] = o.honest_state_dict, float(len(y))
                    else:
                        m = copy.deepcopy(model)
                        train_local(m, x, y, seed=job.client_seed(r, pid), **train)
                        states[pid] = {k: v.detach().cpu() for k, v in m.state_dict().items()}
                        weights[pid] = float(len(y))
                players = sorted(states)
                base = layout.flatten(w_t)
                updates = layout.flatten_many([states[p] for p in players]) - base
                ref = None
                if any(d.needs_reference_update for d in detectors):
                    ref = root_update(template, layout, base, splits.x_val[:100], splits.y_val[:100],
                                      epochs=train["epochs"], batch_size=train["batch_size"], lr=train["lr"],
                                      seed=job.client_seed(r, -1))
                batch = RoundUpdates(r, players, updates, np.array([weights[p] for p in players]), base, ref)
                record: dict[str, Any] = {"round": r, "clients": players, "detectors": {}}
                for det in detectors:
                    d = det.observe(batch)
                    record["detectors"][det.name] = {
                        "flags": {str(p): bool(f) for p, f in zip(players, d.flags)},
                        "scores": {str(p): float(v) for p, v in zip(players, d.scores)},
                        "ranks": {str(p): int(v) for p, v in zip(players, d.ranks())}}
                if scorer is not None:
                    att = scorer.score(r, w_t, states, weights, counterfactuals=cfs, counterfactual_weights=cfw)
                    rec_job.totals.update(att)
                    record["values"] = {ev: {str(p): v for p, v in vals.items()} for ev, vals in att.values.items()}
                    record["counterfactual_values"] = {ev: {str(p): v for p, v in vals.items()}
                                                       for ev, vals in att.counterfactual_values.items()}
                    record["utility_evaluations"] = dict(att.evaluations)
                    record["timings"] = {"evaluators": dict(att.seconds)}
                # FedAvg of the float state by example counts; integer buffers from the first reply.
                p = torch.tensor([weights[q] for q in players], dtype=updates.dtype)
                new = base + (p / p.sum()) @ updates
                model.load_state_dict(layout.to_state_dict(new, states[players[0]]))
                rec_job.rounds.append(record)
            res.jobs[(arm.name, seed)] = rec_job
            with open(out / f"{arm.name}__s{seed}.jsonl", "w", encoding="utf-8") as fh:
                for rec in rec_job.rounds:
                    fh.write(json.dumps(rec) + "\n")
            log(f"{arm.name} seed {seed}: {time.perf_counter() - t0:.0f} s")
        if after_seed is not None:
            after_seed(res)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, nargs="+", metavar="DIR",
                    help="print the table of these results directories (no run); several directories of the "
                         "same regime are read as one, their arms paired by seed")
    ap.add_argument("--scenario", type=Path, default=SCENARIO, help="scenario to run (default: %(default)s)")
    ap.add_argument("--out", type=Path, help="results directory of the run (default: results/defenses_claim)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="scenario override, as in `fedattr run --set`; repeatable")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("--in-process", action="store_true",
                    help="run the jobs in this process without Flower (the server's parts, same seeds)")
    ap.add_argument("--arms", help="comma-separated arms to run in process (default: all)")
    ap.add_argument("--tables-from", type=Path, nargs="+", metavar="DIR",
                    help="print the table of the finished jobs that in-process runs wrote to DIR(s)")
    args = ap.parse_args(argv)
    results = args.results
    wall = None
    from fedattr.scenario import load_scenario

    if args.tables_from:
        res = load_in_process(load_scenario(args.scenario, args.overrides), args.tables_from)
    elif args.in_process:
        scenario = load_scenario(args.scenario, args.overrides)
        if args.arms:
            keep = args.arms.split(",")
            scenario.arms = [a for a in scenario.arms if a.name in keep]
        t0 = time.perf_counter()
        out_dir = args.out or Path("results") / "defenses_claim_inprocess"

        def partial(r) -> None:  # the table so far, after every seed
            (out_dir / "table.md").write_text(render(r) + "\n", encoding="utf-8")

        res = run_in_process(scenario, out_dir,
                             log=lambda m: print(m, file=sys.stderr, flush=True), after_seed=partial)
        wall = time.perf_counter() - t0
    elif results is None:
        results = [args.out or Path("results") / "defenses_claim"]
        cmd = [sys.executable, "-m", "fedattr.cli", "run", str(args.scenario), "--out", str(results[0]), "--no-report"]
        for o in args.overrides:
            cmd += ["--set", o]
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        wall = time.perf_counter() - t0
        if rc not in (0, 1):  # 1: some job failed; the others still make a table
            return rc
    if not (args.in_process or args.tables_from):
        from fedattr.errors import UserError

        try:
            res = merge_results([load_results(r) for r in results])
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.json:
        out = as_json(res)
        out["wall_s"] = wall
        print(json.dumps(out, indent=1))
    else:
        print(render(res))
        if wall is not None:
            print(f"\nwall time of the run: {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
