"""ServerApp: runs every job of a plan with AttributedFedAvg and writes the results.

Run config keys (``[tool.flwr.app.config]`` in pyproject.toml):

``plan``      absolute path of a plan JSON written by ``fedattr run`` / ``fedattr sweep``; when set,
              the other keys are ignored.
``scenario``  absolute path of a scenario TOML (empty: the built-in defaults).
``set``       scenario overrides, ``;``-separated ``key=value`` pairs (e.g. ``"rounds=2; seeds=[1]"``).
``out-dir``   absolute results directory (empty: ``<scenario.output_dir>/<name>-<time>`` resolved
              against the home directory, since a ServerApp's working directory is the SuperLink's).
``node-wait-s`` seconds to wait for all ``num_clients`` nodes before failing with a clear error.
"""

from __future__ import annotations

import time
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fedattr.attribution import RoundScorer
from fedattr.models import resolve_device
from fedattr.plan import default_cache_dir, read_plan, scenario_jobs, write_plan
from fedattr.results import JobRecorder
from fedattr.strategies import AGGREGATORS
from fedattr.task import Job
from fedattr.training import evaluate, seed_everything

app = ServerApp()


def _plan_from_run_config(run_config: dict[str, Any]) -> dict[str, Any]:
    from fedattr.scenario import apply_overrides, load_scenario, scenario_from_dict

    path = str(run_config.get("scenario", "") or "")
    overrides = [s.strip() for s in str(run_config.get("set", "") or "").split(";") if s.strip()]
    scenario = load_scenario(path, overrides) if path else scenario_from_dict(apply_overrides({}, overrides))
    out = str(run_config.get("out-dir", "") or "")
    if out:
        results_dir = Path(out).expanduser().resolve()
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        base = Path(scenario.output_dir).expanduser()
        results_dir = (base if base.is_absolute() else Path.home() / base) / f"{scenario.name}-{stamp}"
    results_dir.mkdir(parents=True, exist_ok=True)
    from fedattr.results import atomic_write_json

    atomic_write_json(results_dir / "scenario.json", scenario.model_dump(mode="json"))
    jobs = scenario_jobs(scenario, results_dir, default_cache_dir())
    return {"num_clients": scenario.num_clients, "jobs": jobs, "results_dir": str(results_dir)}


def wait_for_nodes(grid: Grid, n: int, timeout_s: float) -> None:
    """Block until ``n`` nodes are connected, or fail with a message saying how to fix it."""
    deadline = time.monotonic() + timeout_s
    while True:
        have = len(list(grid.get_node_ids()))
        if have >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {have} of the {n} nodes the scenario needs connected within {timeout_s:.0f}s; "
                f"in simulation pass --federation-config 'num-supernodes={n}', in a deployment start {n} SuperNodes"
            )
        time.sleep(1.0)


def run_job(grid: Grid, entry: dict[str, Any], node_wait_s: float) -> dict[str, Any] | None:
    """Run one (arm, seed) job to completion; return its summary (None if it had finished before)."""
    recorder = JobRecorder(entry["dir"])
    if recorder.finished:
        log(INFO, "Job %s finished earlier; skipping", entry["spec"]["job_id"])
        return None
    job = Job(entry["spec"])
    attribution = entry["attribution"]
    splits = job.splits()
    device = resolve_device(job.spec["device"])
    seed_everything(job.seed)
    model = job.build_model()
    initial = ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()})
    scorer = RoundScorer(
        job.build_model(), splits.x_val, splits.y_val,
        [(e["name"], e.get("params", {})) for e in attribution["evaluators"]],
        utility=attribution["utility"], val_subset=attribution.get("val_subset"), engine=attribution["engine"],
        device=device, seed=job.seed, num_classes=splits.num_classes, num_threads=attribution.get("num_threads"),
    )
    eval_model = job.build_model()

    def central_evaluate(arrays: ArrayRecord) -> dict[str, float]:
        eval_model.load_state_dict(arrays.to_torch_state_dict())
        return evaluate(eval_model, splits.x_test, splits.y_test, device=device)

    n = int(job.spec["num_clients"])
    aggregation = entry.get("aggregation", {"strategy": "fedavg", "params": {}})
    strategy_cls = AGGREGATORS[aggregation["strategy"]]
    strategy = strategy_cls(
        scorer, central_evaluate, recorder.append_round, num_classes=splits.num_classes,
        job_info={"arm": job.spec["arm"], "seed": job.seed, "attacker_ids": job.attacker_ids},
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n,
        **aggregation.get("params", {}),
    )
    recorder.start()
    wait_for_nodes(grid, n, node_wait_s)
    t0 = time.perf_counter()
    initial_test = central_evaluate(initial)
    result = strategy.start(
        grid=grid, initial_arrays=initial, num_rounds=int(job.spec["rounds"]),
        train_config=ConfigRecord({"job": job.to_json()}), evaluate_fn=strategy.evaluate,
    )
    final = result.evaluate_metrics_serverapp.get(int(job.spec["rounds"]))
    summary = {
        "arm": job.spec["arm"], "seed": job.seed, "rounds": int(job.spec["rounds"]),
        "attacker_ids": job.attacker_ids,
        "initial_test": initial_test,
        "final_test": dict(final) if final is not None else None,
        "cumulative": strategy.ledger.cumulative,
        "cumulative_normalised": strategy.ledger.normalised,
        "ranks": strategy.ledger.ranks(),
        "counterfactual_inflation": strategy.ledger.inflation,
        "rejected": strategy.rejected,
        "wall_s": time.perf_counter() - t0,
    }
    recorder.write_summary(summary)
    return summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Execute the plan named in the run config (or one built from the scenario keys)."""
    cfg = dict(context.run_config)
    plan = read_plan(cfg["plan"]) if cfg.get("plan") else _plan_from_run_config(cfg)
    if not cfg.get("plan"):
        write_plan(Path(plan["results_dir"]) / "plan.json", plan["jobs"], plan["num_clients"])
        log(INFO, "Results go to %s", plan["results_dir"])
    node_wait_s = float(cfg.get("node-wait-s", 120))
    for i, entry in enumerate(plan["jobs"], 1):
        log(INFO, "=== job %d/%d: %s ===", i, len(plan["jobs"]), entry["spec"]["job_id"])
        run_job(grid, entry, node_wait_s)
