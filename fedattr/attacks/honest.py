"""The two reference arms: an honest attacker, and the noise floor of attribution (honest, other seed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedattr.attacks.base import Attack, AttackContext
from fedattr.core.errors import UserError


@dataclass(kw_only=True)
class HonestAttack(Attack):
    """Trains honestly on its local data with the benign seed: its reply equals the counterfactual."""

    name: ClassVar[str] = "honest"


@dataclass(kw_only=True)
class NoiseFloorAttack(Attack):
    """Honest data, but the minibatch order of seed + ``seed_offset``: how far attribution moves by chance."""

    name: ClassVar[str] = "noise_floor"
    seed_offset: int = 1000

    def validate(self) -> None:
        if self.seed_offset == 0:
            raise UserError("attack 'noise_floor': seed_offset must be non-zero (0 is the honest run)")

    def train_seed(self, ctx: AttackContext, seed: int) -> int:
        return seed + self.seed_offset
