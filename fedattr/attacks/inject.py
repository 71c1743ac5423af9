"""The injection family's shared machinery: add a small batch of extra labelled images to local training.

Subclasses pick the batch's classes (``choose_targets``) and make the images (``make_batch``);
this module sizes the batch, spreads labels over the targets, regenerates it every
``refresh_every`` rounds (memoised in ctx.state, which must persist across rounds for that), and
optionally rescales the update to the honest update's norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedattr.attacks._util import StateDict, derive_seed, flat_update, scale_update
from fedattr.attacks.base import Attack, AttackContext
from fedattr.attacks.coverage import (
    COVERAGE_METHODS, Coverage, InferredCoverage, OracleCoverage, least_covered, own_shares,
)
from fedattr.attacks.latent import SyntheticBatch
from fedattr.attacks.truth import target_truth
from fedattr.core.errors import UserError


#: what a targeted injection does in its first rounds (see TargetedInjection)
TARGET_POLICIES = ("model", "warmup", "local_data")


def spread_labels(targets: list[int], n: int) -> torch.Tensor:
    """``n`` labels cycling over ``targets`` (equal shares, the first targets take the remainder)."""
    if not targets or n <= 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.tensor([targets[i % len(targets)] for i in range(n)], dtype=torch.long)


@dataclass(kw_only=True)
class InjectionAttack(Attack):
    """Base of the injection attacks: local data plus round(synthetic_fraction * n_local) extra images.

    The extra images ride along with the real minibatches (``extra_data``): the real data, its
    order and the step count stay those of the honest run.

    By default it reports only its local count (the extra images stay hidden); ``count_synthetic``
    reports local + extra. ``match_norm`` rescales the sent update to the honest update's L2 norm
    (over float entries) and copies integer buffers from the honest weights, so norm- and
    count-based checks see a benign-looking update.
    """

    name: ClassVar[str] = "injection"
    synthetic_fraction: float = 0.25
    num_target_classes: int = 3
    refresh_every: int = 1
    match_norm: bool = False
    count_synthetic: bool = False

    def validate(self) -> None:
        if not 0 <= self.synthetic_fraction <= 10:
            raise UserError(f"attack {self.name!r}: synthetic_fraction must be in [0, 10], got {self.synthetic_fraction}")
        if self.num_target_classes < 1:
            raise UserError(f"attack {self.name!r}: num_target_classes must be >= 1, got {self.num_target_classes}")
        if self.refresh_every < 1:
            raise UserError(f"attack {self.name!r}: refresh_every must be >= 1, got {self.refresh_every}")

    # --- what subclasses provide -------------------------------------------------------------
    def choose_targets(self, ctx: AttackContext, seed: int) -> tuple[list[int], dict[str, Any]]:
        """The classes of the extra images, and JSON-able info on how they were chosen."""
        raise NotImplementedError

    def make_batch(self, ctx: AttackContext, labels: torch.Tensor, seed: int) -> SyntheticBatch:
        """Extra images with the given labels (the batch may drop labels it cannot serve)."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------
    def synthetic_count(self, n_local: int) -> int:
        """round(synthetic_fraction * n_local), at least 1 when the fraction is positive."""
        if self.synthetic_fraction <= 0 or n_local == 0:
            return 0
        return max(1, int(round(self.synthetic_fraction * n_local)))

    def batch(self, ctx: AttackContext) -> SyntheticBatch:
        """This round's extra batch: regenerated every ``refresh_every`` rounds, otherwise reused."""
        memo = ctx.state.get(f"{self.name}/batch")
        if memo is not None and 0 <= ctx.server_round - memo["round"] < self.refresh_every:
            ctx.metrics["synthetic_refreshed"] = 0.0
            ctx.info.update(memo["info"])
            return memo["batch"]
        seed = derive_seed(ctx.seed, ctx.server_round, self.name)
        targets, info = self.choose_targets(ctx, seed)
        labels = spread_labels(targets, self.synthetic_count(len(ctx.y_local)))
        if len(labels):
            made = self.make_batch(ctx, labels, seed)
        else:  # nothing to inject: skip the generator and teacher entirely
            made = SyntheticBatch(ctx.x_local[:0].clone(), torch.zeros(0, dtype=torch.long))
        info = {**info, "target_classes": list(targets), "batch_round": ctx.server_round,
                "synthetic_label_counts": torch.bincount(made.y, minlength=ctx.num_classes).tolist()}
        ctx.state[f"{self.name}/batch"] = {"round": ctx.server_round, "batch": made, "info": info}
        ctx.metrics["synthetic_refreshed"] = 1.0
        ctx.info.update(info)
        return made

    def extra_data(self, ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This round's batch, riding along with the real minibatches (see ``train_local``)."""
        made = self.batch(ctx)
        ctx.metrics["synthetic_count"] = float(len(made.y))
        ctx.metrics.update(made.diagnostics)
        for i, c in enumerate(ctx.info.get("target_classes", [])):
            ctx.metrics[f"target_class_{i}"] = float(c)
        if "coverage_upper_bound" in ctx.info:
            ctx.metrics["coverage_is_oracle"] = float(ctx.info["coverage_upper_bound"])
        ctx.metrics.update(target_truth(ctx.info.get("target_classes", []), ctx.benign_histograms,
                                        ctx.num_classes, ctx.info.get("coverage_scores")))
        if len(made.y) == 0:
            return None
        return made.x.to(ctx.x_local.device, ctx.x_local.dtype), made.y.to(ctx.y_local.device, ctx.y_local.dtype)

    def transform_state(self, ctx: AttackContext, w_t: StateDict, w_attacked: StateDict, w_honest: StateDict) -> StateDict:
        if not self.match_norm:
            return w_attacked
        n_att, n_hon = float(flat_update(w_t, w_attacked).norm()), float(flat_update(w_t, w_honest).norm())
        factor = n_hon / n_att if n_att > 0 else 1.0
        ctx.metrics["norm_scale"] = factor
        out = scale_update(w_t, w_attacked, factor)
        for k, v in w_honest.items():
            if not v.is_floating_point():
                out[k] = v.clone()  # e.g. num_batches_tracked would reveal the extra steps
        return out

    def reported_num_examples(self, ctx: AttackContext, n_local: int) -> int:
        if not self.count_synthetic:
            return n_local
        memo = ctx.state.get(f"{self.name}/batch")
        return n_local + (len(memo["batch"].y) if memo else 0)


@dataclass(kw_only=True)
class TargetedInjection(InjectionAttack):
    """Injection aimed at the classes the benign federation under-covers (see coverage.py).

    ``coverage="oracle"`` reads the true benign histograms (testbed-only upper bound);
    ``"inferred"`` uses the global model's confidence on the attacker's probes (its local data,
    plus the public auxiliary split when ``use_aux``). Both mix in the attacker's own label
    shares with ``own_count_weight``.

    ``target_policy`` says what happens in the first ``warmup_rounds`` rounds, while the global
    model is still close to its random initialisation (its confidence is about 1/C for every
    class, so inferred coverage is arbitrary): ``"model"`` infers from it anyway (the original
    behaviour); ``"warmup"`` injects nothing (the update is the honest one, bit for bit);
    ``"local_data"`` targets the classes the attacker's own data covers least. After the warm-up
    every policy uses ``coverage``.
    """

    name: ClassVar[str] = "targeted_injection"
    coverage: str = "inferred"
    own_count_weight: float = 0.25
    use_aux: bool = True
    target_policy: str = "model"
    warmup_rounds: int = 1

    def validate(self) -> None:
        super().validate()
        if self.coverage not in COVERAGE_METHODS:
            raise UserError(f"attack {self.name!r}: coverage must be one of {list(COVERAGE_METHODS)}, got {self.coverage!r}")
        if self.target_policy not in TARGET_POLICIES:
            raise UserError(
                f"attack {self.name!r}: target_policy must be one of {list(TARGET_POLICIES)}, got {self.target_policy!r}")
        if self.warmup_rounds < 0:
            raise UserError(f"attack {self.name!r}: warmup_rounds must be >= 0, got {self.warmup_rounds}")

    def warming_up(self, ctx: AttackContext) -> bool:
        """Whether this round is in the warm-up of a non-default target policy."""
        return self.target_policy != "model" and ctx.server_round <= self.warmup_rounds

    def extra_data(self, ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor] | None:
        warming = self.warming_up(ctx)
        if warming and self.target_policy == "warmup":
            ctx.metrics.update(warming_up=1.0, synthetic_count=0.0)
            return None
        out = super().extra_data(ctx)
        ctx.metrics["warming_up"] = float(warming)
        return out
        if not 0 <= self.own_count_weight <= 1:
            raise UserError(f"attack {self.name!r}: own_count_weight must be in [0, 1], got {self.own_count_weight}")

    def attacker_pool(self, ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Every labelled image the attacker holds: local data, plus the auxiliary split when ``use_aux``."""
        if self.use_aux and ctx.x_aux is not None and ctx.y_aux is not None and len(ctx.y_aux):
            return torch.cat([ctx.x_local, ctx.x_aux]), torch.cat([ctx.y_local, ctx.y_aux])
        return ctx.x_local, ctx.y_local

    def estimate_coverage(self, ctx: AttackContext) -> Coverage:
        """Coverage by the configured method, with k = min(num_target_classes, C)."""
        k = min(self.num_target_classes, ctx.num_classes)
        if self.target_policy == "local_data" and self.warming_up(ctx):
            own = own_shares(ctx.y_local, ctx.num_classes)
            targets = least_covered(own, k)
            return Coverage(method="local_data", scores=own, targets=targets,
                            weights=[1.0 / k if c in targets else 0.0 for c in range(ctx.num_classes)],
                            upper_bound=False, info={"own_share": own, "note": "warm-up: the attacker's own counts"})
        if self.coverage == "oracle":
            return OracleCoverage(k=k, own_weight=self.own_count_weight).estimate(
                ctx.benign_histograms, ctx.num_classes, ctx.y_local
            )
        x_probe, y_probe = self.attacker_pool(ctx)
        return InferredCoverage(k=k, own_weight=self.own_count_weight).estimate(
            ctx.global_model, x_probe, y_probe, ctx.y_local, ctx.num_classes, ctx.device
        )

    def choose_targets(self, ctx: AttackContext, seed: int) -> tuple[list[int], dict[str, Any]]:
        cov = self.estimate_coverage(ctx)
        scores = [s if math.isfinite(s) else None for s in cov.scores]
        return cov.targets, {"coverage_method": cov.method, "coverage_upper_bound": cov.upper_bound,
                             "coverage_scores": scores, "coverage_info": cov.info}
