"""The attack registry: registry name -> class, construction from a scenario's parameters."""

from __future__ import annotations

import dataclasses
from typing import Any

from fedattr.attacks.adaptive import MixedLatentAttack
from fedattr.attacks.base import Attack
from fedattr.attacks.data_level import DuplicationAttack, LabelFlipAttack
from fedattr.attacks.honest import HonestAttack, NoiseFloorAttack
from fedattr.attacks.real import RandomRealAttack, TargetedRealAttack
from fedattr.attacks.reporting import OverreportAttack
from fedattr.attacks.synthetic import LatentAttack, PixelAttack
from fedattr.attacks.update import FreeRiderAttack, ScalingAttack
from fedattr.core.registry import Registry

#: Registry name -> attack class.
ATTACKS: Registry[type[Attack]] = Registry("attack", {
    cls.name: cls
    for cls in (
        HonestAttack, NoiseFloorAttack, LatentAttack, PixelAttack, RandomRealAttack, TargetedRealAttack,
        ScalingAttack, DuplicationAttack, FreeRiderAttack, LabelFlipAttack, OverreportAttack,
        MixedLatentAttack,
    )
})


def attack_params(name: str) -> dict[str, Any]:
    """The parameters of attack ``name`` with their defaults."""
    return {f.name: f.default for f in dataclasses.fields(ATTACKS[name])}


def make_attack(name: str, **params: Any) -> Attack:
    """Construct attack ``name``; unknown names, unknown parameters and bad values are a ``UserError``."""
    return ATTACKS.make(name, **params)
