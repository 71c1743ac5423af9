"""Latent optimisation through a decoder: the synthetic batches of the paper's attack.

    min_z  CE(teacher(G(z)), y_t) + lambda_z ||z||^2 + lambda_tv TV(G(z))
           - lambda_align cos(grad_w CE(f_w(G(z)), y_t), grad_w L_proxy_val(f_w))

f_w is the current global model (an eval-mode copy) and L_proxy_val a class-balanced CE on probes
the attacker holds. The alignment term is differentiated through the gradient (double backward).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from fedattr.attacks._util import seeded
from fedattr.attacks.objective import (
    after_diagnostics, batch_alignment, descend, frozen_copy, proxy_gradient, target_probability,
)


@dataclass
class SyntheticBatch:
    """Synthetic images (N, C, H, W) in [0, 1] on the CPU, their int64 labels, and diagnostics."""

    x: torch.Tensor
    y: torch.Tensor
    diagnostics: dict[str, float] = field(default_factory=dict)


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
            descend(z, opt, decode, teacher, y, self.steps, model=model, g_val=g_val, lambda_tv=self.lambda_tv,
                    lambda_align=self.lambda_align, before_tv=lambda z, x: self.lambda_z * z.pow(2).sum(1).mean())
        with torch.no_grad():
            x = decode(z.detach())
        diagnostics = {
            **before,
            **after_diagnostics(teacher, model, x, y, g_val),
            "z_sq_norm_per_dim": float(z.detach().pow(2).mean()),
            "optimisation_steps": float(self.steps),
            "optimisation_seconds": time.perf_counter() - start,
        }
        return SyntheticBatch(x.detach().cpu(), y.cpu(), diagnostics)
