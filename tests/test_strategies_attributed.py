"""fedattr.strategies.attributed: the global model keeps its dtypes from round to round.

Flower's FedAvg averages a BatchNorm model's integer ``num_batches_tracked`` into a float; without
the cast back (``keep_dtypes``), every honest reply of the next round, integers again, fails the
screen's dtype check and the round has no valid reply.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from fedattr.strategies import AttributedStrategy
from fedattr.strategies.attributed import keep_dtypes

KEY = "1.num_batches_tracked"


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _bn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))


def _trained_state(seed: int) -> dict:
    model = _bn_model(seed)
    model.train()
    for _ in range(seed + 1):  # batches seen differ per client, so the counts differ
        model(torch.randn(4, 1, 4, 4))
    return model.state_dict()


class _Grid:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return list(self.nodes)


def _stock_reply(state: dict, n: int, sent: Message) -> Message:
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": n})})
    return Message(content=content, reply_to=sent)


def test_keep_dtypes_rounds_and_casts_only_the_arrays_whose_dtype_changed():
    reference = {"w": np.zeros(2, dtype=np.float32), "n": np.array(3, dtype=np.int64)}
    averaged = ArrayRecord(torch_state_dict={"w": torch.tensor([0.5, 1.5]), "n": torch.tensor(2.6, dtype=torch.float64)})
    kept = keep_dtypes(averaged, reference)
    assert kept["n"].numpy().dtype == np.int64 and int(kept["n"].numpy()) == 3
    assert kept["w"].numpy().dtype == np.float32 and np.array_equal(kept["w"].numpy(), [0.5, 1.5])
    already = ArrayRecord(torch_state_dict={"w": torch.tensor([0.5, 1.5]), "n": torch.tensor(2)})
    assert keep_dtypes(already, reference) is already


def test_a_batchnorm_model_is_attributed_round_after_round_with_fedavg():
    torch.manual_seed(1)
    x_val, y_val = torch.randn(30, 1, 4, 4), torch.randint(0, 3, (30,))
    strategy = AttributedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3),
                                  model=_bn_model(), x_val=x_val, y_val=y_val, evaluators=["loo"])
    grid = _Grid([11, 12, 13])
    arrays = ArrayRecord(_bn_model().state_dict())
    assert arrays[KEY].numpy().dtype == np.int64
    for server_round in (1, 2, 3):
        sent = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        replies = [_stock_reply(_trained_state(i), 10 * (i + 1), m) for i, m in enumerate(sent)]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        assert arrays[KEY].numpy().dtype == np.int64
        assert strategy.rounds_[-1].rejected == [], strategy.rounds_[-1].rejected
        assert sorted(strategy.rounds_[-1].values["loo"]) == [0, 1, 2]
