"""A stock Flower ClientApp: it trains and replies with arrays and metrics, and knows nothing of fedattr."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from quickstart_attribution.task import Net, load_data
from quickstart_attribution.task import train as train_fn

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on this node's partition."""
    torch.manual_seed(int(context.node_config["partition-id"]))
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loader = load_data(int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]),
                       int(context.run_config["batch-size"]))
    loss = train_fn(model, loader, int(context.run_config["local-epochs"]), float(msg.content["config"]["lr"]))
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(loader.dataset)})
    return Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}),
                   reply_to=msg)
