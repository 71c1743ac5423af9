"""ClientApp: benign local SGD on the node's partition; the attacker's partition goes to attacker_app.

Every role replies through ``fedattr.protocol.make_reply`` (one ArrayRecord ``arrays``, one
MetricRecord ``metrics`` with ``num-examples`` and ``train-loss``, one ConfigRecord ``client``
with ``partition-id``, ``role``, ``label-histogram``).

The node says where it computes (``fedattr.protocol.NodeSettings``: partition id, role, device,
data and cache directories from ``node_config`` or the environment). The role comes from
``node_config["role"]`` in a deployment and otherwise (simulation, where node_config cannot be
extended) from the job's attacker partition ids.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedattr.attacker_app import attacker_train
from fedattr.learning.data import label_histogram
from fedattr.learning.models import resolve_device
from fedattr.protocol import ARRAYS, CLIENT, PARTITION_ID, JobSpec, NodeSettings, make_reply
from fedattr.learning.task import Job
from fedattr.learning.training import train_local

app = ClientApp()


def client_role(node: NodeSettings, job: Job) -> str:
    """``attacker`` or ``benign`` for this node in this job."""
    if node.role:
        return node.role
    return "attacker" if node.partition_id in job.attacker_ids else "benign"


def node_device(node: NodeSettings, job: Job) -> str:
    """The node's device when it names one, else the job's default."""
    return resolve_device(node.device or job.spec.device)


def benign_train(job: Job, node: NodeSettings, server_round: int, arrays: ArrayRecord) -> tuple[dict, int, float]:
    """Train a copy of the global model on the partition; return (state dict, n, mean loss)."""
    x, y = job.partition(node.partition_id)
    model = job.build_model()
    model.load_state_dict(arrays.to_torch_state_dict())
    out = train_local(model, x, y, seed=job.client_seed(server_round, node.partition_id),
                      device=node_device(node, job), **job.train_kwargs())
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return state, len(y), out["loss"]


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training for one round of one job."""
    config = msg.content["config"]
    node = NodeSettings.from_node_config(dict(context.node_config))
    job = Job(JobSpec.from_json(str(config["job"])), data_dir=node.data_dir)
    server_round = int(config["server-round"])
    role = client_role(node, job)
    if role == "attacker":
        content = attacker_train(msg.content[ARRAYS], job, node, server_round, device=node_device(node, job))
        return Message(content=content, reply_to=msg)
    state, n, loss = benign_train(job, node, server_round, msg.content[ARRAYS])
    _, y = job.partition(node.partition_id)
    hist = label_histogram(y, job.splits().num_classes)
    content = make_reply(state, num_examples=n, train_loss=loss, partition_id=node.partition_id, role=role,
                         label_histogram=hist)
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The node's partition id, for a server that samples clients by partition (a claim, as in a reply)."""
    node = NodeSettings.from_node_config(dict(context.node_config))
    return Message(content=RecordDict({CLIENT: ConfigRecord({PARTITION_ID: node.partition_id})}), reply_to=msg)
