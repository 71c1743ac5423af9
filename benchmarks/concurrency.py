"""Concurrent jobs: the same small study one job at a time and with ``--jobs N``, in one run.

    python -m benchmarks.concurrency                      # demo, 2 seeds x 2 arms, 2 rounds, --jobs 2
    python -m benchmarks.concurrency --jobs 2 --json docs/results/concurrency.json
    python -m benchmarks.concurrency --set rounds=4       # more --set overrides for both runs

Both runs are ``fedattr run`` (the CLI, in a subprocess) of the same scenario and overrides into
two fresh directories, the sequential one first. Printed per run: wall seconds, start-up (launch
to the first round minus that round's own work, ``environment.json``), the jobs' own work (the
sum of their rounds' ``round_s``), then the speed-up (sequential wall / concurrent wall) and
whether every round record is equal (``scripts/compare_rounds.py``: every field but timings).
The load average before and after is printed too: the machine may be shared. ``--json PATH``
writes the whole summary.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedattr.launch.processes import FLWR_ENV

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SETS = ["seeds=[0,1]", "rounds=2"]


def _compare():
    spec = importlib.util.spec_from_file_location("compare_rounds", ROOT / "scripts" / "compare_rounds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compare


def job_work(results: Path) -> dict[str, float]:
    """Seconds of each job's rounds (sum of ``timings.round_s``), by job directory name."""
    work = {}
    for path in sorted(results.glob("jobs/*/rounds.jsonl")):
        rounds = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        work[path.parent.name] = sum(float(r.get("timings", {}).get("round_s") or 0.0) for r in rounds)
    return work


def run_study(scenario: Path, sets: list[str], out: Path, jobs: int, flwr_home: Path) -> dict:
    """One ``fedattr run`` of the study; its wall, start-up and the jobs' own work."""
    env = {**os.environ, **FLWR_ENV, "FLWR_HOME": str(flwr_home)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "fedattr.cli.app", "run", str(scenario), "--out", str(out), "--no-report",
           "--jobs", str(jobs)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"fedattr run --jobs {jobs} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    environment = json.loads((out / "environment.json").read_text())
    work = job_work(out)
    return {"jobs_at_once": jobs, "runs": environment.get("concurrent_runs", 1), "wall_s": wall,
            "run_wall_s": environment.get("wall_s"), "startup_s": environment.get("startup_s"),
            "work_s": sum(work.values()), "job_work_s": work}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "demo.toml")
    ap.add_argument("--set", dest="sets", action="append", default=None, metavar="KEY=VALUE",
                    help=f"scenario override for both runs; repeatable (default: {' '.join(DEFAULT_SETS)})")
    ap.add_argument("--jobs", type=int, default=2, help="jobs at once in the concurrent run (default 2)")
    ap.add_argument("--out", type=Path, default=None, help="keep both results directories here "
                                                          "(default: a temporary directory)")
    ap.add_argument("--json", type=Path, default=None, help="write the summary to this JSON file")
    args = ap.parse_args(argv)
    if args.jobs < 2:
        ap.error("--jobs must be >= 2 (the sequential run is the baseline)")
    sets = DEFAULT_SETS if args.sets is None else args.sets

    with tempfile.TemporaryDirectory(prefix="fedattr-concurrency-") as tmp:
        base = args.out or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        load_before = os.getloadavg()
        seq = run_study(args.scenario, sets, base / "sequential", 1, base / "flwr_home")
        conc = run_study(args.scenario, sets, base / f"jobs{args.jobs}", args.jobs, base / "flwr_home")
        load_after = os.getloadavg()
        n_jobs, n_rounds, diffs, _ = _compare()(base / "sequential", base / f"jobs{args.jobs}")

    result = {
        "scenario": str(args.scenario.relative_to(ROOT) if args.scenario.is_relative_to(ROOT) else args.scenario),
        "overrides": sets, "cpu_count": os.cpu_count(), "jobs": n_jobs, "rounds": n_rounds,
        "sequential": seq, "concurrent": conc, "speedup": seq["wall_s"] / conc["wall_s"],
        "equal": not diffs, "differences": diffs[:20], "loadavg_before": load_before, "loadavg_after": load_after,
    }
    print(f"study: {result['scenario']} {' '.join(sets)}: {n_jobs} jobs, {n_rounds} rounds; "
          f"{os.cpu_count()} CPUs; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"{'':<14}{'wall s':>9}{'start-up s':>12}{'jobs work s':>13}{'flwr runs':>11}")
    for name, r in (("sequential", seq), (f"--jobs {args.jobs}", conc)):
        print(f"{name:<14}{r['wall_s']:>9.1f}{r['startup_s'] or 0:>12.1f}{r['work_s']:>13.1f}{r['runs']:>11}")
    print(f"speed-up (sequential wall / concurrent wall): {result['speedup']:.2f}x")
    print(f"round records equal: {'yes' if result['equal'] else 'NO'} ({len(diffs)} differing fields)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    if diffs:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
