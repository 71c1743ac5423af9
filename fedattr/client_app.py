"""ClientApp: benign local SGD on the node's partition; the attacker's partition goes to attacker_app.

Reply to a train message (the contract FedAvg validates, kept by every role):
``ArrayRecord`` "arrays" (the trained weights), ``MetricRecord`` "metrics" (``num-examples``,
``train-loss``) and ``ConfigRecord`` "client" (``partition-id``, ``role``, ``label-histogram``).

The partition comes from ``node_config["partition-id"]``. The role comes from
``node_config["role"]`` in a deployment, and otherwise (simulation, where node_config cannot be
extended) from the job's attacker partition ids, which the server takes from the run config.
"""

from __future__ import annotations

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from fedattr.data import label_histogram
from fedattr.models import resolve_device
from fedattr.task import Job
from fedattr.training import train_local

app = ClientApp()


def client_role(context: Context, job: Job) -> str:
    """``attacker`` or ``benign`` for this node in this job."""
    role = context.node_config.get("role")
    if role:
        return str(role)
    return "attacker" if int(context.node_config["partition-id"]) in job.attacker_ids else "benign"


def make_reply(
    msg: Message, state: dict[str, torch.Tensor], num_examples: int, train_loss: float,
    partition_id: int, role: str, histogram: list[int],
) -> RecordDict:
    """The reply content every role sends (same records, same keys)."""
    return RecordDict({
        "arrays": ArrayRecord(state),
        "metrics": MetricRecord({"num-examples": int(num_examples), "train-loss": float(train_loss)}),
        "client": ConfigRecord({"partition-id": int(partition_id), "role": role, "label-histogram": histogram}),
    })


def benign_train(job: Job, partition_id: int, server_round: int, arrays: ArrayRecord) -> tuple[dict, int, float]:
    """Train a copy of the global model on the partition; return (state dict, n, mean loss)."""
    x, y = job.partition(partition_id)
    model = job.build_model()
    model.load_state_dict(arrays.to_torch_state_dict())
    t = job.spec["train"]
    out = train_local(
        model, x, y, epochs=t["local_epochs"], batch_size=t["batch_size"], lr=t["lr"],
        momentum=t["momentum"], weight_decay=t["weight_decay"],
        seed=job.client_seed(server_round, partition_id), device=resolve_device(job.spec["device"]),
    )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return state, len(y), out["loss"]


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training for one round of one job."""
    config = msg.content["config"]
    job = Job.from_json(str(config["job"]))
    server_round = int(config["server-round"])
    partition_id = int(context.node_config["partition-id"])
    role = client_role(context, job)
    if role == "attacker":
        from fedattr.attacker_app import attacker_train

        content = attacker_train(msg, job, partition_id, server_round)
        return Message(content=content, reply_to=msg)
    state, n, loss = benign_train(job, partition_id, server_round, msg.content["arrays"])
    _, y = job.partition(partition_id)
    hist = label_histogram(y, job.splits().num_classes)
    return Message(content=make_reply(msg, state, n, loss, partition_id, role, hist), reply_to=msg)
