"""Local training and evaluation loops (plain PyTorch, seeded, device-agnostic)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Run ``epochs`` of minibatch SGD on (x, y) in place; return the mean loss and step count.

    The minibatch order comes from its own generator seeded with ``seed``, so a run is
    reproducible whatever else has consumed the global RNG.
    """
    device = torch.device(device)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    total, steps = 0.0, 0
    n = len(y)
    if n == 0:
        return {"loss": 0.0, "steps": 0}
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2 and n >= 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
                continue  # BatchNorm cannot train on a single example
            xb, yb = x[idx].to(device), y[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
    return {"loss": total / max(steps, 1), "steps": steps}


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on (x, y)."""
    device = torch.device(device)
    model.to(device).eval()
    correct, loss, n = 0, 0.0, len(y)
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        logits = model(xb)
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    return {"accuracy": correct / max(n, 1), "loss": loss / max(n, 1)}


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG (used by model initialisation) and pin CPU determinism."""
    torch.manual_seed(int(seed))
    torch.use_deterministic_algorithms(True, warn_only=True)
