"""The attacker's train handler: local training plus the arm's attack (``fedattr.attacks``).

The reply has the exact shape of a benign reply (same ArrayRecord keys, shapes and dtypes, same
MetricRecord keys). With counterfactual instrumentation on (a testbed-only feature, off in any
real deployment), the reply carries two extra records that the server strips before
aggregation: ``testbed.counterfactual`` (the ArrayRecord the attacker would have sent had it
trained honestly with the same seed) and ``testbed.attack`` (the attack's diagnostics). The
server scores both updates in the same round game, so per-round inflation is measured without
trajectory drift.

In the ``honest`` arm the attacker trains exactly like a benign client.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedattr.data import label_histogram
from fedattr.models import resolve_device
from fedattr.task import ATTACK_METRICS_KEY, COUNTERFACTUAL_KEY, Job

# Per (job, partition) attacker state across rounds of one job (teacher, generator, ...). It is a
# cache: losing it (a fresh process) costs recomputation, never a different result.
_STATE: dict[tuple[str, int], dict] = {}


def _benign_histograms(job: Job, partition_id: int, num_classes: int) -> dict[int, list[int]]:
    """ORACLE (testbed-only): the true label histograms of every benign client."""
    out = {}
    for pid in range(int(job.spec["num_clients"])):
        if pid != partition_id and pid not in job.attacker_ids:
            out[pid] = label_histogram(job.partition(pid)[1], num_classes)
    return out


def attacker_train(msg: Message, job: Job, partition_id: int, server_round: int) -> RecordDict:
    """Run one attacker round and build its reply content."""
    from fedattr.attacks import AttackContext, make_attack, run_attacker_round
    from fedattr.client_app import make_reply

    splits = job.splits()
    x, y = job.partition(partition_id)
    model = job.build_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    attack_spec = job.spec["attack"]
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
        device=resolve_device(job.spec["device"]),
        train=dict(epochs=job.spec["train"]["local_epochs"], **{
            k: job.spec["train"][k] for k in ("batch_size", "lr", "momentum", "weight_decay")
        }),
        benign_histograms=_benign_histograms(job, partition_id, splits.num_classes),
        cache_dir=Path(job.spec["cache_dir"]),
        state=state,
    )
    attack = make_attack(attack_spec["name"], **attack_spec["params"])
    out = run_attacker_round(
        attack, ctx, start_round=int(attack_spec["start_round"]),
        counterfactual=bool(attack_spec["counterfactual"]),
    )
    hist = label_histogram(y, splits.num_classes)
    content = make_reply(msg, out.state_dict, out.num_examples, out.train_loss, partition_id, "attacker", hist)
    # An honest arm's counterfactual is its own update: nothing to score twice.
    if attack_spec["counterfactual"] and attack_spec["name"] != "honest" and out.honest_state_dict is not None:
        content[COUNTERFACTUAL_KEY] = ArrayRecord(out.honest_state_dict)
        content[ATTACK_METRICS_KEY] = ConfigRecord(
            {"attack": attack_spec["name"], **{k: float(v) for k, v in out.metrics.items()}}
        )
    return content
