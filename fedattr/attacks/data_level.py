"""Data-level baselines on the attacker's own data: duplicate it, or flip its labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedattr.attacks.base import Attack, AttackContext
from fedattr.core.errors import UserError


@dataclass(kw_only=True)
class DuplicationAttack(Attack):
    """Trains on ``copies`` copies of its local data and reports the duplicated count."""

    name: ClassVar[str] = "duplication"
    copies: int = 2

    def validate(self) -> None:
        if self.copies < 1:
            raise UserError(f"attack 'duplication': copies must be >= 1, got {self.copies}")

    def training_data(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.copies == 1:
            return x, y
        return x.repeat(self.copies, 1, 1, 1), y.repeat(self.copies)

    def reported_num_examples(self, ctx: AttackContext, n_local: int) -> int:
        return n_local * self.copies


@dataclass(kw_only=True)
class LabelFlipAttack(Attack):
    """Trains on flipped labels: y -> (y + shift) mod C, or ``mapping`` {from: to} where given (others kept)."""

    name: ClassVar[str] = "label_flip"
    shift: int = 1
    mapping: dict[Any, Any] | None = None

    def validate(self) -> None:
        if self.mapping is None:
            return
        if not isinstance(self.mapping, dict):
            raise UserError(f"attack 'label_flip': mapping must be a table {{from = to}}, got {self.mapping!r}")
        try:
            # TOML table keys are strings: accept "3" as class 3.
            self.mapping = {int(k): int(v) for k, v in self.mapping.items()}
        except (TypeError, ValueError):
            raise UserError(f"attack 'label_flip': mapping keys and values must be class indices, got {self.mapping!r}") from None

    def check_classes(self, num_classes: int) -> None:
        bad = [c for pair in (self.mapping or {}).items() for c in pair if not 0 <= c < num_classes]
        if bad:
            raise UserError(f"attack 'label_flip': mapping uses classes {sorted(set(bad))} outside 0..{num_classes - 1}")

    def flip(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The flipped labels."""
        if self.mapping is None:
            return (y + self.shift) % num_classes
        self.check_classes(num_classes)
        table = torch.arange(num_classes)
        for src, dst in self.mapping.items():
            table[src] = dst
        return table[y]

    def training_data(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flipped = self.flip(y, ctx.num_classes)
        ctx.metrics["flipped_fraction"] = float((flipped != y).float().mean()) if len(y) else 0.0
        return x, flipped
