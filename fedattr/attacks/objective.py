"""Loss terms shared by latent and pixel optimisation.

The alignment term is a first-order proxy of marginal utility: one SGD step on a batch whose
gradient points along the gradient of a validation loss lowers that loss most, so the attacker
aligns its synthetic batch's gradient with a class-balanced proxy validation loss it can compute.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

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


def batch_alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g_val: torch.Tensor | None) -> float:
    """cos(grad_w CE(model(x), y), g_val) as a float; NaN without a proxy gradient or data."""
    if g_val is None or len(y) == 0:
        return math.nan
    return float(gradient_cosine(model, x, y, g_val, create_graph=False))


def descend(
    param: torch.Tensor,
    opt: torch.optim.Optimizer,
    render: Callable[[torch.Tensor], torch.Tensor],
    teacher: nn.Module,
    y: torch.Tensor,
    steps: int,
    *,
    model: nn.Module,
    g_val: torch.Tensor | None,
    lambda_tv: float,
    lambda_align: float,
    before_tv: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    after_tv: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """``steps`` optimiser steps on ``param`` (latent codes or pixel logits) rendered to images.

    The objective is CE(teacher(x), y) [+ before_tv(param, x)] + lambda_tv TV(x)
    [+ after_tv(param, x)] - lambda_align cos(grad_w L(x, y), g_val); the terms are added in this
    order, so an attack's images do not depend on which attack's code path built the loss.
    """
    for _ in range(steps):
        x = render(param)
        loss = F.cross_entropy(teacher(x), y)
        if before_tv is not None:
            loss = loss + before_tv(param, x)
        if lambda_tv:
            loss = loss + lambda_tv * total_variation(x)
        if after_tv is not None:
            loss = loss + after_tv(param, x)
        if lambda_align and g_val is not None:
            loss = loss - lambda_align * gradient_cosine(model, x, y, g_val, create_graph=True)
        (grad,) = torch.autograd.grad(loss, [param])
        opt.zero_grad(set_to_none=True)
        param.grad = grad
        opt.step()


@torch.no_grad()
def _teacher_scores(teacher: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {"teacher_prob_after": float(target_probability(teacher, x, y).mean()),
            "teacher_confident_fraction": float((teacher(x).argmax(1) == y).float().mean()),
            "global_prob_after": float(target_probability(model, x, y).mean())}


def after_diagnostics(teacher: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      g_val: torch.Tensor | None) -> dict[str, float]:
    """What the optimised images achieve: the teacher's and the global model's probability of the
    target class, the teacher's confident share, the gradient alignment and the images' TV."""
    return {**_teacher_scores(teacher, model, x, y), "alignment_after": batch_alignment(model, x, y, g_val),
            "tv_after": float(total_variation(x))}
