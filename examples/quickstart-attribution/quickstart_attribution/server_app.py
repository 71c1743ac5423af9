"""The ServerApp: FedAvg wrapped by fedattr's AttributedStrategy, which values every client's update."""

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedattr import AttributedStrategy
from quickstart_attribution.task import Net, load_server_data, test

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    torch.manual_seed(0)  # the initial model
    x_val, y_val, x_test, y_test = load_server_data()

    def central_evaluate(arrays: ArrayRecord) -> dict[str, float]:
        net = Net()
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = test(net, x_test, y_test)
        return {"loss": loss, "accuracy": accuracy}

    # The attribution: the strategy the quickstart uses, wrapped; values of every round in memory,
    # printed, and (with out-dir) written as fedattr results.
    strategy = AttributedStrategy(
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0),
        model=Net(), x_val=x_val, y_val=y_val, evaluators=str(cfg["evaluators"]).split(","),
        central_evaluate=central_evaluate, out_dir=str(cfg["out-dir"]) or None,
        on_round=lambda r: print(f"round {r.round}: accuracy {r.test['accuracy']:.3f}, values {r.values}"),
    )
    strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()),
                   num_rounds=int(cfg["num-server-rounds"]), train_config=ConfigRecord({"lr": float(cfg["lr"])}))
    for evaluator, totals in strategy.totals.cumulative.items():
        print(f"cumulative {evaluator}: " + ", ".join(f"client {c}: {v:+.4f}" for c, v in sorted(totals.items())))
