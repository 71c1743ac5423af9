"""The attack registry: registry name -> class, construction from a scenario's parameters."""

from __future__ import annotations

import dataclasses
from typing import Any

from fedattr.attacks.base import Attack
from fedattr.attacks.data_level import DuplicationAttack, LabelFlipAttack
from fedattr.attacks.honest import HonestAttack, NoiseFloorAttack
from fedattr.attacks.real import RandomRealAttack, TargetedRealAttack
from fedattr.attacks.reporting import OverreportAttack
from fedattr.attacks.synthetic import LatentAttack, PixelAttack
from fedattr.attacks.update import FreeRiderAttack, ScalingAttack
from fedattr.core.errors import UserError

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (
        HonestAttack, NoiseFloorAttack, LatentAttack, PixelAttack, RandomRealAttack, TargetedRealAttack,
        ScalingAttack, DuplicationAttack, FreeRiderAttack, LabelFlipAttack, OverreportAttack,
    )
}


def attack_params(name: str) -> dict[str, Any]:
    """The parameters of attack ``name`` with their defaults."""
    if name not in ATTACKS:
        raise UserError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    return {f.name: f.default for f in dataclasses.fields(ATTACKS[name])}


def make_attack(name: str, **params: Any) -> Attack:
    """Construct attack ``name``; unknown names, unknown parameters and bad values are a ``UserError``."""
    allowed = attack_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in allowed.items()) or "none"
        raise UserError(f"attack {name!r} has no parameter(s) {unknown}; allowed (with defaults): {listing}")
    return ATTACKS[name](**params)
