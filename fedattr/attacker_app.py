"""The attacker's train handler: local training plus the arm's attack (``fedattr.attacks``).

The reply has the exact shape of a benign reply (``fedattr.protocol.make_reply``). With
counterfactual instrumentation on (a testbed-only feature, off in any real deployment), it also
carries the update the attacker would have sent had it trained honestly on the same minibatches,
the example count that honest reply would have reported, and the attack's diagnostics, all under
``testbed.`` names that the server strips before aggregation. The server scores both updates in
the same round game, so per-round inflation is measured without trajectory drift.

In the ``honest`` arm the attacker trains exactly like a benign client.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, RecordDict

from fedattr.attacks import AttackContext, make_attack, run_attacker_round
from fedattr.learning.data import label_histogram
from fedattr.protocol import NodeSettings, make_reply
from fedattr.learning.task import Job

# Per (job, partition) attacker state across rounds of one job (teacher, generator, ...). It is a
# cache: losing it (a fresh process) costs recomputation, never a different result.
_STATE: dict[tuple[str, int], dict] = {}


def _benign_histograms(job: Job, partition_id: int, num_classes: int) -> dict[int, list[int]]:
    """ORACLE (testbed-only): the true label histograms of every benign client."""
    out = {}
    for pid in range(int(job.spec.num_clients)):
        if pid != partition_id and pid not in job.attacker_ids:
            out[pid] = label_histogram(job.partition(pid)[1], num_classes)
    return out


def attacker_train(arrays: ArrayRecord, job: Job, node: NodeSettings, server_round: int, *,
                   device: str = "cpu") -> RecordDict:
    """Run one attacker round and build its reply content."""
    partition_id = node.partition_id
    splits = job.splits()
    x, y = job.partition(partition_id)
    model = job.build_model()
    model.load_state_dict(arrays.to_torch_state_dict())
    attack_spec = job.spec.attack
    state = _STATE.setdefault((job.job_id, partition_id), {})
    for key in [k for k in _STATE if k[0] != job.job_id]:
        del _STATE[key]  # a new job starts from a clean attacker
    ctx = AttackContext(
        global_model=model,
        x_local=x, y_local=y,
        x_aux=splits.x_aux, y_aux=splits.y_aux,
        num_classes=splits.num_classes, channels=splits.channels, side=splits.side,
        server_round=server_round,
        seed=job.client_seed(server_round, partition_id),
        run_seed=job.seed,
        device=device,
        train=job.train_kwargs(),
        benign_histograms=_benign_histograms(job, partition_id, splits.num_classes),
        cache_dir=node.resolved_cache_dir(),
        state=state,
    )
    attack = make_attack(attack_spec.name, **attack_spec.params)
    out = run_attacker_round(attack, ctx, start_round=int(attack_spec.start_round),
                             counterfactual=bool(attack_spec.counterfactual))
    # An honest arm's counterfactual is its own update: nothing to score twice.
    instrumented = attack_spec.counterfactual and attack_spec.name != "honest" and out.honest_state_dict is not None
    return make_reply(
        out.state_dict, num_examples=out.num_examples, train_loss=out.train_loss, partition_id=partition_id,
        role="attacker", label_histogram=label_histogram(y, splits.num_classes),
        counterfactual_state=out.honest_state_dict if instrumented else None,
        # An honest reply reports the local example count (over-reporting attacks differ).
        counterfactual_num_examples=len(y) if instrumented else None,
        attack_metrics={"attack": attack_spec.name, **{k: _config_value(v) for k, v in out.metrics.items()}}
        if instrumented else None,
    )


def _config_value(v):
    if isinstance(v, (list, tuple)):
        return [float(x) if not isinstance(x, str) else x for x in v]
    return v if isinstance(v, str) else float(v)
