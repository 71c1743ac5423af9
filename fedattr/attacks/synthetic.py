"""The paper's attack (``latent``: synthetic batches through a VAE decoder) and its no-generator variant (``pixel``).

Both label the batch with the under-covered classes, make the images confidently those classes
for a teacher, and align the batch's gradient on the global model with a class-balanced proxy
validation gradient (a first-order proxy of marginal utility). The teacher and the generator are
run-long artefacts: memoised in ctx.state and cached on disk under ctx.cache_dir.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fedattr.attacks import generator as gen
from fedattr.attacks._util import derive_seed
from fedattr.attacks.base import AttackContext
from fedattr.attacks.inject import TargetedInjection
from fedattr.attacks.latent import LatentOptimiser, SyntheticBatch
from fedattr.attacks.objective import balanced_probes, frozen_copy
from fedattr.attacks.pixel import PixelOptimiser
from fedattr.attacks.teacher import TeacherTrainer
from fedattr.core.errors import UserError

TEACHERS = ("trained", "global")
GENERATOR_SOURCES = ("public", "local")
BN_MODELS = ("teacher", "global")


@dataclass(kw_only=True)
class SyntheticInjection(TargetedInjection):
    """Shared by latent and pixel: the teacher and the class-balanced proxy validation probes.

    ``teacher="trained"``: a seeded re-initialisation of the global architecture trained on the
    attacker's pool (local + auxiliary when ``use_aux``), once per run. ``teacher="global"``: the
    current global model itself (needs nothing but w_t, but is weak on the classes it lacks).
    ``proxy_per_class`` probes per class from the same pool form the proxy validation loss.
    """

    name: ClassVar[str] = "synthetic_injection"
    teacher: str = "trained"
    teacher_epochs: int = TeacherTrainer.epochs
    teacher_batch_size: int = TeacherTrainer.batch_size
    teacher_lr: float = TeacherTrainer.lr
    teacher_momentum: float = TeacherTrainer.momentum
    teacher_weight_decay: float = TeacherTrainer.weight_decay
    proxy_per_class: int = 20

    def validate(self) -> None:
        super().validate()
        if self.teacher not in TEACHERS:
            raise UserError(f"attack {self.name!r}: teacher must be one of {list(TEACHERS)}, got {self.teacher!r}")
        for key in ("teacher_epochs", "teacher_batch_size", "proxy_per_class"):
            if getattr(self, key) < 1:
                raise UserError(f"attack {self.name!r}: {key} must be >= 1, got {getattr(self, key)}")

    def teacher_model(self, ctx: AttackContext) -> nn.Module:
        """The labelling model (eval mode), trained once per run and memoised in ctx.state."""
        if self.teacher == "global":
            ctx.metrics["teacher_train_accuracy"] = float("nan")
            return frozen_copy(ctx.global_model, ctx.device)
        memo = ctx.state.get("teacher")
        if memo is None:
            x, y = self.attacker_pool(ctx)
            trainer = TeacherTrainer(
                epochs=self.teacher_epochs, batch_size=self.teacher_batch_size, lr=self.teacher_lr,
                momentum=self.teacher_momentum, weight_decay=self.teacher_weight_decay,
            )
            model, info = trainer.train(
                ctx.global_model, x, y, seed=derive_seed(ctx.artefact_seed, "teacher"), device=ctx.device,
                cache_dir=ctx.cache_dir,
            )
            memo = ctx.state["teacher"] = {"model": model, "info": info}
        ctx.metrics["teacher_train_accuracy"] = float(memo["info"]["train_accuracy"])
        ctx.metrics["teacher_cached"] = float(memo["info"]["cached"])
        return memo["model"]

    def proxy(self, ctx: AttackContext, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-balanced proxy validation probes from the attacker's pool."""
        x, y = self.attacker_pool(ctx)
        return balanced_probes(x, y, ctx.num_classes, self.proxy_per_class, seed)


@dataclass(kw_only=True)
class LatentAttack(SyntheticInjection):
    """THE attack: latent-optimised VAE samples of the under-covered classes injected into local training.

    The VAE is trained on the public auxiliary split (``generator_source="public"``, the paper's
    setting) or on the attacker's own partition (``"local"``); ``latent_dim=0`` picks 16 for grey
    and 64 for colour images. Reports its local count unless ``count_synthetic``.
    """

    name: ClassVar[str] = "latent"
    generator_source: str = "public"
    latent_dim: int = 0
    generator_width: int = gen.DEFAULT_WIDTH
    generator_epochs: int = gen.DEFAULT_EPOCHS
    generator_batch_size: int = gen.DEFAULT_BATCH_SIZE
    generator_lr: float = gen.DEFAULT_LR
    generator_beta: float = gen.DEFAULT_BETA
    #: -1: the generator is trained with the run's artefact seed (one per seed); >= 0: with this
    #: seed in every run, so all seeds share one public generator (trained once, then cached).
    generator_seed: int = -1
    steps: int = LatentOptimiser.steps
    step_lr: float = LatentOptimiser.step_lr
    lambda_z: float = LatentOptimiser.lambda_z
    lambda_tv: float = LatentOptimiser.lambda_tv
    lambda_align: float = LatentOptimiser.lambda_align
    candidates: int = LatentOptimiser.candidates

    def validate(self) -> None:
        super().validate()
        if self.generator_source not in GENERATOR_SOURCES:
            raise UserError(
                f"attack 'latent': generator_source must be one of {list(GENERATOR_SOURCES)}, got {self.generator_source!r}"
            )
        if self.latent_dim < 0 or self.steps < 0 or self.candidates < 1 or self.generator_epochs < 1:
            raise UserError("attack 'latent': latent_dim and steps must be >= 0, candidates and generator_epochs >= 1")
        if self.generator_seed < -1:
            raise UserError("attack 'latent': generator_seed must be -1 (the run's seed) or >= 0")

    def generator(self, ctx: AttackContext) -> gen.VAE:
        """The VAE, trained once per run (disk-cached by config + data) and memoised in ctx.state."""
        memo = ctx.state.get("generator")
        if memo is None:
            if self.generator_source == "public":
                if ctx.x_aux is None or len(ctx.x_aux) == 0:
                    raise UserError("attack 'latent' with generator_source='public' needs the public auxiliary split; "
                                    "set data.aux_size > 0 or generator_source='local'")
                x = ctx.x_aux
            else:
                x = ctx.x_local
            vae, info = gen.train_generator(
                x, channels=ctx.channels, side=ctx.side, latent_dim=self.latent_dim or None,
                width=self.generator_width, epochs=self.generator_epochs, batch_size=self.generator_batch_size,
                lr=self.generator_lr, beta=self.generator_beta, device=ctx.device,
                seed=ctx.artefact_seed if self.generator_seed < 0 else self.generator_seed,
                cache_dir=ctx.cache_dir, source_tag=self.generator_source,
            )
            for p in vae.parameters():
                p.requires_grad_(False)
            memo = ctx.state["generator"] = {"model": vae, "info": info}
        info = memo["info"]
        ctx.metrics["generator_cached"] = float(info["cached"])
        ctx.metrics["generator_train_seconds"] = float(info["train_seconds"])
        ctx.metrics["generator_final_loss"] = float(info["losses"][-1])
        return memo["model"]

    def make_batch(self, ctx: AttackContext, labels: torch.Tensor, seed: int) -> SyntheticBatch:
        vae = self.generator(ctx)
        teacher = self.teacher_model(ctx)
        x_p, y_p = self.proxy(ctx, seed)
        opt = LatentOptimiser(
            steps=self.steps, step_lr=self.step_lr, lambda_z=self.lambda_z, lambda_tv=self.lambda_tv,
            lambda_align=self.lambda_align, candidates=self.candidates,
        )
        return opt.optimise(vae.decode, vae.latent_dim, teacher, ctx.global_model, labels, x_p, y_p,
                            seed=seed, device=ctx.device)


@dataclass(kw_only=True)
class PixelAttack(SyntheticInjection):
    """The no-generator variant: pixels optimised directly with TV and BatchNorm-statistics priors.

    With ``use_aux=False`` and ``teacher="global"`` it needs only local data and the global model.
    ``bn_model`` names whose BatchNorm running statistics the images must match.
    """

    name: ClassVar[str] = "pixel"
    bn_model: str = "teacher"
    steps: int = PixelOptimiser.steps
    step_lr: float = PixelOptimiser.step_lr
    lambda_tv: float = PixelOptimiser.lambda_tv
    lambda_bn: float = PixelOptimiser.lambda_bn
    lambda_align: float = PixelOptimiser.lambda_align
    init_std: float = PixelOptimiser.init_std

    def validate(self) -> None:
        super().validate()
        if self.bn_model not in BN_MODELS:
            raise UserError(f"attack 'pixel': bn_model must be one of {list(BN_MODELS)}, got {self.bn_model!r}")
        if self.steps < 0:
            raise UserError(f"attack 'pixel': steps must be >= 0, got {self.steps}")

    def make_batch(self, ctx: AttackContext, labels: torch.Tensor, seed: int) -> SyntheticBatch:
        teacher = self.teacher_model(ctx)
        x_p, y_p = self.proxy(ctx, seed)
        opt = PixelOptimiser(
            steps=self.steps, step_lr=self.step_lr, lambda_tv=self.lambda_tv, lambda_bn=self.lambda_bn,
            lambda_align=self.lambda_align, init_std=self.init_std,
        )
        bn_ref = ctx.global_model if self.bn_model == "global" else teacher
        return opt.optimise(teacher, ctx.global_model, labels, x_p, y_p, channels=ctx.channels, side=ctx.side,
                            bn_model=bn_ref, seed=seed, device=ctx.device)
