"""The reporting baseline: honest weights, inflated num-examples (FedAvg weights by the count)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedattr.attacks.base import Attack, AttackContext
from fedattr.core.errors import UserError


@dataclass(kw_only=True)
class OverreportAttack(Attack):
    """Trains honestly and reports round(n_local * factor) examples."""

    name: ClassVar[str] = "overreport"
    factor: float = 5.0

    def validate(self) -> None:
        if self.factor <= 0:
            raise UserError(f"attack 'overreport': factor must be > 0, got {self.factor}")

    def reported_num_examples(self, ctx: AttackContext, n_local: int) -> int:
        return int(round(n_local * self.factor))
