"""The job specification that travels to clients in every train message, and what it builds.

The server is the only reader of scenario files. For each (arm, seed) job it sends a flat JSON
"job" string in the train ConfigRecord; clients rebuild their data partition and model from it.
Because the arm and seed travel in the message, one ServerApp run can execute many jobs
back to back over the same connected nodes (start-up is paid once per sweep).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from fedattr.data import Splits, client_partition, load_splits
from fedattr.models import build_model

#: Testbed-only reply records (counterfactual honest update, attack diagnostics): the attacker
#: adds them, the strategy strips them before aggregation.
COUNTERFACTUAL_KEY = "testbed.counterfactual"
ATTACK_METRICS_KEY = "testbed.attack"


@dataclass(frozen=True)
class Job:
    """One (arm, seed) run of a scenario, as clients and the server see it."""

    spec: dict[str, Any]

    @classmethod
    def from_json(cls, text: str) -> "Job":
        return cls(json.loads(text))

    def to_json(self) -> str:
        return json.dumps(self.spec, sort_keys=True)

    @property
    def job_id(self) -> str:
        return self.spec["job_id"]

    @property
    def seed(self) -> int:
        return int(self.spec["seed"])

    @property
    def attacker_ids(self) -> list[int]:
        return [int(i) for i in self.spec["attacker_ids"]]

    def splits(self) -> Splits:
        d = self.spec["data"]
        return load_splits(
            d["dataset"], d.get("data_dir"), d["val_size"], d["test_size"], d["aux_size"],
            d.get("pool_size"), d["split_seed"],
        )

    def partition_seed(self) -> int:
        p = self.spec["partition"]
        return self.seed if p.get("seed") is None else int(p["seed"])

    def partition(self, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.spec["partition"]
        return client_partition(
            self.splits(), partition_id, p["kind"], int(self.spec["num_clients"]),
            alpha=float(p["alpha"]), classes_per_client=int(p["classes_per_client"]),
            min_partition_size=int(p["min_partition_size"]), seed=self.partition_seed(),
        )

    def build_model(self) -> torch.nn.Module:
        s = self.splits()
        return build_model(self.spec["model"], s.num_classes, s.channels, s.side)

    def client_seed(self, server_round: int, partition_id: int) -> int:
        """Seed of one client's local training in one round (minibatch order)."""
        return (self.seed * 1_000_003 + server_round * 10_007 + partition_id * 101) % (2**31 - 1)


def job_spec(scenario: Any, arm: Any, seed: int, *, job_id: str, cache_dir: str) -> dict[str, Any]:
    """Flatten one (arm, seed) of a validated scenario into the JSON-able job spec."""
    return {
        "job_id": job_id,
        "scenario_name": scenario.name,
        "arm": arm.name,
        "seed": int(seed),
        "num_clients": scenario.num_clients,
        "attacker_ids": list(scenario.attacker_ids),
        "rounds": scenario.rounds,
        "model": scenario.model,
        "data": scenario.data.model_dump(),
        "partition": scenario.partition.model_dump(),
        "train": scenario.train.model_dump(),
        "attack": {
            "name": arm.attack,
            "params": dict(arm.params),
            "start_round": arm.start_round,
            "counterfactual": arm.counterfactual,
        },
        "device": scenario.runtime.device,
        "cache_dir": cache_dir,
    }
