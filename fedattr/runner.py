"""Launch scenarios and sweeps on Flower's simulation runtime, and clean up after them.

Each launch starts its own simulation SuperLink (own ports, project-local ``FLWR_HOME``, runtime
dependency installation, telemetry and update checks off), submits the app with ``flwr run``
and a plan naming every job, follows progress through the jobs' ``rounds.jsonl``, and ends the
SuperLink's whole process group (ServerApp, Ray, ClientApp actors) by PID, whatever happens.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from fedattr.errors import UserError
from fedattr.plan import (
    default_cache_dir,
    default_results_dir,
    scenario_jobs,
    write_plan,
)
from fedattr.results import atomic_write_json, read_json, read_jsonl

Progress = Callable[[dict[str, Any]], None]

#: environment variable that marks every process a launch starts (see simulation_superlink)
RUN_TAG = "FEDATTR_RUN_TAG"

FLWR_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
}


def project_root() -> Path:
    """The directory holding fedattr's pyproject.toml (the Flower app that ``flwr run`` submits)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").exists():
        raise UserError(f"fedattr must be installed from its source tree (pip install -e .); no pyproject.toml in {root}")
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


@contextmanager
def simulation_superlink(flwr_home: Path, log_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Start a simulation SuperLink on free loopback ports; yield (connection name, env); end it by PID."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    tag = uuid.uuid4().hex
    # Flower starts SuperExec and the simulation in sessions of their own; every descendant
    # inherits this tag, which is how they are all found and ended afterwards.
    env = {**os.environ, **FLWR_ENV, "FLWR_HOME": str(flwr_home), RUN_TAG: tag,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "fedattr"\n\n[superlink.fedattr]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    cmd = [_bin("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
           "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation"]
    log_fh = open(log_path, "ab")
    proc = subprocess.Popen(cmd, env=env, stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True)
    (flwr_home / "superlink.pid").write_text(f"{proc.pid}\n")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise UserError(f"flower-superlink exited with status {proc.returncode}; see {log_path}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.3)
        else:
            raise UserError(f"flower-superlink did not open 127.0.0.1:{port} within 60 s; see {log_path}")
        (flwr_home / "run.tag").write_text(tag + "\n")
        yield "fedattr", env
    finally:
        _end_process_group(proc)
        end_tagged_processes(tag)
        log_fh.close()


def _tagged_pids(tag: str) -> list[int]:
    """Processes carrying the tag in their environment, and all their descendants.

    Descendants count too because some (Ray's agents) are started with a fresh environment.
    """
    needle = f"{RUN_TAG}={tag}".encode()
    tagged, parent = set(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            stat = (entry / "stat").read_text()
            parent[pid] = int(stat[stat.rindex(")") + 2 :].split()[1])
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                tagged.add(pid)
        except (OSError, ValueError, IndexError):
            continue
    family, grew = set(tagged), True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in family and pid not in family:
                family.add(pid)
                grew = True
    return sorted(family)


def end_tagged_processes(tag: str, grace_s: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process carrying this run's tag; return the PIDs found."""
    if not Path("/proc").is_dir():
        return []
    found = _tagged_pids(tag)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _tagged_pids(tag):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _tagged_pids(tag):
            time.sleep(0.2)
    return found


def _end_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the SuperLink's process group, then SIGKILL whatever is left."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; children (Ray workers) may linger in the group.
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _environment(command: str) -> dict[str, Any]:
    from importlib import metadata

    pkgs = {}
    for name in ("fedattr", "flwr", "flwr-datasets", "datasets", "torch", "torchvision", "numpy", "scipy",
                 "scikit-learn", "ray", "pydantic", "mlxtend"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": pkgs,
            "command": command, "cpu_count": os.cpu_count()}


def _emit(progress: Progress | None, event: dict[str, Any]) -> None:
    if progress is not None:
        progress(event)


def execute_plan(plan_path: Path, jobs: list[dict[str, Any]], num_clients: int, runtime: Any, work_dir: Path,
                 progress: Progress | None = None) -> dict[str, float]:
    """Run every job of a plan in ONE ``flwr run``; return timings (wall, start-up)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    flwr_log = work_dir / "flwr.log"
    t0 = time.perf_counter()
    todo = [j for j in jobs if not (Path(j["dir"]) / "summary.json").exists()]
    if not todo:
        _emit(progress, {"event": "log", "message": "every job finished earlier; nothing to run"})
        return {"wall_s": 0.0, "startup_s": 0.0}
    # Flower wants whole CPUs as an integer; GPUs may be fractional.
    cpus = int(runtime.client_cpus) if float(runtime.client_cpus).is_integer() else runtime.client_cpus
    fed_cfg = (f"num-supernodes={num_clients} client-resources-num-cpus={cpus} "
               f"client-resources-num-gpus={runtime.client_gpus}")
    # SIGTERM/SIGHUP would end this process without running the cleanup below.
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _execute(plan_path, jobs, num_clients, fed_cfg, work_dir, flwr_log, t0, progress)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _execute(plan_path: Path, jobs: list[dict[str, Any]], num_clients: int, fed_cfg: str, work_dir: Path,
             flwr_log: Path, t0: float, progress: Progress | None) -> dict[str, float]:
    first_round_at: float | None = None
    with simulation_superlink(work_dir / "flwr_home", work_dir / "superlink.log") as (conn, env):
        cmd = [_bin("flwr"), "run", str(project_root()), conn, "--run-config", f"plan='{plan_path}'",
               "--federation-config", fed_cfg, "--stream"]
        _emit(progress, {"event": "log", "message": f"flwr run: {' '.join(cmd)}"})
        with open(flwr_log, "ab") as fh:
            proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            seen: dict[str, int] = {}
            # Jobs finished by an earlier, interrupted launch say nothing about this start-up.
            pending = {j["spec"]["job_id"] for j in jobs if not (Path(j["dir"]) / "summary.json").exists()}
            try:
                while proc.poll() is None:
                    time.sleep(1.0)
                    done = sum((Path(j["dir"]) / "summary.json").exists() for j in jobs)
                    for j in jobs:
                        d = Path(j["dir"])
                        n_rounds = len(read_jsonl(d / "rounds.jsonl"))
                        finished = (d / "summary.json").exists()
                        key = j["spec"]["job_id"]
                        if n_rounds and first_round_at is None and key in pending:
                            first_round_at = time.perf_counter()
                        if n_rounds != seen.get(key, 0) or (finished and seen.get(key + "#done") is None):
                            seen[key] = n_rounds
                            if finished:
                                seen[key + "#done"] = 1
                            _emit(progress, {"event": "round", "arm": j["spec"]["arm"], "seed": j["spec"]["seed"],
                                             "round": n_rounds, "rounds": j["spec"]["rounds"],
                                             "jobs_done": done, "jobs_total": len(jobs)})
                    _emit(progress, {"event": "jobs", "jobs_done": done, "jobs_total": len(jobs)})
                    if done == len(jobs):
                        break
                proc.wait(timeout=120)
            except BaseException:
                _end_process_group(proc)
                raise
            finally:
                if proc.poll() is None:
                    _end_process_group(proc)
    missing = [j["spec"]["job_id"] for j in jobs if not (Path(j["dir"]) / "summary.json").exists()]
    if missing:
        tail = flwr_log.read_text(errors="replace")[-3000:] if flwr_log.exists() else ""
        raise UserError(f"the Flower run ended without finishing {len(missing)} job(s) ({missing[:3]}...); "
                        f"full log: {flwr_log}\n--- last lines ---\n{tail}")
    wall = time.perf_counter() - t0
    first_pending = [j for j in jobs if j["spec"]["job_id"] in pending] or jobs
    return {"wall_s": wall, "startup_s": _startup_seconds(first_pending, first_round_at, t0, wall)}


def _startup_seconds(jobs: list[dict[str, Any]], first_round_at: float | None, t0: float, wall: float) -> float:
    """Launch-to-first-round time minus the first round's own work.

    Flower starts the SuperLink, the simulation, Ray and the ClientApp actors before (and
    during) the first round; what the first round took beyond a typical round is start-up.
    """
    if first_round_at is None:
        return wall
    rounds = read_jsonl(Path(jobs[0]["dir"]) / "rounds.jsonl")
    if not rounds:
        return first_round_at - t0
    first = rounds[0].get("timings", {})
    later = sorted(r.get("timings", {}).get("train_s", 0.0) for r in rounds[1:]) or [0.0]
    own_work = first.get("attribution_s", 0.0) + first.get("aggregate_s", 0.0) + later[len(later) // 2]
    return max(0.0, first_round_at - t0 - own_work)



def _finish_environment(results_dir: Path, env: dict[str, Any], timings: dict[str, float], started: str) -> None:
    env.update(timings)
    env["started"] = started
    env["finished"] = datetime.now(timezone.utc).isoformat()
    atomic_write_json(results_dir / "environment.json", env)


def run_scenario(scenario: Any, out_dir: str | Path | None = None, progress: Progress | None = None,
                 scenario_path: str | Path | None = None) -> Path:
    """Run every arm and seed of ``scenario`` in one Flower simulation; return the results directory.

    Re-running into an existing results directory resumes: finished jobs are kept.
    """
    _check_registries(scenario)
    results_dir = Path(out_dir).expanduser().resolve() if out_dir else default_results_dir(scenario)
    results_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat()
    atomic_write_json(results_dir / "scenario.json", scenario.model_dump(mode="json"))
    env = _environment(" ".join(sys.argv))
    env["seeds"] = list(scenario.seeds)
    env["scenario_path"] = str(Path(scenario_path).resolve()) if scenario_path else None
    jobs = scenario_jobs(scenario, results_dir, default_cache_dir())
    plan_path = write_plan(results_dir / "plan.json", jobs, scenario.num_clients)
    timings = execute_plan(plan_path, jobs, scenario.num_clients, scenario.runtime, results_dir / "logs", progress)
    _finish_environment(results_dir, env, timings, started)
    return results_dir


def run_sweep(scenario: Any, points: list[tuple[dict[str, str], Any]], out_dir: str | Path | None = None,
              progress: Progress | None = None, grid: dict[str, list[str]] | None = None) -> Path:
    """Run every grid point of a sweep in ONE Flower simulation (start-up paid once)."""
    if not points:
        raise UserError("the sweep grid is empty")
    sizes = {p.num_clients for _, p in points}
    if len(sizes) != 1:
        raise UserError(f"a sweep runs on one set of nodes: every point needs the same num_clients, got {sorted(sizes)}")
    for _, p in points:
        _check_registries(p)
    sweep_dir = (Path(out_dir).expanduser().resolve() if out_dir
                 else default_results_dir(scenario).with_name(default_results_dir(scenario).name + "-sweep"))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat()
    cache = default_cache_dir()
    jobs, entries = [], []
    for i, (overrides, point) in enumerate(points):
        pdir = sweep_dir / "points" / f"p{i:03d}"
        pdir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(pdir / "scenario.json", point.model_dump(mode="json"))
        jobs += scenario_jobs(point, pdir, cache)
        entries.append({"overrides": overrides, "dir": f"points/p{i:03d}"})
    plan_path = write_plan(sweep_dir / "plan.json", jobs, sizes.pop())
    # Written first so that an interrupted sweep can still be reported from what it finished.
    atomic_write_json(sweep_dir / "sweep.json", {"grid": grid or {}, "points": entries, "wall_s": None,
                                                 "startup_s": None, "jobs": len(jobs), "started": started})
    timings = execute_plan(plan_path, jobs, points[0][1].num_clients, scenario.runtime, sweep_dir / "logs", progress)
    env = _environment(" ".join(sys.argv))
    for e, (_, point) in zip(entries, points):
        _finish_environment(sweep_dir / e["dir"], dict(env, seeds=list(point.seeds)), timings, started)
    atomic_write_json(sweep_dir / "sweep.json", {
        "grid": grid or {}, "points": entries, "wall_s": timings["wall_s"], "startup_s": timings["startup_s"],
        "jobs": len(jobs), "started": started, "finished": datetime.now(timezone.utc).isoformat(),
    })
    atomic_write_json(sweep_dir / "environment.json", dict(env, **timings))
    return sweep_dir


def registries() -> dict[str, list[str]]:
    """Every registry name a scenario may use."""
    from fedattr.attacks import ATTACKS
    from fedattr.data import DATASETS, PARTITIONERS
    from fedattr.evaluators import EVALUATORS
    from fedattr.models import MODELS
    from fedattr.strategies import AGGREGATORS

    return {"datasets": sorted(DATASETS), "partitioners": list(PARTITIONERS), "models": sorted(MODELS),
            "evaluators": sorted(EVALUATORS), "attacks": sorted(ATTACKS), "aggregators": sorted(AGGREGATORS)}


def _check_registries(scenario: Any) -> None:
    """Unknown registry names and bad parameters fail here, before any process starts."""
    from fedattr.attacks import make_attack
    from fedattr.evaluators import make_evaluator

    reg = registries()
    checks = [("model", scenario.model, reg["models"]), ("data.dataset", scenario.data.dataset, reg["datasets"]),
              ("aggregation.strategy", scenario.aggregation.strategy, reg["aggregators"])]
    for field, value, allowed in checks:
        if value not in allowed:
            raise UserError(f"{field} = {value!r} is not allowed; choose one of {allowed}")
    for i, ev in enumerate(scenario.attribution.evaluators):
        try:
            make_evaluator(ev.name, **ev.params)
        except (ValueError, TypeError, UserError) as exc:
            raise UserError(f"attribution.evaluators[{i}] ({ev.name!r}): {exc}") from None
    for i, arm in enumerate(scenario.arms):
        try:
            make_attack(arm.attack, **arm.params)
        except (ValueError, TypeError, UserError) as exc:
            raise UserError(f"arms[{i}] ({arm.name!r}): {exc}") from None


def train_generator(scenario: Any, source: str = "public", partition_id: int | None = None,
                    force: bool = False) -> dict[str, Any]:
    """Train (or load from the cache) the VAE the scenario's latent attacker uses in its first seed.

    The generator settings come from the first ``latent`` arm (defaults otherwise) and the seed is
    the scenario's first seed, so the file written here is the one that arm's attacker loads.
    """
    from fedattr.attacks import make_attack
    from fedattr.attacks import train_generator as _train
    from fedattr.data import client_partition, load_splits

    if source not in ("public", "local"):
        raise UserError(f"source must be 'public' or 'local', got {source!r}")
    d, p = scenario.data, scenario.partition
    seed = scenario.seeds[0]
    splits = load_splits(d.dataset, d.data_dir, d.val_size, d.test_size, d.aux_size, d.pool_size, d.split_seed)
    if source == "public":
        if len(splits.y_aux) == 0:
            raise UserError("data.aux_size is 0: there is no public auxiliary split to train on")
        x = splits.x_aux
    else:
        pid = scenario.attacker_ids[0] if partition_id is None else partition_id
        if not 0 <= pid < scenario.num_clients:
            raise UserError(f"partition id {pid} is not in 0..{scenario.num_clients - 1}")
        x, _ = client_partition(splits, pid, p.kind, scenario.num_clients, alpha=p.alpha,
                                classes_per_client=p.classes_per_client, min_partition_size=p.min_partition_size,
                                seed=seed if p.seed is None else p.seed)
    arm = next((a for a in scenario.arms if a.attack == "latent"), None)
    attack = make_attack("latent", **(dict(arm.params) if arm is not None else {}))
    kwargs = dict(channels=splits.channels, side=splits.side, latent_dim=attack.latent_dim or None,
                  width=attack.generator_width, epochs=attack.generator_epochs,
                  batch_size=attack.generator_batch_size, lr=attack.generator_lr, beta=attack.generator_beta,
                  seed=seed, cache_dir=default_cache_dir(), source_tag=source)
    _, info = _train(x, **kwargs)
    if force and info.get("cached"):
        Path(info["path"]).unlink(missing_ok=True)
        _, info = _train(x, **kwargs)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in info.items() if k not in ("losses", "recon_losses")} | {
        "final_loss": info["losses"][-1] if info.get("losses") else None, "images": len(x)}


def load_results_summary(results_dir: str | Path) -> dict[str, Any]:
    """Per-job summaries of a results directory, keyed by job directory name."""
    out = {}
    for p in sorted(Path(results_dir).glob("jobs/*/summary.json")):
        out[p.parent.name] = read_json(p)
    return out


__all__ = ["run_scenario", "run_sweep", "registries", "train_generator", "execute_plan", "simulation_superlink",
           "load_results_summary"]
