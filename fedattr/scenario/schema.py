"""Scenario schema: one TOML file describes a whole experiment, validated with clear errors.

A scenario names the data, partition, model, training, attribution evaluators, aggregation,
runtime and the arms to compare (``honest``, ``attack`` and baselines) over a list of seeds.
This module holds the pydantic models only and imports no sibling module: everyone reads it,
it reads no one. Loading, overrides, grids, TOML output and the checks against the registries
live beside it in the ``fedattr.scenario`` package.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "DataSpec",
    "PartitionSpec",
    "TrainSpec",
    "EvaluatorSpec",
    "AttributionSpec",
    "ArmSpec",
    "AggregationSpec",
    "DetectorSpec",
    "RuntimeSpec",
    "SamplingSpec",
    "Scenario",
    "HONEST_ATTACK",
]

#: The ``attack`` value of an arm in which the attacker behaves.
HONEST_ATTACK = "honest"

# Arm names become directory names (``jobs/<arm>__s<seed>``): keep them path-safe and free of "__".
_ARM_NAME = r"^[A-Za-z0-9]+([_-][A-Za-z0-9]+)*$"
# The scenario name is one path segment of the results directory: ASCII letters, digits, '.', '_'
# and '-', never a leading '.' (so never '.' or '..') and never a separator.
_SCENARIO_NAME = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"


class _Spec(BaseModel):
    """Base of every scenario section: unknown keys are errors, types are not coerced."""

    # strict: a quoted "10" is not an int, true is not 1; ints are still accepted for floats.
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


def _unique(values: Sequence[Any], what: str) -> None:
    """Raise a pydantic error if ``values`` holds a duplicate."""
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise PydanticCustomError("duplicate", "{message}",
                                      {"message": f"duplicate {what} {v!r}: each must be unique"})
        seen.add(v)


def _cross(field: str, value: Any, message: str) -> PydanticCustomError:
    """A cross-field error that still names its dotted field (read back by the formatter)."""
    return PydanticCustomError("cross_field", "{message}",
                               {"field": field, "value": value, "message": message})


class DataSpec(_Spec):
    """[data]: which dataset and how it is split into validation, test, auxiliary and pool."""

    dataset: str = Field("mnist5k", description="dataset name: mnist5k (embedded, offline), mnist, "
                         "fashion_mnist, cifar10, svhn (checked against the registry at run time)")
    data_dir: str | None = Field(None, description="where downloaded datasets live; None = the "
                                 "project default (resolved by the data module)")
    val_size: int = Field(1000, ge=1, description="server validation split: the attribution "
                          "utility is computed on it")
    test_size: int = Field(1000, ge=1, description="server test split for the reported accuracy")
    aux_size: int = Field(500, ge=0, description="public auxiliary split reserved for generators "
                          "(never given to clients)")
    pool_size: int | None = Field(None, ge=1, description="examples partitioned among clients; "
                                  "None = everything left after the splits above")
    split_seed: int = Field(0, ge=0, description="seed of the val/test/aux/pool split (fixed across "
                            "run seeds so that arms and seeds share the splits)")


class PartitionSpec(_Spec):
    """[partition]: how the pool is divided among clients (label skew)."""

    kind: Literal["iid", "dirichlet", "pathological"] = Field(
        "dirichlet", description="iid, dirichlet over labels, or pathological k classes per client")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (dirichlet only); smaller "
                         "= more skewed label coverage")
    classes_per_client: int = Field(2, ge=1, description="classes per client (pathological only)")
    min_partition_size: int = Field(10, ge=0, description="resample the Dirichlet split until every "
                                    "client has at least this many examples")
    seed: int | None = Field(None, ge=0, description="partition seed; None = the run seed (each seed "
                             "draws its own split and its own training); an integer holds the split "
                             "fixed across seeds so that only training varies")
    withhold_classes: list[int] = Field(default_factory=list, description="classes no benign client "
                                        "gets (taken out of the pool before partitioning): a coverage "
                                        "gap by construction; works with iid, dirichlet, pathological")
    withhold_count: int = Field(0, ge=0, description="withhold this many classes drawn with the "
                                "partition seed (instead of withhold_classes)")
    attacker_share: float = Field(0.0, ge=0, le=1, description="share of each withheld class's pool "
                                  "images dealt to the attacker(s); the rest is unused")
    genuine_holder: int | None = Field(None, ge=0, description="a benign client id that really holds "
                                       "the withheld classes (real pool images): the control of a "
                                       "defence; None = nobody")
    genuine_holder_count: int = Field(0, ge=0, description="real withheld-class images the genuine "
                                      "holder gets, spread over the withheld classes; 0 = as many as "
                                      "an injection attack adds: round(genuine_holder_fraction x the "
                                      "first attacker's partition size)")
    genuine_holder_fraction: float = Field(0.25, gt=0, le=10, description="the attack's "
                                           "synthetic_fraction that genuine_holder_count = 0 matches")

    @field_validator("withhold_classes")
    @classmethod
    def _classes(cls, v: list[int]) -> list[int]:
        """Withheld classes are class indices, each named once."""
        _unique(v, "withheld class")
        if any(c < 0 for c in v):
            raise PydanticCustomError("class_index", "class indices must be >= 0")
        return v

    @model_validator(mode="after")
    def _one_way_to_withhold(self) -> "PartitionSpec":
        """withhold_classes and withhold_count are two ways to say the same thing: one at a time."""
        if self.withhold_classes and self.withhold_count:
            raise _cross("partition.withhold_count", self.withhold_count,
                         "give withhold_classes or withhold_count, not both")
        return self


class TrainSpec(_Spec):
    """[train]: local training of every client (the attacker's honest part included)."""

    local_epochs: int = Field(1, ge=1, description="local epochs per round")
    batch_size: int = Field(32, ge=1, description="local mini-batch size")
    lr: float = Field(0.05, gt=0, description="local SGD learning rate")
    momentum: float = Field(0.0, ge=0, lt=1, description="local SGD momentum")
    weight_decay: float = Field(0.0, ge=0, description="local SGD weight decay")


class EvaluatorSpec(_Spec):
    """One attribution evaluator, by registry name, with its parameters."""

    name: str = Field(min_length=1, description="evaluator registry name: individual, loo, "
                      "shapley, tmc, gtg, banzhaf, ... (checked against the registry at run time)")
    params: dict[str, Any] = Field(default_factory=dict, description="evaluator parameters "
                                   "(e.g. budget, seed, truncation)")


def _default_evaluators() -> list[EvaluatorSpec]:
    """Individual marginal utility, leave-one-out and exact Shapley."""
    return [EvaluatorSpec(name="individual"), EvaluatorSpec(name="loo"),
            EvaluatorSpec(name="shapley")]


class AttributionSpec(_Spec):
    """[attribution]: the per-round game and the evaluators that share one utility cache."""

    utility: Literal["accuracy", "neg_ce", "balanced_accuracy"] = Field(
        "accuracy", description="utility U of the round game v_t(S) on the validation split")
    val_subset: int | None = Field(None, ge=1, description="use only this many validation "
                                   "examples for the utility; None = the whole validation split")
    engine: str = Field(
        "auto", min_length=1, description="how coalition utilities are computed: stacked "
        "(K coalition models as one network), loop, vmap, naive (one model per coalition), "
        "auto (stacked on CPU for small sequential networks, vmap on CUDA, loop otherwise) "
        "(checked against fedattr.evaluators.ENGINES before start-up)")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for coalition evaluation "
                                    "(None = torch's default); 1 when several runs share the cores")
    evaluators: list[EvaluatorSpec] = Field(default_factory=_default_evaluators, min_length=1,
                                            description="evaluators run every round; names unique")

    @field_validator("evaluators")
    @classmethod
    def _unique_names(cls, v: list[EvaluatorSpec]) -> list[EvaluatorSpec]:
        """Evaluator names are keys of the results: they must be unique."""
        _unique([e.name for e in v], "evaluator name")
        return v


class ArmSpec(_Spec):
    """One arm: what the attacker clients do; every arm runs on the same seeds and partitions."""

    name: str = Field(description="arm name: letters and digits, single '-' or '_' between them "
                      "(used in directory names); unique")
    attack: str = Field(HONEST_ATTACK, min_length=1, description="attack registry name: honest "
                        "(the attacker behaves), latent, noise_floor, random_real, targeted_real, "
                        "... (checked against the registry at run time)")
    params: dict[str, Any] = Field(default_factory=dict, description="attack parameters, e.g. "
                                   "synthetic_fraction (synthetic batch size as a share of the "
                                   "attacker's local data)")
    start_round: int = Field(1, ge=1, description="first round in which the attack is active; "
                             "the attacker behaves before it")
    counterfactual: bool = Field(True, description="also score the attacker's honest update in "
                                 "the same round game (counterfactual inflation); ignored for "
                                 "honest arms")

    @field_validator("name")
    @classmethod
    def _path_safe(cls, v: str) -> str:
        """Arm names become directory names: letters/digits with single '-' or '_' separators."""
        if not re.fullmatch(_ARM_NAME, v):
            raise PydanticCustomError("arm_name", "must be letters and digits with single '-' or "
                                      "'_' between them (it names a directory)")
        return v


def _default_arms() -> list[ArmSpec]:
    """The honest arm and the latent-optimisation attack arm."""
    return [ArmSpec(name="honest", attack=HONEST_ATTACK), ArmSpec(name="attack", attack="latent")]


class AggregationSpec(_Spec):
    """[aggregation]: the Flower strategy that aggregates updates (attribution uses its rule)."""

    strategy: str = Field("fedavg", min_length=1, description="aggregator registry name: fedavg, "
                          "fedmedian, fedtrimmedavg, krum, multikrum, bulyan (checked against the "
                          "registry before start-up)")
    params: dict[str, Any] = Field(default_factory=dict, description="strategy parameters, e.g. "
                                   "beta (fedtrimmedavg), num_malicious_nodes (krum, multikrum, "
                                   "bulyan)")
    max_weight_ratio: float | None = Field(4.0, ge=1, description="a reply's claimed num-examples "
                                           "is capped at this many times the round's median claim "
                                           "before aggregation and attribution; None = no cap")


class DetectorSpec(_Spec):
    """One per-round detector (fedattr.defenses), by registry name."""

    name: str = Field(min_length=1, description="detector registry name: krum, multikrum, norm, "
                      "cosine_median, foolsgold, fltrust, flame (checked before start-up)")
    params: dict[str, Any] = Field(default_factory=dict, description="detector parameters")
    mode: Literal["observe", "filter"] = Field("observe", description="observe: record scores and "
                                               "flags only; filter: drop flagged clients before "
                                               "aggregation and attribution")


class RuntimeSpec(_Spec):
    """[runtime]: where and how the Flower apps run."""

    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="torch device of server and "
                                                   "clients; auto = cuda when available")
    client_cpus: float = Field(1.0, gt=0, description="CPUs reserved per simulated client")
    client_gpus: float = Field(0.0, ge=0, description="GPU share reserved per simulated client")
    backend: Literal["simulation"] = Field("simulation", description="Flower runtime (simulation "
                                           "engine; `fedattr deploy local` runs the same scenario "
                                           "as separate processes)")
    min_clients: int | None = Field(None, ge=1, description="a round needs at least this many "
                                    "valid replies, else the job is marked failed; None = all "
                                    "num_clients")
    round_timeout_s: float | None = Field(None, gt=0, description="seconds a round waits for "
                                          "replies before going on with those that arrived; "
                                          "None = wait for every node")
    ray_address: str | None = Field(None, pattern=r"^(auto|[A-Za-z0-9_.\-]+:[0-9]{1,5})$",
                                    description="address of a running Ray cluster (`ray start "
                                    "--head`; HOST:PORT or auto) that the simulation's ClientApp "
                                    "actors join instead of a private Ray instance; None = private "
                                    "(docs/scaling.md)")


class SamplingSpec(_Spec):
    """[sampling]: which clients train each round, by Flower's own sampling (cross-device).

    The keys are the wrapped Flower strategy's (``FedAvg(fraction_train=..., min_train_nodes=...,
    min_available_nodes=...)``): a round samples max(int(fraction_train x connected nodes),
    min_train_nodes) clients. The sample is a function of the run seed and the round over the
    partition ids (reproducible although Flower's node ids change from run to run).
    """

    fraction_train: float = Field(1.0, gt=0, le=1, description="share of the clients sampled to "
                                  "train each round; 1 = every client (no sampling)")
    min_train_nodes: int | None = Field(None, ge=1, description="at least this many clients train "
                                        "each round; None = Flower's default (2)")
    min_available_nodes: int | None = Field(None, ge=1, description="nodes that must be connected "
                                            "before a round samples; None = num_clients")

    @property
    def active(self) -> bool:
        """Whether rounds sample (fewer than every client trains)."""
        return self.fraction_train < 1

    def sample_size(self, num_clients: int) -> int:
        """Clients a round samples when all ``num_clients`` nodes are connected (Flower's rule)."""
        if not self.active:
            return int(num_clients)
        return min(int(num_clients), max(int(num_clients * self.fraction_train), self.min_train_nodes or 2))


class Scenario(_Spec):
    """A whole experiment: arms compared over seeds on identical data, partitions and training."""

    name: str = Field("demo", min_length=1, max_length=100, description="scenario name: letters, "
                      "digits, '.', '_' and '-', not starting with '.' (it names the results "
                      "directory under output_dir)")
    description: str = Field("", description="free text shown in the report")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="run seeds; "
                             "every arm runs once per seed; non-empty, unique, >= 0")
    num_clients: int = Field(10, ge=2, le=10000, description="number of clients (partitions)")
    attacker_ids: list[int] = Field(default_factory=lambda: [0], description="partition ids of the "
                                    "attacking clients; each in 0..num_clients-1, unique; may be "
                                    "empty")
    rounds: int = Field(5, ge=1, description="federated rounds per run")
    model: str = Field("cnn", min_length=1, description="model registry name: cnn, vgg11, "
                       "resnet18, wrn16_4, ... (checked against the registry at run time)")
    data: DataSpec = Field(default_factory=DataSpec, description="dataset and splits")
    partition: PartitionSpec = Field(default_factory=PartitionSpec, description="client partitions")
    train: TrainSpec = Field(default_factory=TrainSpec, description="local training")
    attribution: AttributionSpec = Field(default_factory=AttributionSpec,
                                         description="round game and evaluators")
    arms: list[ArmSpec] = Field(default_factory=_default_arms, min_length=1,
                                description="arms to compare; names unique")
    aggregation: AggregationSpec = Field(default_factory=AggregationSpec,
                                         description="server aggregation strategy")
    detectors: list[DetectorSpec] = Field(default_factory=list, description="per-round detectors; "
                                          "names unique")
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec, description="runtime and resources")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="client sampling per "
                                   "round (default: every client trains every round)")
    output_dir: str = Field("results", min_length=1, description="where result directories are "
                            "created; a relative path is relative to the current working directory")

    @field_validator("name")
    @classmethod
    def _safe_slug(cls, v: str) -> str:
        """The name becomes one directory under output_dir: no separator, no '..', no quotes."""
        if not re.fullmatch(_SCENARIO_NAME, v):
            raise PydanticCustomError("scenario_name", "must be letters, digits, '.', '_' or '-' "
                                      "and not start with '.' (it names a directory under "
                                      "output_dir)")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds_ok(cls, v: list[int]) -> list[int]:
        """Seeds are unique and fit numpy's 32-bit seed range."""
        for s in v:
            if not 0 <= s < 2**32:
                raise PydanticCustomError("seed_range", "seed {value} must be in 0..2**32-1",
                                          {"value": s})
        _unique(v, "seed")
        return v

    @field_validator("detectors")
    @classmethod
    def _detector_names_unique(cls, v: list[DetectorSpec]) -> list[DetectorSpec]:
        """Detector names are keys of the results: they must be unique."""
        _unique([d.name for d in v], "detector name")
        return v

    @field_validator("arms")
    @classmethod
    def _arm_names_unique(cls, v: list[ArmSpec]) -> list[ArmSpec]:
        """Arm names are keys of the results: they must be unique."""
        _unique([a.name for a in v], "arm name")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> Scenario:
        """Checks that relate fields to each other (ids vs num_clients, rounds, splits)."""
        n = self.num_clients
        for i in self.attacker_ids:
            if not 0 <= i < n:
                raise _cross("attacker_ids", self.attacker_ids,
                             f"attacker id {i} is out of range: each must be in 0..{n - 1} "
                             f"(num_clients = {n})")
        if len(set(self.attacker_ids)) != len(self.attacker_ids):
            raise _cross("attacker_ids", self.attacker_ids, "attacker ids must be unique")
        holder = self.partition.genuine_holder
        if holder is not None:
            if holder >= n or holder in self.attacker_ids:
                raise _cross("partition.genuine_holder", holder,
                             f"must be a benign client id: in 0..{n - 1} and not an attacker id")
            if not (self.partition.withhold_classes or self.partition.withhold_count):
                raise _cross("partition.genuine_holder", holder,
                             "needs withheld classes (partition.withhold_classes) for it to hold")
            if not self.partition.genuine_holder_count and not self.attacker_ids:
                raise _cross("partition.genuine_holder_count", 0,
                             "0 means as many as the attacker injects and needs an attacker id; give a count")
        for k, arm in enumerate(self.arms):
            if arm.start_round > self.rounds:
                raise _cross(f"arms.{k}.start_round", arm.start_round,
                             f"start_round must be <= rounds ({self.rounds})")
        mc = self.runtime.min_clients
        if mc is not None and mc > n:
            raise _cross("runtime.min_clients", mc, f"must be <= num_clients ({n})")
        vs = self.attribution.val_subset
        if vs is not None and vs > self.data.val_size:
            raise _cross("attribution.val_subset", vs,
                         f"must be <= data.val_size ({self.data.val_size})")
        return self

    def honest_arm(self) -> ArmSpec | None:
        """The first arm whose attack is ``honest`` (the reference of paired inflation), if any."""
        return next((a for a in self.arms if a.attack == HONEST_ATTACK), None)
