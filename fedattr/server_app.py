"""ServerApp: runs every job of a plan with an attributed Flower strategy and writes the results.

Run config keys (``[tool.flwr.app.config]`` in pyproject.toml, overridden with
``flwr run . --run-config "key=value ..."``):

``scenario``          scenario TOML, absolute or relative to the app directory (empty: the built-in
                      defaults; ``fedattr scenario schema`` lists every key).
``num-server-rounds`` federated rounds (0: the scenario's ``rounds``).
``seed``              one run seed (-1: the scenario's ``seeds``).
``attack``            keep the honest arms and the arms with this attack, adding one with its default
                      parameters if the scenario has none ("": the scenario's arms).
``evaluators``        comma-separated evaluator names, e.g. ``"loo,shapley"`` ("": the scenario's).
``set``               further scenario overrides, ``;``-separated ``key=value`` pairs with dotted
                      keys (e.g. ``"train.lr=0.1; data.val_size=200"``), applied after the keys above.
``out-dir``           results directory, absolute or relative to the app directory (empty:
                      ``<app directory>/<scenario.output_dir>/<name>-<UTC time>``).
``node-wait-s``       seconds a deployment waits for all ``num_clients`` nodes before failing.
``plan``              absolute path of a plan JSON written by ``fedattr run`` / ``fedattr sweep``; when
                      set, every other key but ``node-wait-s`` is ignored.

The app directory is the source tree of fedattr's editable install (the directory ``flwr run .``
is given); a ServerApp's working directory is the SuperLink's, so nothing is resolved against it.
Scenario paths are also looked up in the FAB Flower installed for the run. A run that cannot
complete raises from ``main``, so ``flwr ls`` shows it as failed and ``flwr log RUN_ID`` says why.
"""

from __future__ import annotations

import json
import os
import re
import time
from importlib import metadata
from logging import INFO, WARNING
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fedattr.strategies.scoring import RoundScorer
from fedattr.learning.models import resolve_device
from fedattr.scenario import Scenario
from fedattr.scenario.plan import default_results_dir, read_plan, scenario_jobs, write_plan
from fedattr.protocol import JobSummary, Plan, PlanEntry
from fedattr.results.store import JobRecorder, atomic_write_json
from fedattr.strategies import AttributedStrategy, DetectorStep, build_aggregator
from fedattr.strategies.attributed import RoundFailure
from fedattr.learning.task import Job
from fedattr.learning.training import evaluate, seed_everything

app = ServerApp()

#: Validation images the server trains on for FLTrust's reference update.
ROOT_SET_SIZE = 100

#: Seconds a simulation gets to register its SuperNodes before a shortfall is an error.
SIMULATION_NODE_GRACE_S = 20.0


def editable_source() -> Path | None:
    """The source tree of fedattr's editable install (``pip install -e DIR``), else None."""
    # Every installed copy is looked at: a source tree on sys.path also shows its egg-info,
    # which has no direct_url.json.
    for dist in metadata.distributions(name="fedattr"):
        try:
            info = json.loads(dist.read_text("direct_url.json") or "{}")
        except ValueError:
            continue
        url = urlparse(str(info.get("url", "")))
        root = Path(unquote(url.path))
        if info.get("dir_info", {}).get("editable") and url.scheme == "file" and (root / "pyproject.toml").is_file():
            return root
    return None


def app_dirs() -> list[Path]:
    """Where a relative path of the run config is looked up: the app's source tree, then the FAB
    this ServerApp was loaded from (Flower puts the installed FAB first on ``sys.path``)."""
    dirs = [d for d in (editable_source(), Path(__file__).resolve().parents[1]) if d is not None]
    return list(dict.fromkeys(dirs))


def resolve_in_app(value: str, key: str) -> Path:
    """``value`` as an absolute path: as given if absolute, else the first app directory holding it."""
    from fedattr.scenario import ScenarioError

    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    tried = [d / path for d in app_dirs()]
    for candidate in tried:
        if candidate.exists():
            return candidate.resolve()
    raise ScenarioError(f"run config {key} = {value!r}: no such file; looked in "
                        f"{', '.join(str(t) for t in tried)}")


def _flat_overrides(run_config: dict[str, Any]) -> list[str]:
    """The flat hyperparameter keys as scenario overrides (``key=value`` TOML strings)."""
    from fedattr.scenario import ScenarioError

    out = []
    try:
        rounds = int(run_config.get("num-server-rounds", 0) or 0)
        seed = int(run_config.get("seed", -1))
    except (TypeError, ValueError):
        raise ScenarioError("run config num-server-rounds and seed must be integers") from None
    if rounds < 0:
        raise ScenarioError(f"run config num-server-rounds = {rounds}: use a positive number (0: the scenario's)")
    if rounds:
        out.append(f"rounds={rounds}")
    if seed < -1:
        raise ScenarioError(f"run config seed = {seed}: use a seed >= 0 (-1: the scenario's seeds)")
    if seed >= 0:
        out.append(f"seeds=[{seed}]")
    names = [n.strip() for n in str(run_config.get("evaluators", "") or "").split(",") if n.strip()]
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_\-]+", n)]
    if bad:
        raise ScenarioError(f"run config evaluators: {bad[0]!r} is not an evaluator name; "
                            f"give comma-separated names, e.g. \"loo,shapley\"")
    if names:
        out.append("attribution.evaluators=[" + ",".join(f"{{name='{n}'}}" for n in names) + "]")
    return out


def _select_attack(data: dict[str, Any], attack: str) -> dict[str, Any]:
    """Keep the honest arms and those using ``attack``; add an arm with its defaults if none does."""
    from fedattr.scenario import HONEST_ATTACK

    arms = [a for a in data["arms"] if a["attack"] in (HONEST_ATTACK, attack)]
    if not any(a["attack"] == attack for a in arms):
        arms.append({"name": re.sub(r"[^A-Za-z0-9]+", "-", attack).strip("-") or "attack", "attack": attack})
    return {**data, "arms": arms}


def scenario_from_run_config(run_config: dict[str, Any]) -> Scenario:
    """The scenario a run config describes: its TOML, the flat keys, then ``set`` (see the module docstring).

    Raises ScenarioError or UserError with one message for every bad value, before any job starts.
    """
    from fedattr.scenario.checks import check_scenario
    from fedattr.scenario import apply_overrides, load_scenario, scenario_from_dict

    path = str(run_config.get("scenario", "") or "")
    overrides = _flat_overrides(run_config)
    overrides += [s.strip() for s in str(run_config.get("set", "") or "").split(";") if s.strip()]
    if path:
        scenario = load_scenario(resolve_in_app(path, "scenario"), overrides)
    else:
        scenario = scenario_from_dict(apply_overrides({}, overrides), where="(built-in defaults)")
    attack = str(run_config.get("attack", "") or "").strip()
    if attack:
        scenario = scenario_from_dict(_select_attack(scenario.model_dump(mode="json"), attack),
                                      where=f"(run config attack = {attack!r})")
    check_scenario(scenario, resources=False, data=False)
    return scenario


def plan_from_run_config(scenario: Scenario, run_config: dict[str, Any]) -> Plan:
    """Write ``scenario.json`` and ``plan.json`` into the run config's results directory; return the plan."""
    out = str(run_config.get("out-dir", "") or "")
    anchor = editable_source() or Path.home()
    if out:
        results_dir = Path(out).expanduser()
        results_dir = (results_dir if results_dir.is_absolute() else anchor / results_dir).resolve()
    else:
        results_dir = default_results_dir(scenario, anchor=anchor)
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results_dir / "scenario.json", scenario.model_dump(mode="json"))
    jobs = scenario_jobs(scenario, results_dir)
    write_plan(results_dir / "plan.json", jobs, scenario.num_clients)
    return Plan(num_clients=scenario.num_clients, jobs=jobs, results_dir=str(results_dir))


def check_simulation_nodes(grid: Grid, n: int, grace_s: float = SIMULATION_NODE_GRACE_S) -> None:
    """In a simulation, fail at once when it has fewer than ``n`` SuperNodes, naming the fix.

    A simulation registers all its SuperNodes together at its start, so once their number has
    stayed put for two seconds no more will come. Deployments are left to :func:`wait_for_nodes`.
    """
    if type(grid).__name__ != "InMemoryGrid":
        return
    deadline, last, stable_since = time.monotonic() + grace_s, -1, time.monotonic()
    while True:
        have = len(list(grid.get_node_ids()))
        if have >= n:
            return
        now = time.monotonic()
        if have != last:
            last, stable_since = have, now
        if (have and now - stable_since >= 2.0) or now > deadline:
            raise RuntimeError(
                f"the scenario needs {n} clients but this simulation has {have} SuperNode(s); run it with "
                f"--federation-config \"num-supernodes={n}\" (Flower's local simulation starts 2 by default)")
        time.sleep(0.2)


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

    step = DetectorStep(specs, reference_update=reference)
    # Detectors that test updates against the server's own data (the generator footprint) get it here.
    for det, _ in step.detectors:
        if getattr(det, "needs_server_data", False):
            from fedattr.core.env import default_cache_dir
            from fedattr.defenses.footprint import FootprintData

            det.bind(FootprintData(template, splits.x_val, splits.y_val, splits.x_aux, splits.y_aux),
                     cache_dir=default_cache_dir())
    return step


def run_job(grid: Grid, entry: PlanEntry, node_wait_s: float) -> JobSummary | None:
    """Run one (arm, seed) job to completion; return its summary (None if it had finished before)."""
    recorder = JobRecorder(entry.dir)
    if recorder.finished:
        log(INFO, "Job %s finished earlier; skipping", entry.spec.job_id)
        return None
    from fedattr.core.env import data_dir_override

    job = Job(entry.spec, data_dir=entry.server_data_dir or data_dir_override())
    attribution = entry.attribution
    splits = job.splits()
    device = resolve_device(os.environ.get("FEDATTR_DEVICE") or job.spec.device)
    n = int(job.spec.num_clients)
    sampling = entry.sampling
    # With sampling, a round needs by default every client it sampled to reply.
    min_clients = entry.min_clients or sampling.sample_size(n)
    strategy, rule = build_aggregator(
        entry.aggregation.strategy, dict(entry.aggregation.params), n, min_nodes=min_clients,
        sampling={"fraction_train": sampling.fraction_train, "min_train_nodes": sampling.min_train_nodes or 2,
                  "min_available_nodes": sampling.min_available_nodes or n} if sampling.active else None)
    seed_everything(job.seed)
    model = job.build_model()
    initial = ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()})
    scorer = RoundScorer(
        job.build_model(), splits.x_val, splits.y_val,
        [(e.name, dict(e.params)) for e in attribution.evaluators],
        utility=attribution.utility, val_subset=attribution.val_subset, engine=attribution.engine,
        device=device, seed=job.seed, num_classes=splits.num_classes, num_threads=attribution.num_threads,
        aggregate=rule, public=(splits.x_aux, splits.y_aux) if len(splits.y_aux) else None,
    )
    eval_model = job.build_model()

    def central_evaluate(arrays: ArrayRecord) -> dict[str, float]:
        eval_model.load_state_dict(arrays.to_torch_state_dict())
        return evaluate(eval_model, splits.x_test, splits.y_test, device=device)

    rounds_done: list[int] = []

    def record_round(record) -> None:
        rounds_done.append(record.round)
        recorder.append_round(record.model_dump(mode="json"))

    # Waiting for nodes in later rounds is bounded too: by the round timeout, else node-wait-s.
    attributed = AttributedStrategy(
        strategy, scorer, central_evaluate=central_evaluate, on_round=record_round,
        detectors=_detector_step(entry, job, splits, device),
        job_info={"arm": job.spec.arm, "seed": job.seed, "train_seed": job.seed, "partition_seed": job.partition_seed(),
                  "attacker_ids": job.attacker_ids},
        min_clients=min_clients, num_partitions=n,
        round_timeout_s=float(entry.round_timeout_s or node_wait_s),
        max_weight_ratio=entry.aggregation.max_weight_ratio,
        sample_seed=job.seed if sampling.active else None,
    )
    recorder.start()
    wait_for_nodes(grid, n, node_wait_s)
    t0 = time.perf_counter()
    initial_test = central_evaluate(initial)
    rounds = int(job.spec.rounds)
    final, failure = None, None
    try:
        result = attributed.start(
            grid=grid, initial_arrays=initial, num_rounds=rounds,
            timeout=float(entry.round_timeout_s) if entry.round_timeout_s else 24 * 3600.0,
            train_config=ConfigRecord({"job": job.spec.to_json()}), evaluate_fn=attributed.evaluate,
        )
        final = result.evaluate_metrics_serverapp.get(rounds)
    except RoundFailure as exc:
        failure = exc.reason
    if failure is None and len(rounds_done) != rounds:
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
        cumulative_per_participation=totals.per_participation, participations=totals.participations,
        counterfactual_inflation=totals.inflation, rejected=attributed.rejected,
        rejected_count=len(attributed.rejected), missing_count=attributed.missing_total,
        failed_round=attributed.failure.record.model_dump(mode="json") if attributed.failure else None,
        wall_s=time.perf_counter() - t0,
    )
    recorder.write_summary(summary.model_dump(mode="json"))
    return summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Execute the plan named in the run config (or one built from the scenario keys)."""
    cfg = dict(context.run_config)
    if cfg.get("plan"):
        plan = Plan.model_validate(read_plan(cfg["plan"]))
        check_simulation_nodes(grid, int(plan.num_clients))
    else:
        scenario = scenario_from_run_config(cfg)
        check_simulation_nodes(grid, scenario.num_clients)
        plan = plan_from_run_config(scenario, cfg)
    if plan.results_dir:
        log(INFO, "Results go to %s", plan.results_dir)
    node_wait_s = float(cfg.get("node-wait-s", 120))
    failed = []
    for i, entry in enumerate(plan.jobs, 1):
        log(INFO, "=== job %d/%d: %s ===", i, len(plan.jobs), entry.spec.job_id)
        summary = run_job(grid, entry, node_wait_s)
        if summary is not None and summary.status == "failed":
            failed.append(f"{entry.spec.job_id}: {summary.failure_reason}")
    if failed:
        # Raised, so that Flower records the run as failed (`flwr ls`); the summaries are written.
        raise RuntimeError(f"{len(failed)} of {len(plan.jobs)} job(s) failed: " + "; ".join(failed))
