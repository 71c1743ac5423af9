"""The attacker's teacher: a fresh copy of the global architecture fitted to the data the attacker holds.

It labels what the generator makes. It is trained from a seeded re-initialisation, not from w_t,
so it is a pure function of (architecture, data, config, seed) and can be cached on disk: an
attacker process that lost its in-memory state rebuilds the very same teacher.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedattr.attacks._util import architecture_signature, atomic_save, config_key, seeded, tensor_fingerprint
from fedattr.core.errors import UserError
from fedattr.learning.training import evaluate, train_local

FORMAT_VERSION = 1


@dataclass
class TeacherTrainer:
    """Trains a teacher with minibatch SGD (momentum) from a seeded re-initialisation of ``template``."""

    epochs: int = 15
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def train(
        self, template: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int,
        device: torch.device | str = "cpu", cache_dir: str | Path | None = None,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """The trained teacher (eval mode) and info: key, path, cached, train accuracy, seconds."""
        if len(y) == 0:
            raise UserError("the attacker's teacher needs training data, and it holds none")
        device = torch.device(device)
        config = {"format": FORMAT_VERSION, **asdict(self), "seed": seed, "arch": architecture_signature(template)}
        key = config_key(config, tensor_fingerprint(x, y))
        teacher = copy.deepcopy(template).to(device)
        path = None if cache_dir is None else Path(cache_dir) / f"teacher-{key[:20]}.pt"
        start = time.perf_counter()
        if path is not None and path.is_file():
            try:
                payload = torch.load(path, map_location="cpu", weights_only=True)
                if payload.get("key") == key:
                    teacher.load_state_dict(payload["state_dict"])
                    return teacher.eval(), {"key": key, "path": str(path), "cached": True,
                                            "train_accuracy": payload["train_accuracy"],
                                            "seconds": time.perf_counter() - start}
            except Exception:  # an unreadable cache entry is simply retrained and overwritten
                pass
        with seeded(seed, device):
            for m in teacher.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        for p in teacher.parameters():
            p.requires_grad_(True)
        train_local(
            teacher, x, y, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            momentum=self.momentum, weight_decay=self.weight_decay, seed=seed, device=device,
        )
        acc = evaluate(teacher, x, y, device=device)["accuracy"]
        teacher.eval()
        if path is not None:
            atomic_save({"key": key, "state_dict": {k: v.detach().cpu() for k, v in teacher.state_dict().items()},
                         "train_accuracy": acc}, path)
        return teacher, {"key": key, "path": None if path is None else str(path), "cached": False,
                         "train_accuracy": acc, "seconds": time.perf_counter() - start}
