"""Attacks on attribution in FL: generators, label coverage, latent/pixel optimisation, baselines.

Plain torch (never imports flwr). ``make_attack(name, **params)`` builds an attack from the
registry ``ATTACKS``; ``run_attacker_round(attack, ctx)`` produces the attacker's reply and its
honest counterfactual for one round.
"""

from fedattr.attacks.base import Attack, AttackContext, AttackerRound, check_reply, run_attacker_round
from fedattr.attacks.coverage import Coverage, InferredCoverage, OracleCoverage
from fedattr.attacks.generator import VAE, load_generator, train_generator
from fedattr.attacks.latent import LatentOptimiser, SyntheticBatch
from fedattr.attacks.pixel import PixelOptimiser
from fedattr.attacks.registry import ATTACKS, attack_params, make_attack
from fedattr.attacks.teacher import TeacherTrainer

__all__ = [
    "ATTACKS", "Attack", "AttackContext", "AttackerRound", "Coverage", "InferredCoverage", "LatentOptimiser",
    "OracleCoverage", "PixelOptimiser", "SyntheticBatch", "TeacherTrainer", "VAE", "attack_params",
    "check_reply", "load_generator", "make_attack", "run_attacker_round", "train_generator",
]
