"""Loss terms shared by latent and pixel optimisation.

The alignment term is a first-order proxy of marginal utility: one SGD step on a batch whose
gradient points along the gradient of a validation loss lowers that loss most, so the attacker
aligns its synthetic batch's gradient with a class-balanced proxy validation loss it can compute.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F


def balanced_probes(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, per_class: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``per_class`` seeded random examples of each class present in (x, y)."""
    gen = torch.Generator().manual_seed(int(seed))
    picks = []
    for c in range(num_classes):
        idx = (y == c).nonzero().flatten()
        if len(idx):
            picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    if not picks:
        return x[:0], y[:0]
    sel = torch.cat(picks)
    return x[sel], y[sel]


def class_balanced_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over the classes present of each class's mean cross-entropy."""
    per = F.cross_entropy(logits, y, reduction="none")
    counts = torch.bincount(y, minlength=logits.shape[1]).to(per.dtype)
    present = int((counts > 0).sum())
    return (per / counts[y]).sum() / max(present, 1)


def frozen_copy(model: nn.Module, device: torch.device | str) -> nn.Module:
    """An eval-mode copy whose weights still require grad (gradients w.r.t. w are needed, not updates)."""
    m = copy.deepcopy(model).to(device).eval()
    for p in m.parameters():
        p.requires_grad_(True)
    return m


def proxy_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Flattened gradient w.r.t. ``model``'s parameters of the class-balanced CE on (x, y)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(class_balanced_ce(model(x), y), params)
    return torch.cat([g.flatten() for g in grads]).detach()


def gradient_cosine(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, g_val: torch.Tensor, *, create_graph: bool
) -> torch.Tensor:
    """cos(grad_w CE(model(x), y), g_val); with ``create_graph`` it is differentiable w.r.t. x."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=create_graph)
    g = torch.cat([gr.flatten() for gr in grads])
    return F.cosine_similarity(g, g_val, dim=0, eps=1e-12)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (anisotropic TV), averaged over the batch."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean()
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean()
    return dh + dw


@torch.no_grad()
def target_probability(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example probability that ``model`` gives to the label ``y``."""
    return F.softmax(model(x), 1).gather(1, y[:, None]).squeeze(1)
