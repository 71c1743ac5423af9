"""The attacker's round: what it can see (AttackContext), the three hooks an attack overrides, the driver.

An attack changes one or more of: the data it trains on (``training_data``), extra images that
ride along with its real minibatches (``extra_data``), the minibatch order (``train_seed``), the
weights it sends (``transform_state``) and the example count it reports
(``reported_num_examples``). Extra images never change the real minibatches, their order or the
number of steps, so the honest counterfactual differs from the attacked run by the extras alone.
``run_attacker_round`` always also trains the honest update (the testbed's counterfactual, and the
reference for norm matching) and checks that the reply has the exact shape of a benign one.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from fedattr.attacks._util import StateDict, cpu_state, flat_update
from fedattr.core.errors import UserError
from fedattr.learning.training import train_local

#: the local-training keys a round's ``train`` dict may carry, with train_local's defaults
TRAIN_KEYS = {k: p.default for k, p in inspect.signature(train_local).parameters.items()
              if k in ("epochs", "batch_size", "lr", "momentum", "weight_decay")}


@dataclass
class AttackContext:
    """Everything the attacker sees in one round, plus testbed-only oracle fields (marked ORACLE)."""

    global_model: nn.Module  # w_t loaded; hooks must never mutate it (copy first)
    x_local: torch.Tensor
    y_local: torch.Tensor
    num_classes: int
    channels: int
    side: int
    server_round: int
    seed: int  # the training seed a benign client uses this round
    x_aux: torch.Tensor | None = None  # the public auxiliary split
    y_aux: torch.Tensor | None = None
    device: torch.device | str = "cpu"
    train: dict[str, Any] = field(default_factory=dict)  # epochs, batch_size, lr, momentum, weight_decay
    benign_histograms: dict[int, list[int]] | None = None  # ORACLE: testbed-only
    cache_dir: Path | str | None = Path(".fedattr_cache")  # trained teacher/generator files; None: no disk cache
    state: dict[str, Any] = field(default_factory=dict)  # persists across rounds of one run for this attacker
    run_seed: int | None = None  # constant over a run; seeds the teacher and generator (defaults to seed)
    metrics: dict[str, float] = field(default_factory=dict)  # filled by the hooks during this round
    info: dict[str, Any] = field(default_factory=dict)  # non-scalar diagnostics filled by the hooks

    @property
    def artefact_seed(self) -> int:
        """The seed of run-long artefacts (teacher, generator): ``run_seed`` when given, else ``seed``."""
        return int(self.seed if self.run_seed is None else self.run_seed)


_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,)}


@dataclass(kw_only=True)
class Attack:
    """An honest client; subclasses override the hooks they attack. Fields are the attack's config keys."""

    name: ClassVar[str] = "attack"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            allowed = _SIMPLE_TYPES.get(str(f.type))
            bad_bool = isinstance(v, bool) and str(f.type) in ("int", "float")
            if allowed is not None and (not isinstance(v, allowed) or bad_bool):
                raise UserError(f"attack {self.name!r}: {f.name} must be a {f.type}, got {v!r}")
        self.validate()

    def validate(self) -> None:
        """Raise ``UserError`` for parameter values out of range (types are already checked)."""

    def check_classes(self, num_classes: int) -> None:
        """Raise ``UserError`` for class indices outside the dataset's ``num_classes`` classes
        (called before start-up, when the dataset is known)."""

    def params(self) -> dict[str, Any]:
        """This attack's config as a plain dict."""
        return dataclasses.asdict(self)

    def training_data(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (images, labels) to train on; returning the inputs unchanged means honest data."""
        return x, y

    def extra_data(self, ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Extra (images, labels) added to the real minibatches, spread evenly over the steps; None = none."""
        return None

    def train_seed(self, ctx: AttackContext, seed: int) -> int:
        """The seed of the minibatch order."""
        return seed

    def transform_state(self, ctx: AttackContext, w_t: StateDict, w_attacked: StateDict, w_honest: StateDict) -> StateDict:
        """The weights to send, given w_t, the weights trained on ``training_data`` and the honest weights."""
        return w_attacked

    def reported_num_examples(self, ctx: AttackContext, n_local: int) -> int:
        """The num-examples to report (FedAvg weights by it)."""
        return n_local


@dataclass
class AttackerRound:
    """The attacker's reply for one round, its honest counterfactual (testbed-only) and diagnostics."""

    state_dict: StateDict
    honest_state_dict: StateDict | None
    num_examples: int
    train_loss: float
    active: bool
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def train_kwargs(train: dict[str, Any]) -> dict[str, Any]:
    """Local-training keyword arguments from a round's ``train`` dict (unknown keys are a UserError)."""
    unknown = sorted(set(train) - set(TRAIN_KEYS))
    if unknown:
        raise UserError(f"unknown local-training key(s) {unknown}; allowed: {sorted(TRAIN_KEYS)}")
    return {**TRAIN_KEYS, **train}


def check_reply(reference: StateDict, sent: StateDict, attack: str) -> None:
    """Raise RuntimeError unless ``sent`` has the keys (in order), shapes and dtypes of ``reference``, all finite."""
    if list(sent) != list(reference):
        missing, extra = sorted(set(reference) - set(sent)), sorted(set(sent) - set(reference))
        raise RuntimeError(f"attack {attack!r} broke the reply's keys (missing {missing}, extra {extra}, or order)")
    for k, ref in reference.items():
        v = sent[k]
        if v.shape != ref.shape or v.dtype != ref.dtype:
            raise RuntimeError(
                f"attack {attack!r} changed {k}: {tuple(ref.shape)}/{ref.dtype} -> {tuple(v.shape)}/{v.dtype}"
            )
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise RuntimeError(f"attack {attack!r} sent non-finite values in {k}")


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else math.nan


def run_attacker_round(
    attack: Attack, ctx: AttackContext, *, start_round: int = 1, counterfactual: bool = True
) -> AttackerRound:
    """Train the honest update and, from ``start_round`` on, the attacked one; return the reply.

    Before ``start_round`` the attacker sends its honest update. The honest update is always
    trained (transform_state and the metrics need it); ``counterfactual=False`` only leaves it out
    of the result, as a deployed attacker would.
    """
    start = time.perf_counter()
    device = torch.device(ctx.device)
    kw = train_kwargs(ctx.train)
    w_t = cpu_state(ctx.global_model)
    # The honest update uses the benign seed: it is exactly what this client would send if benign.
    honest = copy.deepcopy(ctx.global_model)
    honest_stats = train_local(honest, ctx.x_local, ctx.y_local, seed=ctx.seed, device=device, **kw)
    w_honest = cpu_state(honest)
    del honest
    n_local = len(ctx.y_local)
    active = ctx.server_round >= start_round
    ctx.metrics.clear()
    ctx.info.clear()
    if not active:
        sent, num_examples, loss, n_train = {k: v.clone() for k, v in w_honest.items()}, n_local, honest_stats["loss"], n_local
        steps = honest_stats["steps"]
    else:
        x, y = attack.training_data(ctx, ctx.x_local, ctx.y_local)
        extra = attack.extra_data(ctx)
        n_extra = 0 if extra is None else len(extra[1])
        seed = attack.train_seed(ctx, ctx.seed)
        n_train = len(y) + n_extra
        if x is ctx.x_local and y is ctx.y_local and seed == ctx.seed and n_extra == 0:
            # Same data, same order: the honest run already is this run (and equals it bit for bit).
            w_attacked, loss, steps = {k: v.clone() for k, v in w_honest.items()}, honest_stats["loss"], honest_stats["steps"]
        else:
            model = copy.deepcopy(ctx.global_model)
            ex, ey = extra if n_extra else (None, None)
            stats = train_local(model, x, y, seed=seed, device=device, extra_x=ex, extra_y=ey, **kw)
            loss, steps = stats["loss"], stats["steps"]
            w_attacked = cpu_state(model)
            del model
        sent = attack.transform_state(ctx, w_t, w_attacked, w_honest)
        num_examples = int(attack.reported_num_examples(ctx, n_local))
    check_reply(w_t, sent, attack.name)
    g, g_h = flat_update(w_t, sent), flat_update(w_t, w_honest)
    metrics = {
        "active": float(active),
        "local_count": float(n_local),
        "train_count": float(n_train),
        "reported_count": float(num_examples),
        "train_loss": float(loss),
        "honest_train_loss": float(honest_stats["loss"]),
        "train_steps": float(steps),
        "honest_train_steps": float(honest_stats["steps"]),
        "update_norm": float(g.norm()),
        "honest_update_norm": float(g_h.norm()),
        "cosine_to_honest": _cosine(g, g_h),
        **(ctx.metrics if active else {}),
    }
    metrics["round_seconds"] = time.perf_counter() - start
    info = {"attack": attack.name, "params": attack.params(), **(ctx.info if active else {})}
    return AttackerRound(
        state_dict=sent,
        honest_state_dict=w_honest if counterfactual else None,
        num_examples=num_examples,
        train_loss=float(loss),
        active=active,
        metrics=metrics,
        info=info,
    )
