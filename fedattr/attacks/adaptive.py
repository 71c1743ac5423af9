"""An adaptive attacker that knows the scoring rule: real public images mixed into the synthetic batch.

Against a rule that discounts what the public generator produces (``reference_player``) or flags a
generator's footprint, the attacker's best move is to look less synthetic: ``latent_mixed``
injects the latent attack's batch with a share ``real_share`` of it replaced by REAL public
auxiliary images of the same target classes (what ``targeted_real`` injects), the rest still
latent-optimised. ``real_share = 0`` is the latent attack, ``1`` the targeted-real control; a
smaller ``synthetic_fraction`` lowers the batch itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedattr.attacks.base import AttackContext
from fedattr.attacks.latent import SyntheticBatch
from fedattr.attacks.real import aux_split, sample_real
from fedattr.attacks.synthetic import LatentAttack
from fedattr.core.errors import UserError


def split_labels(labels: torch.Tensor, real_share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(real, synthetic)`` labels: every ``k``-th label of each class goes real so that each class
    keeps the share; ``round(real_share * count)`` of the batch in all, the first ones of each class."""
    labels = torch.as_tensor(labels).long()
    real = torch.zeros(len(labels), dtype=torch.bool)
    for c in torch.unique(labels):
        pos = torch.nonzero(labels == c).reshape(-1)
        real[pos[: int(round(real_share * len(pos)))]] = True
    return labels[real], labels[~real]


@dataclass(kw_only=True)
class MixedLatentAttack(LatentAttack):
    """The latent attack with a share ``real_share`` of its injected images real public images of the targets."""

    name: ClassVar[str] = "latent_mixed"
    real_share: float = 0.5

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.real_share <= 1.0:
            raise UserError(f"attack 'latent_mixed': real_share must be in [0, 1], got {self.real_share}")

    def make_batch(self, ctx: AttackContext, labels: torch.Tensor, seed: int) -> SyntheticBatch:
        real_y, synth_y = split_labels(labels, self.real_share)
        parts = []
        if len(real_y):
            x_aux, y_aux = aux_split(ctx, self.name)
            parts.append(sample_real(x_aux, y_aux, real_y, seed))
        if len(synth_y):
            parts.append(super().make_batch(ctx, synth_y, seed))
        diagnostics = {k: v for p in parts for k, v in p.diagnostics.items()}
        diagnostics["real_count"] = float(len(parts[0].y) if len(real_y) else 0)
        x = torch.cat([p.x.cpu() for p in parts])
        y = torch.cat([p.y.cpu().long() for p in parts])
        return SyntheticBatch(x, y, diagnostics)
