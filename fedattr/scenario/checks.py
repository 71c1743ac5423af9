"""The one place a scenario is checked before any process starts.

Names against the registries (datasets, partitioners, models, engines, utilities, evaluators,
attacks, aggregators, detectors), every component's parameters (types from the constructors'
annotations, values through the constructors and a dry fit on a small real round game, class
indices against the dataset), evaluator limits, this machine's resources, the data and its
partitions, and the results directory. Each problem is one line naming the scenario field, and
all of them are one :class:`~fedattr.core.errors.UserError` (exit status 2), instead of a failure
inside Flower 30-80 s later. The schema imports no sibling, so the allowed values are read from
the registries here, never copied.
"""

from __future__ import annotations

import inspect
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

from fedattr.core.errors import UserError
from fedattr.core.registry import did_you_mean
from fedattr.scenario.schema import Scenario

__all__ = ["registries", "check_evaluator", "check_components", "check_scenario", "sampling_problems",
           "check_resources", "check_data", "check_out_dir"]


def registries() -> dict[str, list[str]]:
    """Every registry name a scenario may use, by kind."""
    from fedattr.defenses import register_scoring_rules

    register_scoring_rules()  # the robust-scoring evaluators join the evaluator registry
    from fedattr.attacks import ATTACKS
    from fedattr.defenses import DETECTORS
    from fedattr.evaluators import ENGINES, EVALUATORS, METRICS
    from fedattr.learning.data import DATASETS, PARTITIONERS
    from fedattr.learning.models import MODELS
    from fedattr.strategies.aggregators import AGGREGATORS

    return {"datasets": sorted(DATASETS), "partitioners": list(PARTITIONERS), "models": sorted(MODELS),
            "engines": list(ENGINES), "utilities": list(METRICS), "evaluators": sorted(EVALUATORS),
            "attacks": sorted(ATTACKS), "aggregators": list(AGGREGATORS), "detectors": sorted(DETECTORS)}


def _unknown(field: str, kind: str, name: str, known: list[str]) -> str:
    return f"{field} = {name!r}: unknown {kind} (known: {', '.join(known)}){did_you_mean(name, known)}"


# --------------------------------------------------------------------------- parameter types

_SIMPLE = {int: "int", float: "float", bool: "bool", str: "str", type(None): "None"}


def _accepts(hint: Any, value: Any) -> bool | None:
    """Whether ``value`` fits a simple annotation (None: the annotation is not a simple one)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        verdicts = [_accepts(a, value) for a in typing.get_args(hint)]
        return None if None in verdicts else any(verdicts)
    if typing.get_origin(hint) is Literal:
        return value in typing.get_args(hint)
    if hint not in _SIMPLE:
        return None
    if isinstance(value, bool):  # a bool is an int to Python, never to a scenario
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)


def _hint_text(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(_hint_text(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    return _SIMPLE.get(hint, getattr(hint, "__name__", str(hint)))


def param_type_problems(cls: type, params: dict[str, Any], field: str) -> list[str]:
    """Parameters whose value does not fit the simple type (number, bool, str, None, literal)
    their constructor declares; other annotations are left to the constructor and the dry fit."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check against
        return []
    problems = []
    for key, value in params.items():
        hint = hints.get(key)
        if hint is not None and _accepts(hint, value) is False:
            problems.append(f"{field}.params.{key} = {value!r}: must be {_hint_text(hint)}")
    return problems


# --------------------------------------------------------------------------- evaluators

def _dry_game(n: int):
    """A real round game on a tiny linear model: every evaluator, geometric or surrogate, can fit it."""
    import torch
    from torch import nn

    from fedattr.evaluators import ModelUtility, RoundGame

    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.rand(12, 1, 2, 2, generator=gen)
    y = torch.arange(12) % 3
    utility = ModelUtility(model, x, y, metric="neg_ce", num_classes=3)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    states = [{k: v + 0.1 * (i + 1) * torch.randn(v.shape, generator=gen) for k, v in base.items()}
              for i in range(n)]
    return RoundGame.from_state_dicts(utility, base, states, weights=[10.0 + i for i in range(n)])


def check_evaluator(name: str, params: dict[str, Any], num_clients: int) -> str | None:
    """Why evaluator ``name`` with ``params`` cannot run, or None.

    Construction checks names and stopping rules; a dry fit on a small real round game catches
    parameters of the wrong type or range, which constructors only store.
    """
    from fedattr.evaluators import make_evaluator

    try:
        make_evaluator(name, **params).fit(_dry_game(max(2, min(int(num_clients), 4))), seed=0)
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad parameter, reported in one line
        return f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
    return None


def _evaluator_problems(scenario: Scenario, known: list[str]) -> list[str]:
    """Names, parameter types, a dry fit and the 2^n limit of exact evaluators."""
    from fedattr.evaluators import EVALUATORS, make_evaluator

    n = scenario.num_clients
    problems = []
    for i, ev in enumerate(scenario.attribution.evaluators):
        field = f"attribution.evaluators.{i}"
        if ev.name not in known:
            problems.append(_unknown(f"{field}.name", "evaluator", ev.name, known))
            continue
        typed = param_type_problems(EVALUATORS[ev.name], dict(ev.params), field)
        if typed:
            problems.extend(f"{p} ({ev.name})" for p in typed)
            continue
        why = check_evaluator(ev.name, dict(ev.params), n)
        if why is not None:
            problems.append(f"{field} ({ev.name}): {why}")
            continue
        evaluator = make_evaluator(ev.name, **ev.params)
        limit = getattr(evaluator, "max_players", None)
        if limit is not None and getattr(evaluator, "method", "exact") == "exact" and n > limit:
            problems.append(
                f"{field} ({ev.name}): enumerates all 2^n coalitions and accepts at most {limit} "
                f"clients; the scenario has num_clients = {n}. Use a Monte-Carlo evaluator (tmc, "
                f"gtg, banzhaf_msr) or fewer clients")
    return problems


# --------------------------------------------------------------------------- attacks, data

def _num_classes(dataset: str) -> int | None:
    """How many classes ``dataset`` has, read from the data registry without loading it."""
    from fedattr.learning.data import DATASETS

    entry = DATASETS.get(dataset)
    count = getattr(entry, "num_classes", None)
    if count is None and isinstance(entry, tuple):
        count = entry[-1]
    return int(count) if isinstance(count, int) else None


def _attack_problems(scenario: Scenario, known: list[str], num_classes: int | None) -> list[str]:
    """Names, parameters (through each attack's constructor) and class indices of every arm."""
    from fedattr.attacks import make_attack

    problems = []
    for i, arm in enumerate(scenario.arms):
        if arm.attack not in known:
            problems.append(_unknown(f"arms.{i}.attack", "attack", arm.attack, known))
            continue
        try:
            attack = make_attack(arm.attack, **arm.params)
            if num_classes is not None:
                attack.check_classes(num_classes)
        except Exception as exc:  # noqa: BLE001 - a constructor's refusal is a bad parameter
            problems.append(f"arms.{i} ({arm.name}): {exc}")
    return problems


def _partition_problems(scenario: Scenario, num_classes: int | None) -> list[str]:
    """Withheld classes against the dataset's classes."""
    p = scenario.partition
    if num_classes is None:
        return []
    bad = [c for c in p.withhold_classes if c >= num_classes]
    problems = []
    if bad:
        problems.append(f"partition.withhold_classes = {p.withhold_classes}: {bad} are not classes of "
                        f"{scenario.data.dataset} (0..{num_classes - 1})")
    if p.withhold_count >= num_classes:
        problems.append(f"partition.withhold_count = {p.withhold_count}: must be < the "
                        f"{num_classes} classes of {scenario.data.dataset}")
    return problems


#: evaluators whose surrogate game is built from FedAvg's coalition coefficients
FEDAVG_ONLY_EVALUATORS = frozenset({"surrogate_shapley", "logit_surrogate_shapley", "cv_shapley"})


def check_components(scenario: Scenario) -> list[str]:
    """Every problem with the components ``scenario`` names and their parameters, one line each."""
    from fedattr.defenses import validate_detector
    from fedattr.strategies.aggregators import check_aggregator

    reg = registries()
    problems = []
    named = [("data.dataset", "dataset", scenario.data.dataset, "datasets"),
             ("partition.kind", "partitioner", scenario.partition.kind, "partitioners"),
             ("model", "model", scenario.model, "models"),
             ("attribution.engine", "engine", scenario.attribution.engine, "engines"),
             ("attribution.utility", "utility", scenario.attribution.utility, "utilities")]
    for field, kind, name, key in named:
        if name not in reg[key]:
            problems.append(_unknown(field, kind, name, reg[key]))
    num_classes = _num_classes(scenario.data.dataset)
    problems += _partition_problems(scenario, num_classes)
    problems += _evaluator_problems(scenario, reg["evaluators"])
    problems += _attack_problems(scenario, reg["attacks"], num_classes)
    n = scenario.num_clients
    agg = scenario.aggregation
    if (why := check_aggregator(agg.strategy, dict(agg.params), n)) is not None:
        problems.append(f"aggregation: {why}")
    if agg.strategy != "fedavg":
        # Surrogates expand FedAvg's coefficients: another rule's round game has none to expand.
        for i, ev in enumerate(scenario.attribution.evaluators):
            if ev.name in FEDAVG_ONLY_EVALUATORS:
                problems.append(f"attribution.evaluators.{i} ({ev.name}): needs aggregation.strategy = "
                                f"'fedavg' (it expands FedAvg's coefficients), got {agg.strategy!r}")
    problems += sampling_problems(scenario)
    problems += _server_data_problems(scenario)
    for i, det in enumerate(scenario.detectors):
        if det.name not in reg["detectors"]:
            problems.append(_unknown(f"detectors.{i}.name", "detector", det.name, reg["detectors"]))
            continue
        try:
            validate_detector(det.name, dict(det.params), n)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"detectors.{i} ({det.name}): {exc}")
    return problems


def _server_data_problems(scenario: Scenario) -> list[str]:
    """Components that test updates against the server's public split need one."""
    from fedattr.defenses import DETECTORS
    from fedattr.evaluators import EVALUATORS

    def needs(cls: type | None) -> bool:
        return bool(getattr(cls, "needs_server_data", False))

    problems = []
    public = scenario.data.aux_size > 0
    for i, det in enumerate(scenario.detectors):
        if needs(DETECTORS.get(det.name)) and not public:
            problems.append(f"detectors.{i} ({det.name}): needs the public split the server trains the "
                            f"generator on: set data.aux_size > 0")
    for i, ev in enumerate(scenario.attribution.evaluators):
        if needs(EVALUATORS.get(ev.name)) and not public:
            problems.append(f"attribution.evaluators.{i} ({ev.name}): needs the public split the server "
                            f"trains the generator on: set data.aux_size > 0")
    return problems


def sampling_problems(scenario: Scenario) -> list[str]:
    """[sampling] against num_clients, runtime.min_clients and the aggregator's needs."""
    from fedattr.strategies.aggregators import check_aggregator

    s, n = scenario.sampling, scenario.num_clients
    problems = [f"sampling.{key} = {value}: must be <= num_clients ({n})"
                for key, value in (("min_train_nodes", s.min_train_nodes), ("min_available_nodes", s.min_available_nodes))
                if value is not None and value > n]
    if problems or not s.active:
        return problems
    k = s.sample_size(n)
    if k < 2:
        problems.append(f"sampling.fraction_train = {s.fraction_train:g}: samples {k} of {n} clients a round; a "
                        f"round game needs at least 2 (raise fraction_train or set min_train_nodes)")
    mc = scenario.runtime.min_clients
    if mc is not None and mc > k:
        problems.append(f"runtime.min_clients = {mc}: a round samples only {k} clients "
                        f"(sampling.fraction_train = {s.fraction_train:g} of {n}); set it <= {k}")
    agg = scenario.aggregation
    if k >= 2 and check_aggregator(agg.strategy, dict(agg.params), n) is None and \
            (why := check_aggregator(agg.strategy, dict(agg.params), k)) is not None:
        problems.append(f"aggregation with {k} sampled clients a round: {why}")
    return problems


# --------------------------------------------------------------------------- the whole scenario

def check_scenario(scenario: Scenario, *, resources: bool = True, data: bool = True) -> None:
    """Every check, in order: components and parameters, resources, data.

    ``resources=False`` skips comparing the reserved CPUs and GPUs with this machine (a scenario
    checked on one machine and run on another); ``data=False`` skips loading the dataset and
    cutting the partitions (the slowest check).
    """
    problems = check_components(scenario)
    if problems:
        raise UserError("invalid scenario components:\n" + "\n".join(f"  - {p}" for p in problems))
    if resources:
        check_resources(scenario)
    if data:
        check_data(scenario)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def check_resources(scenario: Scenario, cpu_count: int | None = None, cuda: bool | None = None) -> None:
    """CPUs and GPUs the scenario reserves against what this machine has."""
    rt = scenario.runtime
    cpus = (os.cpu_count() or 1) if cpu_count is None else cpu_count
    if rt.client_cpus > cpus:
        raise UserError(f"runtime.client_cpus = {rt.client_cpus:g} but this machine has {cpus} CPU(s): no client "
                        f"could be scheduled; set runtime.client_cpus <= {cpus}")
    wants_gpu = rt.client_gpus > 0 or rt.device == "cuda"
    if wants_gpu and not (_cuda_available() if cuda is None else cuda):
        what = f"runtime.client_gpus = {rt.client_gpus:g}" if rt.client_gpus > 0 else "runtime.device = 'cuda'"
        raise UserError(f"{what} but torch sees no CUDA GPU on this machine; use runtime.device = 'cpu' (or "
                        "'auto') and runtime.client_gpus = 0")


def check_data(scenario: Scenario) -> None:
    """The dataset is there, its splits fit, and every seed's partition can be cut.

    Loads the dataset (offline and missing: the data module's UserError naming the directory)
    and cuts the client partitions of every distinct partition seed, so that a split that cannot
    meet ``partition.min_partition_size`` fails here and not inside a client.
    """
    from fedattr.learning.task import Job
    from fedattr.scenario.plan import job_spec

    arm = scenario.arms[0]
    seeds = {scenario.partition.seed if scenario.partition.seed is not None else s: s for s in scenario.seeds}
    for seed in seeds.values():
        job = Job(job_spec(scenario, arm, seed, job_id="preflight"), data_dir=scenario.data.data_dir)
        sizes = [len(job.partition(pid)[1]) for pid in range(scenario.num_clients)]
        empty = [pid for pid, n in enumerate(sizes) if n == 0]
        if empty:
            raise UserError(f"seed {seed}: client partition(s) {empty} get no examples (pool of "
                            f"{len(job.splits().y_pool)} over {scenario.num_clients} clients, partition "
                            f"{scenario.partition.kind}); use more data (data.pool_size) or fewer clients")


def check_out_dir(path: str | Path) -> Path:
    """A results directory that can be created and written; return it resolved (and created).

    A file in its place, a file among its parents, or a directory that cannot be created or
    written is one UserError naming the path.
    """
    out = Path(path).expanduser()
    try:
        out = out.resolve()
    except OSError as exc:
        raise UserError(f"--out {path}: {exc.strerror or exc}") from None
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory; choose a directory")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {out}: {parent} is a file, not a directory")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".fedattr-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        import errno

        from fedattr.core.errors import NoSpaceError

        if exc.errno == errno.ENOSPC:  # a full disk is a failed run (exit 1), not bad input
            raise NoSpaceError(f"no space left on {out}: free some space, then run again") from None
        raise UserError(f"--out {out}: cannot create or write the results directory "
                        f"({exc.strerror or exc})") from None
    return out
