"""What a job builds on one machine: data splits, a client's partition, the model, seeds.

A :class:`Job` pairs the typed job spec (``fedattr.protocol.JobSpec``, what to compute, the same
everywhere) with where this process finds its data (``data_dir``, from the node's settings or the
server's scenario). The server is the only reader of scenario files (``fedattr.scenario.plan``
turns one into job specs); clients rebuild everything from the spec, so one ServerApp run can
execute many jobs back to back over the same nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedattr.learning.data import Splits, load_splits, partition_from_spec
from fedattr.learning.models import build_model
from fedattr.protocol import JobSpec


@dataclass(frozen=True)
class Job:
    """One (arm, seed) run of a scenario, as seen from one process.

    Parameters
    ----------
    spec : JobSpec
        What to compute.
    data_dir : str, optional
        Where this process finds downloaded datasets (None = the data module's default).
    """

    spec: JobSpec
    data_dir: str | None = None

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def seed(self) -> int:
        return int(self.spec.seed)

    @property
    def attacker_ids(self) -> list[int]:
        return [int(i) for i in self.spec.attacker_ids]

    def splits(self) -> Splits:
        d = self.spec.data
        return load_splits(d.dataset, self.data_dir, d.val_size, d.test_size, d.aux_size, d.pool_size, d.split_seed)

    def partition_seed(self) -> int:
        """Seed of the client partitions: ``partition.seed`` when set, else the run seed."""
        p = self.spec.partition
        return self.seed if p.seed is None else int(p.seed)

    def partition(self, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One client's (images, labels)."""
        return partition_from_spec(self.splits(), partition_id, int(self.spec.num_clients),
                                   self.spec.partition.model_dump(), seed=self.partition_seed(),
                                   attacker_ids=self.attacker_ids)

    def build_model(self) -> torch.nn.Module:
        s = self.splits()
        return build_model(self.spec.model, s.num_classes, s.channels, s.side)

    def train_kwargs(self) -> dict[str, Any]:
        """Local SGD settings of every client (the attacker's honest part included)."""
        t = self.spec.train
        return dict(epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr, momentum=t.momentum,
                    weight_decay=t.weight_decay)

    def client_seed(self, server_round: int, partition_id: int) -> int:
        """Seed of one client's local training in one round (minibatch order)."""
        return (self.seed * 1_000_003 + server_round * 10_007 + partition_id * 101) % (2**31 - 1)
