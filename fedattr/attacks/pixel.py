"""The no-generator variant: optimise pixels directly, needing only the attacker's data and the global model.

    min_u  CE(teacher(x), y_t) + lambda_tv TV(x) + lambda_bn R_bn(x)
           - lambda_align cos(grad_w CE(f_w(x), y_t), grad_w L_proxy_val(f_w)),   x = sigmoid(u)

R_bn is the BatchNorm-statistics prior of DeepInversion (Yin et al., CVPR 2020), reimplemented
from the paper: for every BatchNorm layer of a reference model, the L2 distances between the batch
mean/variance of the layer's input features and the layer's running mean/variance, summed over
layers. It is skipped (and reported as NaN) when the reference model has no BatchNorm.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from fedattr.attacks._util import seeded
from fedattr.attacks.latent import SyntheticBatch
from fedattr.attacks.objective import (
    after_diagnostics, batch_alignment, descend, frozen_copy, proxy_gradient, target_probability,
)


class BNStatsPrior:
    """Collects, during forward passes of a model, the DeepInversion BatchNorm feature-statistics distance."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.terms: list[torch.Tensor] = []
        self.handles: list = []

    @property
    def layers(self) -> int:
        """How many BatchNorm layers the reference model has."""
        return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        h = inputs[0]
        dims = [0] + list(range(2, h.dim()))  # per channel: over batch and spatial positions
        mean = h.mean(dims)
        var = h.var(dims, unbiased=False)
        self.terms.append(torch.norm(mean - module.running_mean, 2) + torch.norm(var - module.running_var, 2))

    def __enter__(self) -> "BNStatsPrior":
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                self.handles.append(m.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Run the reference model on ``x`` and return the summed statistics distance (0 without BN)."""
        self.terms.clear()
        self.model(x)
        out = torch.stack(self.terms).sum() if self.terms else x.new_zeros(())
        self.terms.clear()
        return out


@dataclass
class PixelOptimiser:
    """Adam on sigmoid-parametrised pixels: teacher CE + TV + BatchNorm-statistics prior - gradient alignment.

    Pixels start at sigmoid(init_std * N(0, 1)). The BatchNorm prior uses ``bn_model`` (the
    teacher or the global model, chosen by the caller) and applies only where it has BatchNorm.
    """

    steps: int = 60
    step_lr: float = 0.1
    lambda_tv: float = 0.5
    lambda_bn: float = 0.05
    lambda_align: float = 1.0
    init_std: float = 1.0

    def optimise(
        self,
        teacher: nn.Module,
        global_model: nn.Module,
        labels: torch.Tensor,
        x_proxy: torch.Tensor,
        y_proxy: torch.Tensor,
        *,
        channels: int,
        side: int,
        bn_model: nn.Module | None = None,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> SyntheticBatch:
        """Synthetic images of class ``labels`` (one per entry) and before/after diagnostics."""
        device = torch.device(device)
        start = time.perf_counter()
        y = labels.long().to(device)
        n = len(y)
        if n == 0:
            return SyntheticBatch(torch.zeros(0, channels, side, side), labels.long().cpu(), {})
        model = frozen_copy(global_model, device)
        g_val = proxy_gradient(model, x_proxy.to(device), y_proxy.to(device)) if len(y_proxy) else None
        # A frozen eval-mode copy: forward hooks and eval statistics, never a running-stat update.
        ref = frozen_copy(bn_model if bn_model is not None else teacher, device)
        prior = BNStatsPrior(ref)
        use_bn = bool(self.lambda_bn) and prior.layers > 0
        with seeded(seed, device), prior:
            u = (self.init_std * torch.randn(n, channels, side, side, device=device)).requires_grad_(True)
            opt = torch.optim.Adam([u], lr=self.step_lr)
            x0 = torch.sigmoid(u).detach()
            with torch.no_grad():
                bn_before = float(prior.loss(x0)) if prior.layers else math.nan
            before = {
                "teacher_prob_before": float(target_probability(teacher, x0, y).mean()),
                "alignment_before": batch_alignment(model, x0, y, g_val),
                "bn_loss_before": bn_before,
            }
            descend(u, opt, torch.sigmoid, teacher, y, self.steps, model=model, g_val=g_val,
                    lambda_tv=self.lambda_tv, lambda_align=self.lambda_align,
                    after_tv=(lambda u, x: self.lambda_bn * prior.loss(x)) if use_bn else None)
            x = torch.sigmoid(u.detach())
            with torch.no_grad():
                bn_after = float(prior.loss(x)) if prior.layers else math.nan
        diagnostics = {
            **before,
            **after_diagnostics(teacher, model, x, y, g_val),
            "bn_layers": float(prior.layers),
            "bn_loss_after": bn_after,
            "optimisation_steps": float(self.steps),
            "optimisation_seconds": time.perf_counter() - start,
        }
        return SyntheticBatch(x.cpu(), y.cpu(), diagnostics)
