"""Latent optimisation through a decoder: the synthetic batches of the paper's attack.

    min_z  CE(teacher(G(z)), y_t) + lambda_z ||z||^2 + lambda_tv TV(G(z))
           - lambda_align cos(grad_w CE(f_w(G(z)), y_t), grad_w L_proxy_val(f_w))

f_w is the current global model (an eval-mode copy) and L_proxy_val a class-balanced CE on probes
the attacker holds. The alignment term is differentiated through the gradient (double backward).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from fedattr.attacks._util import seeded
from fedattr.attacks.objective import (
    frozen_copy, gradient_cosine, proxy_gradient, target_probability, total_variation,
)


@dataclass
class SyntheticBatch:
    """Synthetic images (N, C, H, W) in [0, 1] on the CPU, their int64 labels, and diagnostics."""

    x: torch.Tensor
    y: torch.Tensor
    diagnostics: dict[str, float] = field(default_factory=dict)


def batch_alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g_val: torch.Tensor | None) -> float:
    """cos(grad_w CE(model(x), y), g_val) as a float; NaN without a proxy gradient or data."""
    if g_val is None or len(y) == 0:
        return math.nan
    return float(gradient_cosine(model, x, y, g_val, create_graph=False))


@dataclass
class LatentOptimiser:
    """Adam on latent codes z of a decoder: teacher CE + z prior + TV - gradient alignment (defaults below).

    ``candidates`` random codes are drawn per synthetic example and the one the teacher finds
    most confidently in its target class starts the optimisation (a cheap warm start).
    """

    steps: int = 30
    step_lr: float = 0.1
    lambda_z: float = 5e-3
    lambda_tv: float = 0.0
    lambda_align: float = 1.0
    candidates: int = 8

    def optimise(
        self,
        decode: Callable[[torch.Tensor], torch.Tensor],
        latent_dim: int,
        teacher: nn.Module,
        global_model: nn.Module,
        labels: torch.Tensor,
        x_proxy: torch.Tensor,
        y_proxy: torch.Tensor,
        *,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> SyntheticBatch:
        """Synthetic images of class ``labels`` (one per entry) and before/after diagnostics."""
        device = torch.device(device)
        start = time.perf_counter()
        y = labels.long().to(device)
        n = len(y)
        if n == 0:
            with torch.no_grad():
                empty = decode(torch.zeros(0, latent_dim, device=device)).cpu()
            return SyntheticBatch(empty, labels.long().cpu(), {})
        model = frozen_copy(global_model, device)
        g_val = proxy_gradient(model, x_proxy.to(device), y_proxy.to(device)) if len(y_proxy) else None
        with seeded(seed, device):
            k = max(1, self.candidates)
            pool = torch.randn(n, k, latent_dim, device=device)
            with torch.no_grad():
                imgs = decode(pool.view(n * k, latent_dim))
                p_pool = target_probability(teacher, imgs, y.repeat_interleave(k)).view(n, k)
            best = p_pool.argmax(1)
            z = pool[torch.arange(n, device=device), best].clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=self.step_lr)
            x0 = decode(z).detach()
            before = {
                "teacher_prob_random": float(p_pool.mean()),
                "teacher_prob_before": float(target_probability(teacher, x0, y).mean()),
                "alignment_before": batch_alignment(model, x0, y, g_val),
            }
            for _ in range(self.steps):
                x = decode(z)
                loss = F.cross_entropy(teacher(x), y) + self.lambda_z * z.pow(2).sum(1).mean()
                if self.lambda_tv:
                    loss = loss + self.lambda_tv * total_variation(x)
                if self.lambda_align and g_val is not None:
                    loss = loss - self.lambda_align * gradient_cosine(model, x, y, g_val, create_graph=True)
                (grad,) = torch.autograd.grad(loss, [z])
                opt.zero_grad(set_to_none=True)
                z.grad = grad
                opt.step()
        with torch.no_grad():
            x = decode(z.detach())
            p_after = target_probability(teacher, x, y)
            confident = float((teacher(x).argmax(1) == y).float().mean())
            global_prob = float(target_probability(model, x, y).mean())
        diagnostics = {
            **before,
            "teacher_prob_after": float(p_after.mean()),
            "teacher_confident_fraction": confident,
            "global_prob_after": global_prob,
            "alignment_after": batch_alignment(model, x, y, g_val),
            "z_sq_norm_per_dim": float(z.detach().pow(2).mean()),
            "tv_after": float(total_variation(x)),
            "optimisation_steps": float(self.steps),
            "optimisation_seconds": time.perf_counter() - start,
        }
        return SyntheticBatch(x.detach().cpu(), y.cpu(), diagnostics)
