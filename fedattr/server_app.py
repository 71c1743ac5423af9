"""ServerApp: runs every job of a plan with an attributed Flower strategy and writes the results.

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

import os
import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fedattr.strategies.scoring import RoundScorer
from fedattr.learning.models import resolve_device
from fedattr.scenario.plan import default_results_dir, read_plan, scenario_jobs, write_plan
from fedattr.protocol import JobSummary, Plan, PlanEntry
from fedattr.results.store import JobRecorder, atomic_write_json
from fedattr.strategies import AttributedStrategy, DetectorStep, build_aggregator
from fedattr.learning.task import Job
from fedattr.learning.training import evaluate, seed_everything

app = ServerApp()

#: Validation images the server trains on for FLTrust's reference update.
ROOT_SET_SIZE = 100


def _plan_from_run_config(run_config: dict[str, Any]) -> Plan:
    from fedattr.scenario.schema import apply_overrides, load_scenario, scenario_from_dict

    path = str(run_config.get("scenario", "") or "")
    overrides = [s.strip() for s in str(run_config.get("set", "") or "").split(";") if s.strip()]
    scenario = load_scenario(path, overrides) if path else scenario_from_dict(apply_overrides({}, overrides))
    out = str(run_config.get("out-dir", "") or "")
    if out:
        results_dir = Path(out).expanduser().resolve()
    else:
        # The ServerApp's working directory is the SuperLink's: anchor relative paths at home.
        results_dir = default_results_dir(scenario, anchor=Path.home())
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results_dir / "scenario.json", scenario.model_dump(mode="json"))
    jobs = scenario_jobs(scenario, results_dir)
    write_plan(results_dir / "plan.json", jobs, scenario.num_clients)
    return Plan(num_clients=scenario.num_clients, jobs=jobs, results_dir=str(results_dir))


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


def _detector_step(entry: PlanEntry, job: Job, splits, device: str) -> DetectorStep:
    specs = [(d.name, dict(d.params), d.mode) for d in entry.detectors]
    if not specs:
        return DetectorStep([])
    from fedattr.defenses import root_update

    template = job.build_model()
    x_root, y_root = splits.x_val[:ROOT_SET_SIZE], splits.y_val[:ROOT_SET_SIZE]
    t = job.train_kwargs()

    def reference(base, server_round: int):
        from fedattr.evaluators import StateLayout

        layout = StateLayout.from_state_dict(template.state_dict())
        return root_update(template, layout, base, x_root, y_root, epochs=t["epochs"], batch_size=t["batch_size"],
                           lr=t["lr"], seed=job.client_seed(server_round, -1))

    return DetectorStep(specs, reference_update=reference)


def run_job(grid: Grid, entry: PlanEntry, node_wait_s: float) -> JobSummary | None:
    """Run one (arm, seed) job to completion; return its summary (None if it had finished before)."""
    recorder = JobRecorder(entry.dir)
    if recorder.finished:
        log(INFO, "Job %s finished earlier; skipping", entry.spec.job_id)
        return None
    job = Job(entry.spec, data_dir=entry.server_data_dir or os.environ.get("FEDATTR_DATA_DIR"))
    attribution = entry.attribution
    splits = job.splits()
    device = resolve_device(os.environ.get("FEDATTR_DEVICE") or job.spec.device)
    n = int(job.spec.num_clients)
    min_clients = entry.min_clients or n
    strategy, rule = build_aggregator(entry.aggregation.strategy, dict(entry.aggregation.params), n,
                                      min_nodes=min_clients)
    seed_everything(job.seed)
    model = job.build_model()
    initial = ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()})
    scorer = RoundScorer(
        job.build_model(), splits.x_val, splits.y_val,
        [(e.name, dict(e.params)) for e in attribution.evaluators],
        utility=attribution.utility, val_subset=attribution.val_subset, engine=attribution.engine,
        device=device, seed=job.seed, num_classes=splits.num_classes, num_threads=attribution.num_threads,
        aggregate=rule,
    )
    eval_model = job.build_model()

    def central_evaluate(arrays: ArrayRecord) -> dict[str, float]:
        eval_model.load_state_dict(arrays.to_torch_state_dict())
        return evaluate(eval_model, splits.x_test, splits.y_test, device=device)

    rounds_done: list[int] = []

    def record_round(record) -> None:
        rounds_done.append(record.round)
        recorder.append_round(record.model_dump(mode="json"))

    attributed = AttributedStrategy(
        strategy, scorer, central_evaluate=central_evaluate, record_round=record_round,
        detectors=_detector_step(entry, job, splits, device),
        job_info={"arm": job.spec.arm, "seed": job.seed, "train_seed": job.seed, "partition_seed": job.partition_seed(),
                  "attacker_ids": job.attacker_ids},
        min_clients=min_clients,
    )
    recorder.start()
    wait_for_nodes(grid, n, node_wait_s)
    t0 = time.perf_counter()
    initial_test = central_evaluate(initial)
    rounds = int(job.spec.rounds)
    result = attributed.start(
        grid=grid, initial_arrays=initial, num_rounds=rounds,
        timeout=float(entry.round_timeout_s) if entry.round_timeout_s else 24 * 3600.0,
        train_config=ConfigRecord({"job": job.spec.to_json()}), evaluate_fn=attributed.evaluate,
    )
    final = result.evaluate_metrics_serverapp.get(rounds)
    failure = None
    if attributed.short_rounds:
        failure = (f"rounds {attributed.short_rounds} had fewer than min_clients = {min_clients} valid replies "
                   f"({len(attributed.rejected)} rejected, {attributed.missing_total} missing over the job)")
    elif len(rounds_done) != rounds:
        failure = f"{len(rounds_done)} of {rounds} rounds produced a record"
    if failure:
        log(WARNING, "Job %s failed: %s", job.job_id, failure)
    totals = attributed.totals
    summary = JobSummary(
        status="failed" if failure else "finished", failure_reason=failure,
        arm=job.spec.arm, seed=job.seed, train_seed=job.seed, partition_seed=job.partition_seed(), rounds=rounds,
        rounds_recorded=len(rounds_done),
        attacker_ids=job.attacker_ids, initial_test=initial_test,
        final_test=dict(final) if final is not None else None,
        cumulative=totals.cumulative, cumulative_normalised=totals.normalised, ranks=totals.ranks(),
        counterfactual_inflation=totals.inflation, rejected=attributed.rejected,
        rejected_count=len(attributed.rejected), missing_count=attributed.missing_total,
        wall_s=time.perf_counter() - t0,
    )
    recorder.write_summary(summary.model_dump(mode="json"))
    return summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Execute the plan named in the run config (or one built from the scenario keys)."""
    cfg = dict(context.run_config)
    plan = Plan.model_validate(read_plan(cfg["plan"])) if cfg.get("plan") else _plan_from_run_config(cfg)
    if plan.results_dir:
        log(INFO, "Results go to %s", plan.results_dir)
    node_wait_s = float(cfg.get("node-wait-s", 120))
    for i, entry in enumerate(plan.jobs, 1):
        log(INFO, "=== job %d/%d: %s ===", i, len(plan.jobs), entry.spec.job_id)
        run_job(grid, entry, node_wait_s)
