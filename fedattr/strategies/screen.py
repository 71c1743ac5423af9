"""Step 1 of a round: screen the train replies; rejected ones are recorded, never aggregated."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict

from fedattr.protocol import ARRAYS, METRICS, TESTBED_PREFIX, Reply, ReplyError, client_identity, parse_reply, split_testbed


@dataclass
class Screened:
    """What screening made of one round's replies.

    ``accepted`` holds ``(partition id, message, reply)`` sorted by partition id, the messages
    stripped of their testbed-only records; ``rejected`` one dict per refused reply
    (``partition_id``, ``node_id``, ``reason``).
    """

    accepted: list[tuple[int, Message, Reply]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def replies(self) -> dict[int, Reply]:
        return {pid: reply for pid, _, reply in self.accepted}

    @property
    def messages(self) -> list[Message]:
        return [msg for _, msg, _ in self.accepted]


def check_train_reply(content: RecordDict, reference: dict[str, np.ndarray],
                      weighted_by_key: str = "num-examples") -> str | None:
    """Why this reply must be rejected, or None if it may be aggregated.

    ``reference`` is the global model's arrays: a reply must carry exactly one ArrayRecord and one
    MetricRecord (testbed-only records aside) with the global model's keys, shapes and dtypes,
    only finite values, and a positive finite example count.
    """
    arrays = [k for k in content.array_records if not k.startswith(TESTBED_PREFIX)]
    metrics = [k for k in content.metric_records if not k.startswith(TESTBED_PREFIX)]
    if arrays != [ARRAYS]:
        return f"expected one ArrayRecord named {ARRAYS!r}, got {arrays}"
    if metrics != [METRICS]:
        return f"expected one MetricRecord named {METRICS!r}, got {metrics}"
    n = content.metric_records[METRICS].get(weighted_by_key)
    if not isinstance(n, (int, float)) or isinstance(n, bool) or not math.isfinite(n) or n <= 0:
        return f"{weighted_by_key} must be a positive finite number, got {n!r}"
    record = content.array_records[ARRAYS]
    if set(record.keys()) != set(reference):
        missing, extra = set(reference) - set(record.keys()), set(record.keys()) - set(reference)
        return f"array keys differ from the global model (missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]})"
    for key, ref in reference.items():
        arr = record[key].numpy()
        if arr.shape != ref.shape:
            return f"array {key!r} has shape {arr.shape}, expected {ref.shape}"
        if arr.dtype != ref.dtype:
            return f"array {key!r} has dtype {arr.dtype}, expected {ref.dtype}"
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            return f"array {key!r} has non-finite values"
    return None


def _check_counterfactual(testbed: dict[str, Any], reference: dict[str, np.ndarray]) -> str | None:
    cf = testbed.get("testbed.counterfactual")
    if cf is None:
        return None
    if set(cf.keys()) != set(reference):
        return "counterfactual array keys differ from the global model"
    for key, ref in reference.items():
        arr = cf[key].numpy()
        if arr.shape != ref.shape or arr.dtype != ref.dtype:
            return f"counterfactual array {key!r} has shape/dtype {arr.shape}/{arr.dtype}"
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            return f"counterfactual array {key!r} has non-finite values"
    return None


def screen_replies(replies: Iterable[Message], reference: dict[str, np.ndarray],
                   weighted_by_key: str = "num-examples") -> Screened:
    """Split replies into accepted (sorted by partition id) and rejected (with reasons).

    Error replies, replies without an integer partition id, duplicates of an id already
    accepted, and replies that fail :func:`check_train_reply` are rejected. Testbed-only records
    are stripped from accepted messages, so whatever aggregates them sees benign-shaped replies.
    """
    out = Screened()
    accepted: dict[int, tuple[Message, Reply]] = {}
    for msg in replies:
        node_id = msg.metadata.src_node_id
        if msg.has_error():
            out.rejected.append({"node_id": node_id, "partition_id": None,
                                 "reason": f"error reply: {msg.error.reason}"})
            continue
        content = msg.content
        pid, _ = client_identity(content)
        if pid is None:
            reason = "no integer partition-id in the reply's 'client' ConfigRecord"
        elif pid in accepted:
            reason = f"duplicate partition-id {pid}"
        else:
            reason = check_train_reply(content, reference, weighted_by_key)
        testbed: dict[str, Any] = {}
        if reason is None:
            testbed = split_testbed(content)
            reason = _check_counterfactual(testbed, reference)
        if reason is None:
            try:
                reply = parse_reply(content, testbed)
            except (ReplyError, KeyError, TypeError, ValueError) as exc:
                reason = f"malformed reply: {exc}"
        if reason is not None:
            out.rejected.append({"node_id": node_id, "partition_id": pid, "reason": reason})
            continue
        accepted[pid] = (msg, reply)
    # A fixed order makes the floating-point sum of the aggregation, and so the run, reproducible.
    out.accepted = [(pid, msg, reply) for pid, (msg, reply) in sorted(accepted.items())]
    return out
