"""The typed protocol: everything that crosses a process or a file boundary.

- :class:`JobSpec` travels to every client in each train message (as JSON in the ``job`` key of
  the train ConfigRecord). It says *what* to compute; a node says *where* (:class:`NodeSettings`
  from its ``node_config`` or environment), so no message names a path of the launching machine.
- :class:`PlanEntry` / :class:`Plan`: what one ServerApp run executes (``plan.json``).
- :class:`RoundRecord` (one line of ``rounds.jsonl``) and :class:`JobSummary` (``summary.json``),
  each with a ``schema_version``: writers build them, readers (report, resume) validate them.
- The reply record names and :func:`make_reply` / :func:`parse_reply`, used by both client apps
  and by the server, so reply keys are spelled in exactly one place.

Flower is imported lazily (only by :func:`make_reply` / :func:`parse_reply`), so reading results
never needs a Flower runtime.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedattr.core.env import cache_dir_override, data_dir_override, default_cache_dir
from fedattr.scenario.schema import (AggregationSpec, AttributionSpec, DataSpec, DetectorSpec, PartitionSpec,
                                     SamplingSpec, TrainSpec)

if TYPE_CHECKING:  # pragma: no cover
    from flwr.app import RecordDict

#: Version of the on-disk records; a reader refuses files of another version.
SCHEMA_VERSION = 2

# ----------------------------------------------------------------------------- reply record names
#: The trained weights (the only ArrayRecord a strategy may see).
ARRAYS = "arrays"
#: ``num-examples`` (the aggregation weight) and ``train-loss``.
METRICS = "metrics"
#: ``partition-id``, ``role``, ``label-histogram``.
CLIENT = "client"
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
PARTITION_ID = "partition-id"
ROLE = "role"
LABEL_HISTOGRAM = "label-histogram"
#: Prefix of testbed-only records: stripped by the server before anything else sees a reply.
TESTBED_PREFIX = "testbed."
#: The update the attacker would have sent had it trained honestly on the same minibatches.
COUNTERFACTUAL = "testbed.counterfactual"
#: ``num-examples`` an honest reply would have reported (the counterfactual's FedAvg weight).
COUNTERFACTUAL_METRICS = "testbed.counterfactual-metrics"
#: The attack's diagnostics (scalars or lists of scalars).
ATTACK = "testbed.attack"

ROLES = ("benign", "attacker")

# ----------------------------------------------------------------------------- node settings

NODE_KEYS = ("partition-id", "num-partitions", "role", "device", "data-dir", "cache-dir")


@dataclass(frozen=True)
class NodeSettings:
    """Where a node computes: read from its ``node_config``, then the environment, then defaults.

    ``node_config`` keys: ``partition-id``, ``num-partitions``, ``role`` (``benign``/``attacker``;
    empty = from the job's attacker ids), ``device`` (``cpu``/``cuda``/``auto``; empty = the job's
    ``device``), ``data-dir`` and ``cache-dir`` (environment ``FEDATTR_DATA_DIR`` /
    ``FEDATTR_CACHE_DIR``, else the project defaults).
    """

    partition_id: int
    role: str | None = None
    device: str | None = None
    data_dir: str | None = None
    cache_dir: str | None = None

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any], environ: dict[str, str] | None = None) -> "NodeSettings":
        env = os.environ if environ is None else environ
        if "partition-id" not in node_config:
            raise ValueError("node_config has no 'partition-id': start the SuperNode with "
                             "--node-config 'partition-id=<i> num-partitions=<n>'")
        role = str(node_config.get("role") or "") or None
        if role is not None and role not in ROLES:
            raise ValueError(f"node_config role = {role!r}: must be one of {ROLES}")
        return cls(
            partition_id=int(node_config["partition-id"]),
            role=role,
            device=str(node_config.get("device") or env.get("FEDATTR_DEVICE") or "") or None,
            data_dir=str(node_config.get("data-dir") or data_dir_override(env) or "") or None,
            cache_dir=str(node_config.get("cache-dir") or cache_dir_override(env) or "") or None,
        )

    def resolved_cache_dir(self) -> Path:
        """The generator cache of this node (``~/.cache/fedattr/generators`` by default)."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser().resolve()
        return default_cache_dir()



# ----------------------------------------------------------------------------- job and plan

class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AttackSpec(_Model):
    """The attacker's behaviour in one arm."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    start_round: int = 1
    counterfactual: bool = True


class JobSpec(_Model):
    """One (arm, seed) run of a scenario, as every client and the server see it.

    It names no path of the launching machine: ``data.data_dir`` is dropped (each node finds its
    data through :class:`NodeSettings`), and ``device`` is only the default a node may override.
    """

    job_id: str
    scenario_name: str
    arm: str
    seed: int
    num_clients: int
    attacker_ids: list[int]
    rounds: int
    model: str
    data: DataSpec
    partition: PartitionSpec
    train: TrainSpec
    attack: AttackSpec
    device: str = "cpu"

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        return cls.model_validate_json(text)


class PlanEntry(_Model):
    """One job of a plan: its spec, where its results go, and the server-side settings."""

    dir: str
    spec: JobSpec
    attribution: AttributionSpec
    aggregation: AggregationSpec
    detectors: list[DetectorSpec] = Field(default_factory=list)
    min_clients: int | None = None
    round_timeout_s: float | None = None
    #: Where the ServerApp finds the data (the scenario's ``data.data_dir``); clients use their own.
    server_data_dir: str | None = None
    #: Which clients train each round (the scenario's ``[sampling]``; default every client).
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)


class Plan(_Model):
    """Every job one ServerApp run executes, back to back over the same nodes."""

    schema_version: int = SCHEMA_VERSION
    num_clients: int
    jobs: list[PlanEntry]
    results_dir: str | None = None


# ----------------------------------------------------------------------------- results

class _Record(BaseModel):
    # Readers accept fields added by later minor versions; the schema version guards the rest.
    model_config = ConfigDict(extra="allow")


class Rejection(_Record):
    """A reply that was not aggregated, and why.

    ``partition_id`` is the partition the server holds the sender to be (its node's binding, or
    the reply's own claim when only its content was at fault); ``claimed_partition_id`` is what
    the reply said.
    """

    partition_id: int | None = None
    node_id: int | None = None
    claimed_partition_id: int | None = None
    reason: str


class DetectorRound(_Record):
    """One detector's view of one round: per-client score, rank (1 = most suspicious) and flag."""

    scores: dict[int, float | None]
    ranks: dict[int, int]
    flags: dict[int, bool]
    mode: Literal["observe", "filter"] = "observe"
    info: dict[str, Any] = Field(default_factory=dict)


class RoundRecord(_Record):
    """One finished round of one job (a line of ``rounds.jsonl``)."""

    schema_version: int = SCHEMA_VERSION
    arm: str
    #: The run seed (names the job).
    seed: int
    #: The training seed: minibatch order, model initialisation, attack randomness (the run seed).
    train_seed: int | None = None
    #: The seed of the client partitions (equals ``seed`` unless the scenario holds the split fixed).
    partition_seed: int | None = None
    attacker_ids: list[int]
    round: int
    clients: list[int]
    rejected: list[Rejection] = Field(default_factory=list)
    #: Expected clients with no reply this round (node gone, not connected, or past the timeout).
    missing: int = 0
    #: The partitions of those clients, where the server knows them.
    missing_partitions: list[int] = Field(default_factory=list)
    #: The Flower node id each accepted client replied from (its identity binding).
    node_ids: dict[int, int] = Field(default_factory=dict)
    roles: dict[int, str] = Field(default_factory=dict)
    #: The aggregation weight used (the claim, capped by the weight policy).
    num_examples: dict[int, float] = Field(default_factory=dict)
    #: The example count each accepted reply claimed.
    claimed_num_examples: dict[int, float] = Field(default_factory=dict)
    label_histograms: dict[int, list[int]] = Field(default_factory=dict)
    detectors: dict[str, DetectorRound] = Field(default_factory=dict)
    filtered: list[int] = Field(default_factory=list)
    values: dict[str, dict[int, float | None]] = Field(default_factory=dict)
    counterfactual_values: dict[str, dict[int, float | None]] = Field(default_factory=dict)
    counterfactual_vectors: dict[str, dict[int, dict[int, float | None]]] = Field(default_factory=dict)
    attack_metrics: dict[int, dict[str, Any]] = Field(default_factory=dict)
    cumulative: dict[str, dict[int, float | None]] = Field(default_factory=dict)
    cumulative_normalised: dict[str, dict[int, float | None]] = Field(default_factory=dict)
    ranks: dict[str, dict[int, int]] = Field(default_factory=dict)
    evaluator_info: dict[str, dict[str, Any]] = Field(default_factory=dict)
    utility_evaluations: dict[str, int] = Field(default_factory=dict)
    timings: dict[str, Any] = Field(default_factory=dict)
    test: dict[str, float | None] = Field(default_factory=dict)


class JobSummary(_Record):
    """The end of one job (``summary.json``); ``status`` says whether its numbers can be used."""

    schema_version: int = SCHEMA_VERSION
    status: Literal["finished", "failed"] = "finished"
    failure_reason: str | None = None
    arm: str
    seed: int
    train_seed: int | None = None
    partition_seed: int | None = None
    rounds: int
    rounds_recorded: int
    attacker_ids: list[int]
    initial_test: dict[str, float | None] = Field(default_factory=dict)
    final_test: dict[str, float | None] | None = None
    cumulative: dict[str, dict[int, float | None]] = Field(default_factory=dict)
    cumulative_normalised: dict[str, dict[int, float | None]] = Field(default_factory=dict)
    ranks: dict[str, dict[int, int]] = Field(default_factory=dict)
    counterfactual_inflation: dict[str, dict[int, float | None]] = Field(default_factory=dict)
    rejected: list[dict[str, Any]] = Field(default_factory=list)
    rejected_count: int = 0
    missing_count: int = 0
    #: The round that ended a failed job (a RoundRecord without test metrics), if one did.
    failed_round: dict[str, Any] | None = None
    wall_s: float = 0.0


class RecordError(ValueError):
    """A results file that does not hold a valid record; the message names the file."""


def _check_version(data: Any, where: str) -> None:
    version = data.get("schema_version", 1) if isinstance(data, dict) else None
    if version not in (1, SCHEMA_VERSION):
        raise RecordError(f"{where}: schema_version {version!r} is not supported (this fedattr reads "
                          f"{SCHEMA_VERSION}); re-run the job with this version")


def parse_round_record(data: Any, where: str = "round record") -> RoundRecord:
    """Validate one decoded ``rounds.jsonl`` line."""
    _check_version(data, where)
    try:
        return RoundRecord.model_validate(data)
    except ValidationError as exc:
        raise RecordError(f"{where}: invalid round record: {_first_error(exc)}") from None


def parse_summary(data: Any, where: str = "summary") -> JobSummary:
    """Validate a decoded ``summary.json``."""
    _check_version(data, where)
    try:
        return JobSummary.model_validate(data)
    except ValidationError as exc:
        raise RecordError(f"{where}: invalid job summary: {_first_error(exc)}") from None


def read_rounds(path: str | Path) -> list[RoundRecord]:
    """Read and validate a ``rounds.jsonl``; a truncated or invalid line is a RecordError naming it."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path}:{k}: not valid JSON ({exc.msg}); the file is damaged: delete the "
                              f"job directory {path.parent} and re-run to redo the job") from None
        out.append(parse_round_record(data, f"{path}:{k}"))
    return out


def read_summary(path: str | Path) -> JobSummary:
    """Read and validate a ``summary.json``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not valid JSON ({exc.msg}); delete it and re-run to redo the job") from None
    return parse_summary(data, str(path))


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(s) for s in err["loc"]) or "(record)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{loc}: {err['msg']}{more}"


# ----------------------------------------------------------------------------- replies

@dataclass
class Reply:
    """A train reply, parsed: what a strategy and the attribution pipeline need of it."""

    partition_id: int
    role: str
    #: The aggregation weight: the claimed count until the weight policy caps it.
    num_examples: float
    train_loss: float
    label_histogram: list[int]
    state: dict = field(repr=False, default_factory=dict)
    counterfactual_state: dict | None = field(repr=False, default=None)
    counterfactual_num_examples: int | None = None
    attack_metrics: dict[str, Any] = field(default_factory=dict)
    #: The count the reply claimed (``num_examples`` before the weight policy).
    claimed_num_examples: float | None = None
    #: The Flower node that sent the reply.
    node_id: int | None = None


class ReplyError(ValueError):
    """A reply that does not follow the protocol (the reason is recorded, never aggregated)."""


def make_reply(state: dict, *, num_examples: int, train_loss: float, partition_id: int, role: str,
               label_histogram: list[int], counterfactual_state: dict | None = None,
               counterfactual_num_examples: int | None = None,
               attack_metrics: dict[str, Any] | None = None) -> "RecordDict":
    """The reply content every role sends: one ArrayRecord, one MetricRecord, one ConfigRecord.

    The attacker's testbed-only records (counterfactual update and its example count, attack
    diagnostics) are added under :data:`TESTBED_PREFIX` names, which the server strips.
    """
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    content = RecordDict({
        ARRAYS: ArrayRecord(state),
        METRICS: MetricRecord({NUM_EXAMPLES: int(num_examples), TRAIN_LOSS: float(train_loss)}),
        CLIENT: ConfigRecord({PARTITION_ID: int(partition_id), ROLE: role,
                              LABEL_HISTOGRAM: [int(c) for c in label_histogram]}),
    })
    if counterfactual_state is not None:
        content[COUNTERFACTUAL] = ArrayRecord(counterfactual_state)
        n_cf = num_examples if counterfactual_num_examples is None else counterfactual_num_examples
        content[COUNTERFACTUAL_METRICS] = MetricRecord({NUM_EXAMPLES: int(n_cf)})
    if attack_metrics:
        content[ATTACK] = ConfigRecord(dict(attack_metrics))
    return content


def split_testbed(content: "RecordDict") -> dict[str, Any]:
    """Remove the testbed-only records from ``content`` (in place) and return them by name."""
    out = {}
    for name in [k for k in content.keys() if k.startswith(TESTBED_PREFIX)]:
        out[name] = content[name]
        del content[name]
    return out


def client_identity(content: "RecordDict") -> tuple[int | None, str | None]:
    """``(partition-id, role)`` a reply claims, None where absent or mistyped."""
    client = content.config_records.get(CLIENT)
    if client is None:
        return None, None
    pid, role = client.get(PARTITION_ID), client.get(ROLE)
    pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
    return pid, role if isinstance(role, str) else None


def parse_reply(content: "RecordDict", testbed: dict[str, Any] | None = None,
                partition_id: int | None = None) -> Reply:
    """Read a (screened) reply; ``testbed`` holds what :func:`split_testbed` removed from it.

    ``partition_id`` is the identity the server gave the reply's node; without it the reply must
    claim one. A reply without a ``client`` record (a stock Flower ClientApp) is benign with no
    label histogram.
    """
    from flwr.app import ConfigRecord

    testbed = testbed or {}
    pid, role = client_identity(content)
    pid = pid if partition_id is None else int(partition_id)
    if pid is None:
        raise ReplyError(f"no integer {PARTITION_ID!r} in the reply's {CLIENT!r} ConfigRecord")
    client = content.config_records.get(CLIENT) or ConfigRecord()
    metrics = content.metric_records.get(METRICS)
    if metrics is None or ARRAYS not in content.array_records:
        raise ReplyError(f"a reply needs the records {ARRAYS!r} and {METRICS!r}")
    cf = testbed.get(COUNTERFACTUAL)
    cf_metrics = testbed.get(COUNTERFACTUAL_METRICS)
    attack = testbed.get(ATTACK)
    return Reply(
        partition_id=pid,
        role=role or "benign",
        num_examples=float(metrics[NUM_EXAMPLES]),
        claimed_num_examples=float(metrics[NUM_EXAMPLES]),
        train_loss=float(metrics.get(TRAIN_LOSS, float("nan"))),
        label_histogram=[int(c) for c in client.get(LABEL_HISTOGRAM, [])],
        state=content.array_records[ARRAYS].to_torch_state_dict(),
        counterfactual_state=cf.to_torch_state_dict() if cf is not None else None,
        counterfactual_num_examples=int(cf_metrics[NUM_EXAMPLES]) if cf_metrics is not None else None,
        attack_metrics=dict(attack) if attack is not None else {},
    )
