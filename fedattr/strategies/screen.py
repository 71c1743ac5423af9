"""Step 1 of a round: screen the train replies; rejected ones are recorded, never aggregated.

A reply is a claim: its shape and values are checked against the global model, its identity
against its node's binding (``identity``), its example count against the round's weight policy
(``weights``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict

from fedattr.protocol import (ARRAYS, CLIENT, METRICS, PARTITION_ID, TESTBED_PREFIX, Reply, ReplyError,
                              client_identity, parse_reply, split_testbed)
from fedattr.strategies.identity import IdentityBinder
from fedattr.strategies.weights import WeightPolicy


@dataclass
class Screened:
    """What screening made of one round's replies.

    ``accepted`` holds ``(partition id, message, reply)`` sorted by partition id, the messages
    stripped of their testbed-only records; ``rejected`` one dict per refused reply
    (``partition_id``, ``node_id``, ``claimed_partition_id``, ``reason``); ``cap`` the round's
    cap on a weight (None: no cap).
    """

    accepted: list[tuple[int, Message, Reply]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    cap: float | None = None

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
                   weighted_by_key: str = "num-examples", *, identities: IdentityBinder | None = None,
                   weights: WeightPolicy | None = None, senders: Mapping[str, int] | None = None) -> Screened:
    """Split replies into accepted (sorted by partition id) and rejected (with reasons).

    Rejected: error replies, a second reply from one node, replies that fail
    :func:`check_train_reply` or are malformed, and replies whose identity ``identities`` refuses
    (a claim out of range, differing from the node's binding, or contested). Accepted replies'
    nodes are bound to their partitions. Their example counts are capped by ``weights`` (the
    message itself carries the used count, so the wrapped strategy aggregates with it; the claim
    is kept in ``Reply.claimed_num_examples``). Testbed-only records are stripped from accepted
    messages, so whatever aggregates them sees benign-shaped replies. ``senders`` maps the
    message ids of the round's instructions to the nodes they went to (see :func:`sender`).
    """
    identities = identities if identities is not None else IdentityBinder()
    weights = weights if weights is not None else WeightPolicy()
    out = Screened()
    seen: set[int] = set()
    valid: dict[int, tuple[int | None, Message, Reply]] = {}
    for msg in replies:
        node_id = sender(msg, senders)
        bound = identities.partition_of(node_id)
        if node_id in seen:
            out.rejected.append(_rejection(node_id, bound, None, f"a second reply from node {node_id} in one round"))
            continue
        seen.add(node_id)
        if msg.has_error():
            out.rejected.append(_rejection(node_id, bound, None, f"error reply: {msg.error.reason}"))
            continue
        content = msg.content
        claim, _ = client_identity(content)
        reason = None
        if CLIENT in content.config_records and claim is None:
            reason = f"the reply's {CLIENT!r} ConfigRecord has no integer {PARTITION_ID!r}"
        if reason is None:
            reason = check_train_reply(content, reference, weighted_by_key)
        testbed: dict[str, Any] = {}
        if reason is None:
            testbed = split_testbed(content)
            reason = _check_counterfactual(testbed, reference)
        if reason is None:
            try:
                reply = parse_reply(content, testbed, partition_id=-1 if claim is None else claim)
            except (ReplyError, KeyError, TypeError, ValueError) as exc:
                reason = f"malformed reply: {exc}"
        if reason is not None:
            out.rejected.append(_rejection(node_id, bound if bound is not None else claim, claim, reason))
            continue
        valid[node_id] = (claim, msg, reply)
    granted, refused = identities.resolve((node, claim) for node, (claim, _, _) in valid.items())
    for node, reason in sorted(refused.items()):
        claim = valid[node][0]
        out.rejected.append(_rejection(node, identities.partition_of(node), claim, reason))
    accepted = {pid: valid[node] + (node,) for node, pid in granted.items()}
    claims = {pid: float(reply.num_examples) for pid, (_, _, reply, _) in accepted.items()}
    used = weights.apply(claims)
    out.cap = weights.cap(claims)
    for pid, (_, msg, reply, node) in accepted.items():
        identities.bind(node, pid)
        reply.partition_id, reply.node_id = pid, node
        reply.claimed_num_examples = claims[pid]
        if used[pid] != claims[pid]:
            reply.num_examples = used[pid]
            msg.content.metric_records[METRICS][weighted_by_key] = used[pid]
    # A fixed order makes the floating-point sum of the aggregation, and so the run, reproducible.
    out.accepted = [(pid, msg, reply) for pid, (_, msg, reply, _) in sorted(accepted.items())]
    return out


def sender(msg: Message, senders: Mapping[str, int] | None = None) -> int:
    """The node a reply speaks for: the node its instruction was sent to, else its source node.

    Flower answers for a node that stopped heartbeating with an error reply whose source is the
    SuperLink; the instruction it replies to still names the node.
    """
    if senders:
        node = senders.get(msg.metadata.reply_to_message_id)
        if node is not None:
            return int(node)
    return int(msg.metadata.src_node_id)


def _rejection(node_id: int, partition_id: int | None, claim: int | None, reason: str) -> dict[str, Any]:
    return {"node_id": node_id, "partition_id": partition_id, "claimed_partition_id": claim, "reason": reason}
