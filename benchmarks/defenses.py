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
honest arm (same seed), and the cost (distinct utility evaluations and seconds per round); the
share of Shapley's inflation an evaluator removes (1 - left) with a bootstrap interval over seeds.

Table 3 (``--holder DIR``: a run of ``scenarios/defenses_holder.toml``, where one benign client
really holds the withheld classes and the attacker is honest), per evaluator: the share of the
genuine holder's plain-Shapley cumulative value that the evaluator keeps, per seed, mean ± 95% CI.
A defence that removes the inflation by punishing whoever covers rare classes fails here.

With ``--holder``, table 4 checks issue 23's bar per evaluator: at least half of Shapley's inflation
removed, benign tau >= 0.8, >= 80% of the holder's value kept; it names each condition missed and
by how much.

The mitigation figures (tables 2 to 4) are computed by :mod:`fedattr.report.defenses`, which also
writes the generated page (``fedattr report --defenses DIR --holder DIR --to PAGE.md``).
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


if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fedattr.report import fmt_ci, fmt_num, load_results, mean_ci, merge_results  # noqa: E402
from fedattr.report.defenses import (BAR, PLAIN, holder_table, mitigation_table, mitigations,  # noqa: E402
                                     removed_ci)
from fedattr.report.defenses import arm_of as _arm_of  # noqa: E402
from fedattr.report.defenses import finished as _finished  # noqa: E402

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "defenses_claim.toml"


def _flag_rate(job, detector: str, pids: list[str]) -> float:
    """Share of (client, round) pairs of ``pids`` that ``detector`` flagged in one job."""
    hits = total = 0
    for rec in job.rounds:
        det = rec.detectors.get(detector)
        flags = {str(k): v for k, v in (det.flags if det is not None else {}).items()}
        for pid in pids:
            if pid in flags:
                hits += bool(flags[pid])
                total += 1
    return hits / total if total else math.nan


def _detectors(res) -> list[str]:
    names: list[str] = []
    for job in res.jobs.values():
        for rec in job.rounds:
            for d in rec.detectors:
                if d not in names:
                    names.append(d)
    return names


def detector_table(res) -> dict[str, dict[str, Any]]:
    """``{detector: {column: MeanCI over seeds}}``."""
    attackers = list(res.attacker_ids)
    columns = {"latent attack": _arm_of(res, "latent"), "scaling": _arm_of(res, "scaling"),
               "free rider": _arm_of(res, "free_rider")}
    out = {}
    for det in _detectors(res):
        row = {}
        for col, arm in columns.items():
            row[col] = mean_ci([_flag_rate(j, det, attackers) for j in _finished(res, arm)] if arm else [])
        if res.honest_arm:
            # The attacker's partition behaving honestly: how often its data alone gets it flagged.
            row["attacker id, honest arm"] = mean_ci([_flag_rate(j, det, attackers) for j in _finished(res, res.honest_arm)])
            row["benign (honest arm)"] = mean_ci(
                [_flag_rate(j, det, [p for p in _clients(j)]) for j in _finished(res, res.honest_arm)])
        out[det] = row
    return out


def _clients(job) -> list[str]:
    return sorted({str(c) for rec in job.rounds for c in rec.clients}, key=int)


def bar_rows(res, holder) -> dict[str, dict[str, Any]]:
    """``{mitigation: {removed, tau, kept, fails}}``: the bar's point estimates of
    :func:`fedattr.report.defenses.mitigations` and the conditions each misses."""
    return {m.evaluator: {"removed": m.removed.point, "tau": m.benign_tau.mean, "kept": m.kept.mean, "fails": m.fails}
            for m in mitigations(res, holder)}


def render_bar(res, holder) -> str:
    fmt = lambda v: "—" if not math.isfinite(v) else f"{v:+.3f}"  # noqa: E731
    return "\n".join([
        f"The bar (removed >= {BAR['removed']}, benign tau >= {BAR['tau']}, holder's value kept >= {BAR['kept']}; "
        "point estimates):", "",
        _table(["evaluator", "removed", "benign tau", "holder kept", "bar"],
               [[m.evaluator, fmt(m.removed.point), fmt(m.benign_tau.mean), fmt(m.kept.mean), m.verdict()]
                for m in mitigations(res, holder)])])


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def render(res) -> str:
    det = detector_table(res)
    cols = list(next(iter(det.values())).keys()) if det else []
    n_seeds = {arm: len(_finished(res, arm)) for arm in res.arms}
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
        ["evaluator", "inflation", "left (sum)", "left (median)", "removed [95% bootstrap]", "benign tau", "tau own",
         "honest tau", "evals/round", "s/round"],
        [[ev, fmt_ci(r["inflation"]), fmt_num(r["left"], signed=False), fmt_num(r["left_median"], signed=False),
          _fmt_removed(removed_ci(res, ev)),
          fmt_ci(r["tau"]), fmt_ci(r["tau_own"]), fmt_ci(r["honest_tau"]), f"{r['evals']:.0f}" if math.isfinite(r["evals"]) else "—",
          f"{r['seconds']:.2f}" if math.isfinite(r["seconds"]) else "—"] for ev, r in mit.items()]))
    return "\n".join(md)


def _fmt_removed(r: tuple[float, float, float]) -> str:
    return "—" if not math.isfinite(r[0]) else f"{r[0]:+.3f} [{r[1]:+.3f}, {r[2]:+.3f}]"


def render_holder(res) -> str:
    rows = holder_table(res)
    return "\n".join([f"Genuine holder (client {res.scenario.partition.genuine_holder}, {res.path}): share of its "
                      f"plain-{PLAIN} cumulative value each evaluator keeps, mean ± 95% CI over seeds:", "",
                      _table(["evaluator", "holder's value kept"], [[ev, fmt_ci(ci, signed=False)] for ev, ci in rows.items()])])


def as_json(res) -> dict[str, Any]:
    return {
        "results": str(res.path),
        "detectors": {d: {c: v.as_dict() for c, v in row.items()} for d, row in detector_table(res).items()},
        "mitigations": {ev: {k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in row.items()}
                        for ev, row in mitigation_table(res).items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, nargs="+", metavar="DIR",
                    help="print the table of these results directories (no run); several directories of the "
                         "same regime are read as one, their arms paired by seed")
    ap.add_argument("--scenario", type=Path, default=SCENARIO, help="scenario to run (default: %(default)s)")
    ap.add_argument("--out", type=Path, help="results directory of the run (default: results/defenses_claim)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="scenario override, as in `fedattr run --set`; repeatable")
    ap.add_argument("--holder", type=Path, metavar="DIR",
                    help="also print the genuine-holder table of this results directory (scenarios/defenses_holder.toml)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = ap.parse_args(argv)
    results = args.results
    wall = None
    if results is None:
        results = [args.out or Path("results") / "defenses_claim"]
        cmd = [sys.executable, "-m", "fedattr.cli.app", "run", str(args.scenario), "--out", str(results[0]), "--no-report"]
        for o in args.overrides:
            cmd += ["--set", o]
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        wall = time.perf_counter() - t0
        if rc not in (0, 1):  # 1: some job failed; the others still make a table
            return rc
    from fedattr.core.errors import UserError

    try:
        res = merge_results([load_results(r) for r in results])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        holder = load_results(args.holder) if args.holder else None
        holder_rows = holder_table(holder) if holder is not None else None
    except (UserError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        out = as_json(res)
        out["wall_s"] = wall
        out["removed"] = {ev: removed_ci(res, ev) for ev in res.evaluators}
        if holder_rows is not None:
            out["holder_kept"] = {ev: ci.as_dict() for ev, ci in holder_rows.items()}
            out["bar"] = bar_rows(res, holder)
        print(json.dumps(out, indent=1))
    else:
        print(render(res))
        if holder is not None:
            print("\n" + render_holder(holder))
            print("\n" + render_bar(res, holder))
        if wall is not None:
            print(f"\nwall time of the run: {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
