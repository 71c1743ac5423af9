"""Update-level baselines: scale the update, or send none (free rider)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedattr.attacks._util import StateDict, derive_seed, scale_update
from fedattr.attacks.base import Attack, AttackContext
from fedattr.core.errors import UserError

FREE_RIDER_MODES = ("zero", "noise")


@dataclass(kw_only=True)
class ScalingAttack(Attack):
    """Trains honestly and sends w_t + factor * (w - w_t) on float entries (integer buffers as trained)."""

    name: ClassVar[str] = "scaling"
    factor: float = 3.0

    def validate(self) -> None:
        if self.factor <= 0:
            raise UserError(f"attack 'scaling': factor must be > 0, got {self.factor}")

    def transform_state(self, ctx: AttackContext, w_t: StateDict, w_attacked: StateDict, w_honest: StateDict) -> StateDict:
        ctx.metrics["scale_factor"] = float(self.factor)
        return scale_update(w_t, w_attacked, self.factor)


@dataclass(kw_only=True)
class FreeRiderAttack(Attack):
    """Sends w_t unchanged (``mode="zero"``) or w_t + N(0, noise_std^2) on float weights (``mode="noise"``).

    The noise skips BatchNorm running statistics, which a training step would not randomise.
    It still reports its local count, so FedAvg gives it its usual weight.
    """

    name: ClassVar[str] = "free_rider"
    mode: str = "zero"
    noise_std: float = 1e-3

    def validate(self) -> None:
        if self.mode not in FREE_RIDER_MODES:
            raise UserError(f"attack 'free_rider': mode must be one of {list(FREE_RIDER_MODES)}, got {self.mode!r}")
        if self.noise_std < 0:
            raise UserError(f"attack 'free_rider': noise_std must be >= 0, got {self.noise_std}")

    def transform_state(self, ctx: AttackContext, w_t: StateDict, w_attacked: StateDict, w_honest: StateDict) -> StateDict:
        out = {k: v.clone() for k, v in w_t.items()}
        if self.mode == "noise":
            gen = torch.Generator().manual_seed(derive_seed(ctx.seed, ctx.server_round, self.name))
            for k, v in out.items():
                if v.is_floating_point() and not k.endswith(("running_mean", "running_var")):
                    out[k] = v + (self.noise_std * torch.randn(v.shape, generator=gen)).to(v.dtype)
        return out
