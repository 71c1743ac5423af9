"""Local training and evaluation loops (plain PyTorch, seeded, device-agnostic)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _extra_seed(seed: int) -> int:
    # The extra images' order has its own stream, so the real minibatch order never depends on them.
    return (int(seed) * 2_654_435_761 + 97) % (2**63 - 1)


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
    extra_x: torch.Tensor | None = None,
    extra_y: torch.Tensor | None = None,
    trace: bool = False,
) -> dict:
    """Run ``epochs`` of minibatch SGD on (x, y) in place; return the mean loss and step count.

    The minibatch order comes from its own generator seeded with ``seed``, so a run is
    reproducible whatever else has consumed the global RNG.

    Extra images (``extra_x``, ``extra_y``) ride along with the real minibatches: each epoch they
    are shuffled by a separate generator, cut into as many near-equal chunks as there are steps,
    and chunk j is appended to real minibatch j. The real minibatches, their order and the number
    of steps are exactly those of the run without extras, so the two runs differ only by the
    extra images; with no extras the run is the plain one, bit for bit.

    With ``trace=True`` the result also holds ``real_order`` (the real indices in the order they
    were used, one tensor over all epochs) and ``extra_per_step`` (extras added at each step).
    """
    device = torch.device(device)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    n = len(y)
    n_extra = 0 if extra_y is None else len(extra_y)
    if extra_x is not None and extra_y is not None and len(extra_x) != n_extra:
        raise ValueError(f"extra_x has {len(extra_x)} images but extra_y {n_extra} labels")
    out: dict = {"loss": 0.0, "steps": 0}
    if trace:
        out.update(real_order=torch.zeros(0, dtype=torch.long), extra_per_step=[])
    if n == 0:
        return out
    # BatchNorm cannot train on a single example: a final real minibatch of one is skipped, in
    # both runs alike, so the decision looks at the real minibatch only.
    skip_single = n >= 2 and _has_batchnorm(model)
    starts = [s for s in range(0, n, batch_size) if not (skip_single and min(batch_size, n - s) < 2)]
    extra_gen = torch.Generator().manual_seed(_extra_seed(seed)) if n_extra else None
    total, steps, used, per_step = 0.0, 0, [], []
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        chunks: list[torch.Tensor] = []
        if n_extra and starts:
            chunks = list(torch.tensor_split(torch.randperm(n_extra, generator=extra_gen), len(starts)))
        for j, start in enumerate(starts):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            k = 0
            if chunks and len(chunks[j]):
                xb = torch.cat([xb, extra_x[chunks[j]].to(xb.device, xb.dtype)])
                yb = torch.cat([yb, extra_y[chunks[j]].to(yb.device, yb.dtype)])
                k = len(chunks[j])
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
            per_step.append(k)
            if trace:
                used.append(idx)
    out.update(loss=total / max(steps, 1), steps=steps)
    if trace:
        out.update(real_order=torch.cat(used) if used else out["real_order"], extra_per_step=per_step)
    return out


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
