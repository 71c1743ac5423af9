"""Real-data controls for the latent attack: inject REAL public auxiliary images instead of synthetic ones.

``random_real`` asks whether targeting matters (random classes); ``targeted_real`` asks whether
latent optimisation matters (the under-covered classes, as if the generator were perfect).
Both inject the same number of images as the synthetic attacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedattr.attacks.base import AttackContext
from fedattr.attacks.inject import InjectionAttack, TargetedInjection
from fedattr.attacks.latent import SyntheticBatch
from fedattr.core.errors import UserError


def aux_split(ctx: AttackContext, attack: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The public auxiliary split, or a UserError naming the attack that needs it."""
    if ctx.x_aux is None or ctx.y_aux is None or len(ctx.y_aux) == 0:
        raise UserError(f"attack {attack!r} needs the public auxiliary split; set data.aux_size > 0")
    return ctx.x_aux, ctx.y_aux


def sample_real(x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, seed: int) -> SyntheticBatch:
    """Real images of the requested labels, drawn without replacement while a class lasts, then cycled.

    Labels whose class has no image in (x, y) are dropped (reported as ``dropped_labels``).
    """
    gen = torch.Generator().manual_seed(int(seed))
    picks, kept, dropped = [], [], 0
    for c in sorted(set(labels.tolist())):
        need = int((labels == c).sum())
        idx = (y == c).nonzero().flatten()
        if len(idx) == 0:
            dropped += need
            continue
        order = idx[torch.randperm(len(idx), generator=gen)]
        picks.append(order[torch.arange(need) % len(order)])
        kept += [c] * need
    if not picks:
        return SyntheticBatch(x[:0].clone(), torch.zeros(0, dtype=torch.long), {"dropped_labels": float(dropped)})
    sel = torch.cat(picks)
    return SyntheticBatch(x[sel].clone(), y[sel].clone().long(), {"dropped_labels": float(dropped)})


@dataclass(kw_only=True)
class RandomRealAttack(InjectionAttack):
    """Injects real auxiliary images of ``num_target_classes`` classes drawn uniformly at random each refresh."""

    name: ClassVar[str] = "random_real"

    def choose_targets(self, ctx: AttackContext, seed: int) -> tuple[list[int], dict[str, Any]]:
        k = min(self.num_target_classes, ctx.num_classes)
        gen = torch.Generator().manual_seed(int(seed))
        return sorted(torch.randperm(ctx.num_classes, generator=gen)[:k].tolist()), {"coverage_method": "random"}

    def make_batch(self, ctx: AttackContext, labels: torch.Tensor, seed: int) -> SyntheticBatch:
        x_aux, y_aux = aux_split(ctx, self.name)
        return sample_real(x_aux, y_aux, labels, seed)


@dataclass(kw_only=True)
class TargetedRealAttack(TargetedInjection):
    """Injects real auxiliary images of the under-covered target classes (a perfect generator)."""

    name: ClassVar[str] = "targeted_real"

    def make_batch(self, ctx: AttackContext, labels: torch.Tensor, seed: int) -> SyntheticBatch:
        x_aux, y_aux = aux_split(ctx, self.name)
        return sample_real(x_aux, y_aux, labels, seed)
