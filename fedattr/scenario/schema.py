"""Scenario schema: one TOML file describes a whole experiment, validated with clear errors.

A scenario names the data, partition, model, training, attribution evaluators, aggregation,
runtime and the arms to compare (``honest``, ``attack`` and baselines) over a list of seeds.
This module imports no sibling module: everyone reads it, it reads no one.

Overrides (``--set key=value``) use dotted keys. A segment after a list field selects elements:
an index (``arms.1.params.synthetic_fraction=0.5``), an element's ``name``
(``arms.attack.start_round=2``, ``attribution.evaluators.shapley.params.budget=100``), or ``*``
for every element. The reserved prefix ``attack.`` sets a key inside ``params`` of the arms whose
``attack`` is not ``"honest"`` (``attack.synthetic_fraction=0.1``), which is what a sweep over an
attack hyper-parameter wants: of those arms, the ones whose params already hold the key (so a
baseline without that parameter is left alone), or all of them when none holds it. Values are parsed as TOML values (``0.1``, ``[0,1,2]``,
``{steps=50}``, ``true``); anything that is not valid TOML is taken as a plain string.
"""

from __future__ import annotations

import datetime
import difflib
import itertools
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "ScenarioError",
    "DataSpec",
    "PartitionSpec",
    "TrainSpec",
    "EvaluatorSpec",
    "AttributionSpec",
    "ArmSpec",
    "AggregationSpec",
    "DetectorSpec",
    "RuntimeSpec",
    "Scenario",
    "HONEST_ATTACK",
    "load_scenario",
    "scenario_from_dict",
    "dump_resolved",
    "to_toml",
    "apply_overrides",
    "parse_overrides",
    "parse_grid",
    "expand_grid",
    "schema_text",
]

#: The ``attack`` value of an arm in which the attacker behaves.
HONEST_ATTACK = "honest"

# Arm names become directory names (``jobs/<arm>__s<seed>``): keep them path-safe and free of "__".
_ARM_NAME = r"^[A-Za-z0-9]+([_-][A-Za-z0-9]+)*$"


class ScenarioError(Exception):
    """A scenario (file, override or grid) is invalid; the message names field, value and rule."""


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


class Scenario(_Spec):
    """A whole experiment: arms compared over seeds on identical data, partitions and training."""

    name: str = Field("demo", min_length=1, description="scenario name (used in result paths)")
    description: str = Field("", description="free text shown in the report")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="run seeds; "
                             "every arm runs once per seed; non-empty, unique, >= 0")
    num_clients: int = Field(10, ge=2, le=256, description="number of clients (partitions)")
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
    output_dir: str = Field("results", min_length=1, description="where result directories are "
                            "created; a relative path is relative to the current working directory")

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

    def to_toml(self) -> str:
        """This scenario, all defaults filled, as TOML text that ``load_scenario`` reads back."""
        return to_toml(self)

    def honest_arm(self) -> ArmSpec | None:
        """The first arm whose attack is ``honest`` (the reference of paired inflation), if any."""
        return next((a for a in self.arms if a.attack == HONEST_ATTACK), None)


# --------------------------------------------------------------------------- error formatting

def _short(value: Any, limit: int = 80) -> str:
    """A one-line repr of a value, cut to ``limit`` characters."""
    text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model class that owns the last segment of ``loc`` (None inside free dicts)."""
    cls: type[BaseModel] | None = Scenario
    for seg in loc[:-1]:
        if cls is None:
            return None
        if isinstance(seg, int):
            continue  # list index: the element model was already selected by the list field
        info = cls.model_fields.get(seg)
        cls = _inner_model(info.annotation) if info else None
    return cls


def _format_error(err: Mapping[str, Any]) -> str:
    """One line for one pydantic error: ``field = value: what is allowed``."""
    ctx = err.get("ctx") or {}
    if err["type"] == "cross_field":
        return f"{ctx['field']} = {_short(ctx['value'])}: {ctx['message']}"
    loc = [s for s in err["loc"] if not (isinstance(s, str) and s.startswith("function-"))]
    field = ".".join(str(s) for s in loc) or "(scenario)"
    if err["type"] == "extra_forbidden":
        owner = _model_at(loc)
        allowed = sorted(owner.model_fields) if owner else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return (f"{field} = {_short(err['input'])}: unknown key (allowed: "
                f"{', '.join(allowed)}){hint}")
    if err["type"] == "missing":
        return f"{field}: required, but not given"
    return f"{field} = {_short(err['input'])}: {err['msg']}"


def _as_scenario_error(exc: ValidationError, where: str) -> ScenarioError:
    """Turn a pydantic ValidationError into one readable ScenarioError."""
    lines = [_format_error(e) for e in exc.errors()]
    head = f"invalid scenario {where}:" if where else "invalid scenario:"
    return ScenarioError("\n".join([head] + [f"  - {line}" for line in lines]))


# --------------------------------------------------------------------------- loading

def scenario_from_dict(data: Mapping[str, Any], *, where: str = "") -> Scenario:
    """Validate a plain dict (as read from TOML or scenario.json) into a Scenario.

    Raises ScenarioError naming every offending field, its value and what is allowed.
    """
    if not isinstance(data, Mapping):
        raise ScenarioError(f"invalid scenario {where}: expected a table, got {_short(data)}")
    try:
        return Scenario.model_validate(dict(data))
    except ValidationError as exc:
        raise _as_scenario_error(exc, where) from None


def _read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning every failure into a ScenarioError."""
    if not path.exists():
        raise ScenarioError(f"scenario file not found: {path}")
    if not path.is_file():
        raise ScenarioError(f"scenario path is not a file: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: TOML syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read scenario file {path}: {exc}") from None


def load_scenario(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Read a TOML scenario, apply ``key=value`` overrides (dotted keys) and validate it.

    Every failure (missing file, TOML syntax, unknown key, wrong type, out-of-range value, bad
    override) raises ScenarioError with one readable message.
    """
    path = Path(path)
    raw = _read_toml(path)
    pairs = parse_overrides(overrides)
    data = apply_overrides(raw, pairs)
    suffix = f" (with --set {', '.join(k for k, _ in pairs)})" if pairs else ""
    return scenario_from_dict(data, where=f"{path}{suffix}")


def dump_resolved(scenario: Scenario) -> dict[str, Any]:
    """The scenario as a JSON-ready dict with every default filled in (what scenario.json holds)."""
    return scenario.model_dump(mode="json")


# --------------------------------------------------------------------------- overrides

def _parse_value(text: str) -> Any:
    """Parse an override value as a TOML value; fall back to the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(overrides: Sequence[str] | Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Turn ``["train.lr=0.1", ...]`` (or a mapping of already-typed values) into (key, value).

    String values are parsed as TOML values, falling back to strings.
    """
    if isinstance(overrides, Mapping):
        return [(str(k), _parse_value(v) if isinstance(v, str) else v)
                for k, v in overrides.items()]
    if isinstance(overrides, str):  # a lone string is a common slip: treat it as one override
        overrides = [overrides]
    pairs = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ScenarioError(f"override {item!r}: expected key=value, e.g. train.lr=0.1")
        pairs.append((key, _parse_value(value.strip())))
    return pairs


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` -> X; anything else unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The model class of a field typed ``Model``, ``Model | None`` or ``list[Model]``."""
    ann = _unwrap_optional(annotation)
    if typing.get_origin(ann) is list:
        ann = typing.get_args(ann)[0]
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _field_default(cls: type[BaseModel] | None, key: str) -> Any:
    """JSON-ready default of a field that is missing from the raw data (None if unknown)."""
    info = cls.model_fields.get(key) if cls else None
    if info is None or info.is_required():
        return None
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return value


def _select(items: list[Any], seg: str, trail: str) -> list[int]:
    """Indices of list elements chosen by an index, an element name, or ``*``."""
    if seg == "*":
        return list(range(len(items)))
    if re.fullmatch(r"\d+", seg):
        i = int(seg)
        if i > len(items):  # i == len appends a new element
            raise ScenarioError(f"override {trail}: index {i} is out of range (have {len(items)} "
                                f"elements; use {len(items)} to append one)")
        if i == len(items):
            items.append({})
        return [i]
    named = [i for i, it in enumerate(items) if isinstance(it, Mapping) and it.get("name") == seg]
    if not named:
        names = [str(it.get("name")) for it in items if isinstance(it, Mapping)]
        raise ScenarioError(f"override {trail}: no element named {seg!r} (have: "
                            f"{', '.join(names) or 'none'}; or use an index or *)")
    return named


def _set_path(node: Any, segs: list[str], value: Any, cls: type[BaseModel] | None,
              trail: str) -> None:
    """Set ``value`` at the dotted path ``segs`` inside ``node``, creating tables as needed.

    ``cls`` is the model that describes ``node`` (None inside free dicts such as params); it is
    used to materialise defaults, so that ``arms.attack...`` works when the file omits [[arms]].
    """
    seg, rest = segs[0], segs[1:]
    if isinstance(node, list):
        for i in _select(node, seg, trail):
            if rest:
                _set_path(node[i], rest, value, cls, trail)
            else:
                node[i] = value
        return
    if not isinstance(node, dict):
        raise ScenarioError(f"override {trail}: cannot set {seg!r} inside a non-table value "
                            f"{_short(node)}")
    if not rest:
        node[seg] = value
        return
    info = cls.model_fields.get(seg) if cls else None
    if seg not in node:
        default = _field_default(cls, seg)
        node[seg] = default if isinstance(default, (dict, list)) else {}
    _set_path(node[seg], rest, value, _inner_model(info.annotation) if info else None, trail)


def _has_path(node: Any, segs: Sequence[str]) -> bool:
    """True when the nested tables in ``node`` hold the dotted path ``segs``."""
    for seg in segs:
        if not isinstance(node, Mapping) or seg not in node:
            return False
        node = node[seg]
    return True


def _copy(data: Any) -> Any:
    """Deep copy of plain TOML/JSON data."""
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data


def apply_overrides(data: Mapping[str, Any],
                    overrides: Sequence[str] | Mapping[str, Any] | Sequence[tuple[str, Any]]
                    ) -> dict[str, Any]:
    """A copy of raw scenario data with dotted-key overrides applied (see the module docstring).

    ``overrides`` is a list of ``key=value`` strings, a mapping, or parsed (key, value) pairs.
    Raises ScenarioError for a key that cannot be navigated (the values are validated later).
    """
    if overrides and not isinstance(overrides, (Mapping, str)) and all(
            isinstance(o, tuple) for o in overrides):
        pairs = list(overrides)
    else:
        pairs = parse_overrides(overrides)  # type: ignore[arg-type]
    out = _copy(dict(data))
    for key, value in pairs:
        segs = key.split(".")
        if any(not s for s in segs):
            raise ScenarioError(f"override {key!r}: empty segment in dotted key")
        if segs[0] == "attack":
            if len(segs) < 2:
                raise ScenarioError(f"override {key!r}: use attack.<param>=value to set a "
                                    f"parameter of every non-honest arm")
            if "arms" not in out:
                out["arms"] = _field_default(Scenario, "arms")
            arms = out["arms"] if isinstance(out["arms"], list) else []
            hits = [a for a in arms if isinstance(a, dict)
                    and a.get("attack", HONEST_ATTACK) != HONEST_ATTACK]
            if not hits:
                raise ScenarioError(f"override {key!r}: no arm with a non-honest attack to set "
                                    f"it on")
            # arms that already set the parameter are the ones that use it (a noise-floor
            # baseline has no synthetic_fraction); if none sets it, every non-honest arm gets it
            users = [a for a in hits if _has_path(a.get("params"), segs[1:])]
            hits = users or hits
            for arm in hits:
                _set_path(arm, ["params", *segs[1:]], value, ArmSpec, key)
            continue
        _set_path(out, segs, value, Scenario, key)
    return out


# --------------------------------------------------------------------------- grids

def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets, braces or quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """Turn ``["partition.alpha=0.1,0.5", "seeds=[0,1],[2,3]"]`` into a grid dict.

    Commas inside brackets/braces/quotes do not split values. Raises ScenarioError on bad syntax.
    """
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ScenarioError(f"grid {item!r}: expected key=v1,v2,... e.g. "
                                f"partition.alpha=0.1,0.5")
        vals = _split_top_level(values)
        if not values.strip() or any(v == "" for v in vals):
            raise ScenarioError(f"grid {item!r}: empty value in the list")
        if key in grid:
            raise ScenarioError(f"grid key {key!r} given twice")
        grid[key] = vals
    return grid


def expand_grid(scenario: Scenario, grid: Mapping[str, Sequence[str]]
                ) -> list[tuple[dict[str, str], Scenario]]:
    """Cartesian product of grid overrides on ``scenario``; one validated Scenario per point.

    Points are ordered like ``itertools.product`` over the keys in the grid's order. An empty
    grid gives one point with no overrides. Raises ScenarioError naming the point and field.
    """
    for key, values in grid.items():
        if isinstance(values, str) or len(values) == 0:
            raise ScenarioError(f"grid key {key!r}: needs a non-empty list of values")
    base = dump_resolved(scenario)
    keys = list(grid)
    points = []
    for combo in itertools.product(*(list(grid[k]) for k in keys)):
        overrides = {k: str(v) for k, v in zip(keys, combo)}
        label = ", ".join(f"{k}={v}" for k, v in overrides.items())
        try:
            data = apply_overrides(base, overrides)
            points.append((overrides, scenario_from_dict(data, where=f"at grid point {label}")))
        except ScenarioError as exc:
            if str(exc).startswith("invalid scenario"):
                raise
            raise ScenarioError(f"grid point {label}: {exc}") from None
    return points


# --------------------------------------------------------------------------- TOML output

def _toml_key(key: str) -> str:
    """A bare TOML key when possible, else a quoted one."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    """A TOML inline value (None has no TOML form: callers drop it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (datetime.date, datetime.time)):  # TOML has native date/time values
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}"
                               for k, v in value.items() if v is not None) + "}"
    raise ScenarioError(f"cannot write {value!r} as TOML")


def _is_table_list(value: Any) -> bool:
    """A non-empty list of tables is written as [[array of tables]]."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _toml_table(data: Mapping[str, Any], prefix: str, out: list[str]) -> None:
    """Append ``data`` as TOML lines: scalars first, then sub-tables and arrays of tables."""
    for key, value in data.items():
        if value is None or isinstance(value, dict) and prefix == "" or _is_table_list(value):
            continue
        out.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in data.items():
        name = f"{prefix}{_toml_key(key)}"
        if isinstance(value, dict) and prefix == "":
            out.extend(["", f"[{name}]"])
            _toml_table(value, f"{name}.", out)
        elif _is_table_list(value):
            for item in value:
                out.extend(["", f"[[{name}]]"])
                _toml_table(item, f"{name}.", out)


def to_toml(scenario: Scenario) -> str:
    """TOML text of the resolved scenario (None-valued fields are omitted: they are defaults)."""
    lines: list[str] = []
    # python mode keeps inf/nan, which JSON mode would turn into null (and TOML would drop)
    _toml_table(scenario.model_dump(mode="python"), "", lines)
    return "\n".join(lines).strip() + "\n"


# --------------------------------------------------------------------------- schema listing

def _type_text(annotation: Any) -> str:
    """A readable type: ``"iid" | "dirichlet"``, ``int | None``, ``list[int]``."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"list[{_type_text(typing.get_args(annotation)[0])}]"
    if origin is dict:
        return "table"
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "min length",
           "max_length": "max length", "pattern": "pattern"}


def _constraints_text(info: Any) -> str:
    """Bounds of a field (``>= 2, <= 64``) read from its metadata."""
    parts = []
    for meta in info.metadata:
        for attr, sym in _BOUNDS.items():
            v = getattr(meta, attr, None)
            if v is not None:
                parts.append(f"{sym} {v}")
    return ", ".join(parts)


def _default_text(info: Any) -> str:
    """The default of a field as TOML-ish text (sections and lists of tables summarised)."""
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return _toml_value([{k: v for k, v in x.model_dump(mode="json").items()
                             if k in ("name", "attack")} for x in value])
    return "None" if value is None else _toml_value(value)


def _schema_lines(cls: type[BaseModel], prefix: str, out: list[str]) -> None:
    """Append one line per field of ``cls``, then its sections (recursively)."""
    nested = []
    for name, info in cls.model_fields.items():
        sub = _inner_model(info.annotation)
        if sub is not None:
            nested.append((name, info, sub))
            if typing.get_origin(_unwrap_optional(info.annotation)) is not list:
                continue
        ann = f"list[{sub.__name__}]" if sub else _type_text(info.annotation)
        bounds = _constraints_text(info)
        out.append(f"  {prefix}{name}: {ann} = {_default_text(info)}"
                   + (f"  ({bounds})" if bounds else ""))
        out.append(f"      {info.description or ''}")
    for name, info, sub in nested:
        is_list = typing.get_origin(_unwrap_optional(info.annotation)) is list
        head = f"[[{prefix}{name}]]" if is_list else f"[{prefix}{name}]"
        out.extend(["", f"{head}  {info.description or ''}"])
        _schema_lines(sub, "" if is_list else f"{prefix}{name}.", out)


def schema_text() -> str:
    """A readable listing of every scenario field: type, default, bounds and description."""
    out = ["Scenario file (TOML). Top-level fields:"]
    _schema_lines(Scenario, "", out)
    out += ["", "Overrides: --set key=value with dotted keys (train.lr=0.1, seeds=[0,1,2]);",
            "list elements by index, name or * (arms.attack.params.synthetic_fraction=0.25);",
            "attack.<param>=v sets params.<param> on the non-honest arms that already set it",
            "(on every non-honest arm when none does)."]
    return "\n".join(out) + "\n"
