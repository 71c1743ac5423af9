"""Property-based fuzzing of reply screening (``fedattr.strategies.screen.screen_replies``).

Hypothesis builds rounds of replies that are valid or broken in every way a client can break
one: error replies, missing or mistyped partition ids, contested ids, missing/extra/renamed
records and arrays, wrong shapes and dtypes, NaN/Inf values, bad, huge and tiny example counts,
a broken testbed counterfactual. An independent oracle written here says which replies may be
aggregated and under which id; the properties: screening accepts exactly those, never anything
broken, records every other reply with a reason and its node, returns the accepted ones sorted
by id, and caps every weight at 4x the round's median claim.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedattr.protocol import TESTBED_PREFIX, make_reply
from fedattr.strategies.screen import screen_replies

#: examples per property; docs/reliability.md reports the total
EXAMPLES = 400

REFERENCE = {
    "conv.weight": np.zeros((2, 1, 3, 3), dtype=np.float32),
    "conv.bias": np.zeros((2,), dtype=np.float32),
    "bn.num_batches_tracked": np.zeros((), dtype=np.int64),
}

FAULTS = ["none", "error", "no_client", "pid_str", "pid_bool", "pid_float", "missing_array", "extra_array",
          "shape", "dtype", "nan", "inf", "n_zero", "n_negative", "n_nan", "n_inf", "n_float", "n_missing",
          "extra_arrayrecord", "extra_metricrecord", "renamed_arrays", "cf_shape", "cf_nan"]


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, ref in REFERENCE.items():
        if np.issubdtype(ref.dtype, np.floating):
            out[key] = torch.randn(ref.shape, generator=g, dtype=torch.float32)
        else:
            out[key] = torch.tensor(seed, dtype=torch.int64).reshape(ref.shape)
    return out


def _build(fault: str, pid: int, n: int, node: int, seed: int, counterfactual: bool) -> Message:
    """One reply with ``fault`` applied to an otherwise valid reply."""
    sent = Message(content=RecordDict(), dst_node_id=node, message_type="train")
    if fault == "error":
        return Message(error=Error(code=0, reason="client raised"), reply_to=sent)
    state = _state(seed)
    if fault == "missing_array":
        state.pop("conv.bias")
    elif fault == "extra_array":
        state["extra"] = torch.zeros(1)
    elif fault == "shape":
        state["conv.bias"] = torch.zeros(3)
    elif fault == "dtype":
        state["conv.weight"] = state["conv.weight"].double()
    elif fault == "nan":
        state["conv.weight"][0, 0, 0, 0] = float("nan")
    elif fault == "inf":
        state["conv.bias"][1] = float("-inf")
    cf = None
    if counterfactual or fault in ("cf_shape", "cf_nan"):
        cf = _state(seed + 1)
        if fault == "cf_shape":
            cf["conv.bias"] = torch.zeros(5)
        elif fault == "cf_nan":
            cf["conv.weight"][1, 0, 2, 2] = float("nan")
    content = make_reply(state, num_examples=1, train_loss=0.1, partition_id=pid, role="benign",
                         label_histogram=[1, 2, 3], counterfactual_state=cf)
    metrics, client = content.metric_records["metrics"], content.config_records["client"]
    metrics["num-examples"] = n
    if fault == "no_client":
        del content["client"]
    elif fault == "pid_str":
        client["partition-id"] = str(pid)
    elif fault == "pid_bool":
        client["partition-id"] = True
    elif fault == "pid_float":
        client["partition-id"] = float(pid) + 0.5
    elif fault == "n_zero":
        metrics["num-examples"] = 0
    elif fault == "n_negative":
        metrics["num-examples"] = -abs(n)
    elif fault == "n_nan":
        metrics["num-examples"] = float("nan")
    elif fault == "n_inf":
        metrics["num-examples"] = float("inf")
    elif fault == "n_float":
        metrics["num-examples"] = n + 0.5  # a fractional count is still a valid FedAvg weight
    elif fault == "n_missing":
        del metrics["num-examples"]
    elif fault == "extra_arrayrecord":
        content["more"] = ArrayRecord({"x": torch.zeros(1)})
    elif fault == "extra_metricrecord":
        content["more"] = MetricRecord({"x": 1.0})
    elif fault == "renamed_arrays":
        content["weights"] = content.array_records["arrays"]
        del content["arrays"]
    return Message(content=content, reply_to=sent)


#: faults after which a reply must never be aggregated ("n_float" is a valid weight, "no_client"
#: a stock Flower reply that claims no partition)
BAD = set(FAULTS) - {"none", "n_float", "no_client"}


def _oracle(plan: list[tuple[str, int]]) -> dict[int, int]:
    """Reply index -> partition id of the replies that must be accepted.

    A valid reply's claim is granted when no other valid reply of the round claims the same id
    (every node is new, so a contested id goes to nobody); a valid reply that claims nothing gets
    the smallest id nobody claimed, in node order.
    """
    claims: dict[int, list[int]] = defaultdict(list)
    unclaimed = []
    for i, (fault, pid) in enumerate(plan):
        if fault in BAD:
            continue
        if fault == "no_client":
            unclaimed.append(i)
        else:
            claims[pid].append(i)
    out = {idx[0]: pid for pid, idx in claims.items() if len(idx) == 1}
    taken, free = set(claims), 0
    for i in unclaimed:
        while free in taken:
            free += 1
        out[i] = free
        taken.add(free)
    return out


#: example counts from a tiny fraction to far beyond any dataset
counts = st.one_of(st.integers(1, 500), st.sampled_from([1e-9, 0.5, 1e9, 1.5e12, 1e300]))
reply_plan = st.lists(st.tuples(st.sampled_from(FAULTS), st.integers(0, 5), counts, st.booleans()),
                      min_size=0, max_size=8)


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=reply_plan, seed=st.integers(0, 1000))
def test_screening_accepts_exactly_the_valid_replies_and_records_the_rest(plan, seed):
    messages = [_build(f, pid, n, node=1000 + i, seed=seed + i, counterfactual=cf)
                for i, (f, pid, n, cf) in enumerate(plan)]
    screened = screen_replies(messages, REFERENCE)

    # everything is recorded: each reply is either accepted or rejected with a reason and its node
    assert len(screened.accepted) + len(screened.rejected) == len(messages)
    for rej in screened.rejected:
        assert rej["reason"] and isinstance(rej["reason"], str)
        assert rej["node_id"] in {m.metadata.src_node_id for m in messages}
    # exactly the replies the oracle allows, under the id it gives, sorted by id, no id twice
    want = _oracle([(f, pid) for f, pid, _, _ in plan])
    assert {msg.metadata.src_node_id: pid for pid, msg, _ in screened.accepted} == \
        {1000 + i: pid for i, pid in want.items()}
    pids = [pid for pid, _, _ in screened.accepted]
    assert pids == sorted(set(pids))
    # every weight is the claim capped at 4x the round's median claim
    claims = {pid: plan[i][2] + (0.5 if plan[i][0] == "n_float" else 0) for i, pid in want.items()}
    cap = 4 * float(np.median(list(claims.values()))) if claims else None
    for pid, msg, reply in screened.accepted:
        assert reply.claimed_num_examples == claims[pid]
        assert reply.num_examples == min(claims[pid], cap)
        assert msg.content.metric_records["metrics"]["num-examples"] == reply.num_examples
    # nothing bad is aggregated: every accepted reply has the reference's keys, shapes, dtypes,
    # finite values and a positive finite example count; testbed records are stripped
    for pid, msg, reply in screened.accepted:
        assert list(msg.content.array_records) == ["arrays"]
        assert not any(k.startswith(TESTBED_PREFIX) for k in msg.content.keys())
        arrays = msg.content.array_records["arrays"]
        assert set(arrays.keys()) == set(REFERENCE)
        for key, ref in REFERENCE.items():
            arr = arrays[key].numpy()
            assert arr.shape == ref.shape and arr.dtype == ref.dtype and np.isfinite(arr).all()
        assert _finite_positive(msg.content.metric_records["metrics"]["num-examples"])
        assert reply.partition_id == pid and reply.num_examples > 0
        if reply.counterfactual_state is not None:
            for key, ref in REFERENCE.items():
                cf = reply.counterfactual_state[key].numpy()
                assert cf.shape == ref.shape and np.isfinite(cf).all()


@settings(max_examples=EXAMPLES // 4, deadline=None)
@given(n=st.integers(1, 6), bad=st.sampled_from(sorted(BAD)))
def test_a_round_of_only_broken_replies_accepts_nothing(n, bad):
    messages = [_build(bad, pid, 10, node=2000 + pid, seed=pid, counterfactual=False) for pid in range(n)]
    screened = screen_replies(messages, REFERENCE)
    assert screened.accepted == [] and len(screened.rejected) == n
    assert {r["node_id"] for r in screened.rejected} == {2000 + pid for pid in range(n)}

