"""A second-order surrogate of the round game and its Shapley values.

Around the global model ``w_t`` a smooth utility ``U`` is expanded along the clients' updates:

    v~(S) = U(w_t) + sum_i c_i(S) a_i + 1/2 sum_ij c_i(S) c_j(S) H_ij,
    a_i = grad U(w_t) . g_i,    H_ij = g_i' (Hessian of U at w_t) g_j,

with ``c(S)`` FedAvg's renormalised coefficients (exact, as in :meth:`RoundGame.coefficients`).
``a`` and ``H`` cost one gradient and ``n`` Hessian-vector products (double backward, batched
over the updates) on the validation split; every coalition value after that is an ``n x n``
quadratic form. The expansion covers the whole floating-point state, BatchNorm running
statistics included: they are aggregated linearly like parameters, and BatchNorm layers are
evaluated with an eval-mode formula that is differentiable in them.
"""

from __future__ import annotations

import copy
import math
import time
import types
import weakref
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .base import Evaluator, register
from .exact import semivalue_from_table, shapley_weights
from .game import Game, RoundGame, coalition_table, masks_to_matrix

__all__ = [
    "SURROGATE_METRICS",
    "SurrogateGame",
    "SurrogateShapley",
    "fedavg_coefficients",
    "taylor_terms",
    "surrogate_for",
]

#: Differentiable utilities: negative mean cross-entropy, mean softmax probability of the true
#: class (a smooth accuracy), and its class-balanced mean (a smooth balanced accuracy).
SURROGATE_METRICS = ("neg_ce", "soft_accuracy", "soft_balanced_accuracy")
#: The smooth stand-in of each real metric.
SMOOTH_METRIC = {"neg_ce": "neg_ce", "accuracy": "soft_accuracy", "balanced_accuracy": "soft_balanced_accuracy"}
MAX_EXACT_SURROGATE_PLAYERS = 20


def fedavg_coefficients(member: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """FedAvg coefficients ``[K, n]`` of a ``[K, n]`` membership matrix (rows sum to 1, 0 when
    empty; uniform over the coalition when its weights sum to 0), as :meth:`RoundGame.coefficients`."""
    member = np.asarray(member, dtype=bool)
    w = member * np.asarray(weights, dtype=np.float64)
    tot = w.sum(1, keepdims=True)
    uniform = member / np.maximum(member.sum(1, keepdims=True), 1)
    return np.where(tot > 0, w / np.where(tot > 0, tot, 1.0), uniform)


# ------------------------------------------------------------------------------ Taylor terms


def _eval_batch_norm(self, x):
    # Eval-mode BatchNorm written out, so that autograd differentiates the running statistics
    # (the fused kernel treats them as constants).
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = (x - self.running_mean.view(shape)) * torch.rsqrt(self.running_var.view(shape) + self.eps)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    return y


def _differentiable_copy(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.forward = types.MethodType(_eval_batch_norm, m)
    return model


def _example_weights(y: torch.Tensor, metric: str, num_classes: int) -> torch.Tensor:
    """Per-example weights ``w_x`` with ``U = sum_x w_x s(z_x)``."""
    if metric == "soft_balanced_accuracy":
        counts = torch.bincount(y, minlength=num_classes).to(torch.float64)
        present = int((counts > 0).sum())
        return 1.0 / (counts[y] * present)
    return torch.full(y.shape, 1.0 / y.shape[0], dtype=torch.float64, device=y.device)


def _score(logits: torch.Tensor, y: torch.Tensor, metric: str, temperature: float) -> torch.Tensor:
    if metric == "neg_ce":
        return -F.cross_entropy(logits, y, reduction="none")
    return torch.softmax(logits / temperature, dim=-1).gather(1, y[:, None])[:, 0]


def taylor_terms(
    utility,
    base: torch.Tensor,
    updates: torch.Tensor,
    metric: str = "neg_ce",
    temperature: float = 1.0,
    batch_size: int = 500,
    chunk: int | None = None,
) -> tuple[float, np.ndarray, np.ndarray]:
    """``U(w_t)``, ``a [n]`` and ``H [n, n]`` of a smooth utility on ``utility``'s validation set.

    Parameters
    ----------
    utility : ModelUtility
        Supplies the model (``model_``), the validation data (``validation_``) and ``layout``.
    base, updates : Tensor
        ``w_t`` ``[P]`` and the client updates ``[n, P]`` in ``utility.layout``.
    metric : {"neg_ce", "soft_accuracy", "soft_balanced_accuracy"}
    temperature : float
        Softmax temperature of the soft accuracies (lower is closer to accuracy, less smooth).
    batch_size : int
        Validation examples per forward/double-backward pass (H is summed over batches).
    chunk : int, optional
        Updates per batched Hessian-vector product (default: all ``n`` at once).
    """
    if metric not in SURROGATE_METRICS:
        raise ValueError(f"unknown surrogate metric {metric!r}; valid: {', '.join(SURROGATE_METRICS)}")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    layout = utility.layout
    model = _differentiable_copy(utility.model_)
    x, y = utility.validation_
    device = x.device
    dtype = layout.dtype
    base = base.detach().to(device, dtype)
    updates = updates.detach().to(device, dtype)
    n = updates.shape[0]
    num_classes = int(getattr(utility, "num_classes_", int(y.max()) + 1))
    wx = _example_weights(y, metric, num_classes)
    step = max(1, int(chunk or n or 1))
    u0, a, h = 0.0, torch.zeros(n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
    for s in range(0, y.shape[0], int(batch_size)):
        flat = base.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = functional_call(model, layout.unflatten(flat), (x[s:s + batch_size],))
            u = (_score(logits.to(dtype), y[s:s + batch_size], metric, temperature).to(torch.float64)
                 * wx[s:s + batch_size]).sum()
            (grad,) = torch.autograd.grad(u, flat, create_graph=True)
            u0 += float(u.detach())
            a += (updates @ grad.detach()).double().cpu()
            if n and grad.requires_grad:
                for c0 in range(0, n, step):
                    hv = _hvp(grad, flat, updates[c0:c0 + step])
                    h[:, c0:c0 + step] += (updates @ hv.T).double().cpu()
    h = (h + h.T) / 2  # symmetric in exact arithmetic; removes float round-off asymmetry
    return u0, a.numpy(), h.numpy()


def _hvp(grad: torch.Tensor, flat: torch.Tensor, vs: torch.Tensor) -> torch.Tensor:
    """Hessian-vector products ``[k, P]`` by one batched double backward (a loop if the
    batched backward is not supported by some operation)."""
    try:
        (hv,) = torch.autograd.grad(grad, flat, grad_outputs=vs, retain_graph=True, is_grads_batched=True,
                                    allow_unused=True)
    except RuntimeError:
        rows = [torch.autograd.grad(grad, flat, grad_outputs=v, retain_graph=True, allow_unused=True)[0] for v in vs]
        hv = None if rows and rows[0] is None else torch.stack(rows) if rows else torch.zeros_like(vs)
    return torch.zeros_like(vs) if hv is None else hv


# ------------------------------------------------------------------------------ the game


class SurrogateGame(Game):
    """The quadratic game ``v(S) = u0 + scale * (c(S).a + 1/2 c(S)' H c(S))``.

    Parameters
    ----------
    u0 : float
        Value of the empty coalition.
    a : array [n]
        First-order terms ``grad U . g_i``.
    h : array [n, n]
        Second-order terms ``g_i' Hessian g_j`` (symmetric).
    weights : array [n], optional
        FedAvg weights (default ones).
    players : sequence, optional
    scale : float
        Multiplier of the expansion (set by :meth:`calibrated`).
    """

    def __init__(self, u0: float, a, h, weights=None, players: Sequence | None = None, scale: float = 1.0):
        a = np.asarray(a, dtype=np.float64).reshape(-1)
        n = a.shape[0]
        h = np.asarray(h, dtype=np.float64).reshape(n, n)
        super().__init__(n, players)
        self.u0 = float(u0)
        self.a = a
        self.h = h
        self.weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        if self.weights.shape[0] != n:
            raise ValueError(f"{self.weights.shape[0]} weights for {n} players")
        self.scale = float(scale)

    @classmethod
    def from_round_game(cls, game: RoundGame, metric: str | None = None, temperature: float = 1.0,
                        batch_size: int = 500, chunk: int | None = None, center: bool = True) -> "SurrogateGame":
        """Expand ``game``'s FedAvg round; ``metric`` defaults to the smooth stand-in of the game
        utility's metric (see ``SMOOTH_METRIC``).

        With ``center`` the expansion point is the grand coalition's model ``w_t + sum p_i g_i``
        (``p`` its FedAvg coefficients) instead of ``w_t``: no coalition is further from it than
        the farthest client, where from ``w_t`` the full step is. The terms are rewritten as a
        quadratic in ``c`` (``a = a_N - H p``, ``u0 = U_N - p.a_N + p'Hp/2``), so the game is the
        same form either way.
        """
        utility = getattr(game, "utility", None)
        if not isinstance(game, RoundGame) or not hasattr(utility, "model_"):
            raise ValueError("the surrogate needs a RoundGame whose utility is a ModelUtility")
        if game.aggregate_fn is not None:
            raise ValueError("the surrogate expands FedAvg; this round game uses a custom aggregation")
        metric = metric or SMOOTH_METRIC.get(getattr(utility, "metric", "neg_ce"), "neg_ce")
        t0 = time.perf_counter()
        if center and game.n:
            p = fedavg_coefficients(np.ones((1, game.n), dtype=bool), game.weights)[0]
            point = game.aggregate(game.full_mask)
            u_n, a_n, h = taylor_terms(utility, point, game.updates, metric, temperature, batch_size, chunk)
            a = a_n - h @ p
            u0 = u_n - p @ a_n + 0.5 * p @ h @ p
        else:
            u0, a, h = taylor_terms(utility, game.base, game.updates, metric, temperature, batch_size, chunk)
        out = cls(u0, a, h, game.weights, game.players)
        out.metric = metric
        out.taylor_seconds_ = time.perf_counter() - t0
        return out

    def calibrated(self, v_empty: float, v_full: float) -> "SurrogateGame":
        """A copy whose empty and grand coalitions take the given (real) values: ``u0 = v_empty``
        and the expansion scaled by the real over the surrogate gain, when both have the same
        sign (otherwise unscaled)."""
        gain = self.scale * self._expansion(np.ones((1, self.n), dtype=bool))[0] if self.n else 0.0
        real = float(v_full) - float(v_empty)
        scale = self.scale * real / gain if gain != 0 and real / gain > 0 else self.scale
        out = SurrogateGame(v_empty, self.a, self.h, self.weights, self.players, scale)
        out.metric = getattr(self, "metric", None)
        out.taylor_seconds_ = getattr(self, "taylor_seconds_", 0.0)
        return out

    # values ------------------------------------------------------------------------------------
    def _expansion(self, member: np.ndarray) -> np.ndarray:
        c = fedavg_coefficients(member, self.weights)
        return c @ self.a + 0.5 * np.einsum("kj,kj->k", c @ self.h, c)

    def values_of(self, member: np.ndarray) -> np.ndarray:
        """Values of the coalitions in a ``[K, n]`` membership matrix (no cache)."""
        return self.u0 + self.scale * self._expansion(member)

    def _evaluate(self, masks: list[int]) -> np.ndarray:
        return self.values_of(masks_to_matrix(masks, self.n))

    def table(self, chunk: int = 1 << 16) -> np.ndarray:
        """All ``2^n`` values indexed by bitmask, vectorised over chunks of coalitions."""
        return coalition_table(self.values_of, self.n, chunk)

    def permutation_marginals(self, perms: np.ndarray) -> np.ndarray:
        """Marginal contributions ``[B, n]`` along ``B`` permutations, ``O(B n^2)`` in all.

        Walks every permutation once, keeping per prefix ``A = sum w_j a_j``, ``W = sum w_j``,
        ``u = H w_S`` and ``Q = w_S' H w_S`` (and the same with unit weights, used while the
        prefix's weights sum to 0, as FedAvg does).
        """
        perms = np.asarray(perms, dtype=np.int64)
        b, n = perms.shape
        marg = np.zeros((b, n))
        prev = np.full(b, self.u0)
        rows = np.arange(b)
        acc = []
        for w in (self.weights, np.ones(n)):
            acc.append([np.zeros(b), np.zeros(b), np.zeros((b, n)), np.zeros(b), w])
        for j in range(n):
            i = perms[:, j]
            vals = []
            for st in acc:
                A, W, u, Q, w = st
                wi = w[i]
                Q += wi * wi * self.h[i, i] + 2 * wi * u[rows, i]
                u += wi[:, None] * self.h[i]
                A += wi * self.a[i]
                W += wi
                vals.append((A, W, Q))
            (A, W, Q), (A1, W1, Q1) = vals
            pos = W > 0
            expansion = np.where(pos, A / np.where(pos, W, 1) + 0.5 * Q / np.where(pos, W, 1) ** 2,
                                 A1 / W1 + 0.5 * Q1 / W1 ** 2)
            v = self.u0 + self.scale * expansion
            marg[rows, i] = v - prev
            prev = v
        return marg

    def shapley(self, max_exact_players: int = MAX_EXACT_SURROGATE_PLAYERS, n_permutations: int = 4000,
                seed: int | np.random.Generator | None = 0, batch: int = 500) -> tuple[np.ndarray, bool]:
        """Shapley values: exact by enumeration for ``n <= max_exact_players``, otherwise the
        mean marginals of ``n_permutations`` permutations in antithetic pairs. Returns
        ``(values, exact)``."""
        return surrogate_shapley_values(self, self.permutation_marginals, max_exact_players, n_permutations,
                                        seed, batch)


def surrogate_shapley_values(game: Game, marginals, max_exact_players: int, n_permutations: int,
                             seed: int | np.random.Generator | None, batch: int) -> tuple[np.ndarray, bool]:
    """Shapley values of a surrogate game with a cheap ``table()``: exact by enumeration for
    ``n <= max_exact_players``, otherwise the mean of ``marginals(perms)`` over ``n_permutations``
    permutations in antithetic pairs. Returns ``(values, exact)``."""
    n = game.n
    if n == 0:
        return np.zeros(0), True
    if n <= max_exact_players:
        return semivalue_from_table(game.table(), shapley_weights(n)), True
    rng = np.random.default_rng(seed)
    total, done = np.zeros(n), 0
    half = max(1, int(math.ceil(n_permutations / 2)))
    while done < half:
        k = min(max(1, batch // 2), half - done)
        p = np.stack([rng.permutation(n) for _ in range(k)])
        total += marginals(np.concatenate([p, p[:, ::-1]])).sum(0)
        done += k
    return total / (2 * done), False


# ------------------------------------------------------------------------------ sharing

# Taylor terms of a round game, shared by every surrogate-based evaluator of that game.
_SURROGATES: "weakref.WeakKeyDictionary[Game, dict]" = weakref.WeakKeyDictionary()


def surrogate_for(game: Game, metric: str | None = None, temperature: float = 1.0, batch_size: int = 500,
                  chunk: int | None = None, center: bool = True) -> SurrogateGame:
    """The (uncalibrated) surrogate of ``game``, computed once per game and settings; a
    :class:`SurrogateGame` is its own surrogate."""
    if isinstance(game, SurrogateGame):
        return game
    memo = _SURROGATES.setdefault(game, {})
    key = (metric, float(temperature), bool(center))
    if key not in memo:
        memo[key] = SurrogateGame.from_round_game(game, metric, temperature, batch_size, chunk, center)
    return memo[key]


@register("surrogate_shapley")
class SurrogateShapley(Evaluator):
    """Shapley values of the second-order surrogate game (see :class:`SurrogateGame`).

    Costs one gradient and ``n`` Hessian-vector products on the validation set, plus the 2 real
    coalitions ``empty`` and ``N`` when ``calibrate`` (they are in the shared cache anyway);
    exact by enumeration up to ``max_exact_players``, sampled beyond.

    Parameters
    ----------
    metric : {"neg_ce", "soft_accuracy", "soft_balanced_accuracy"}, optional
        Smooth utility expanded; default the stand-in of the game's metric (accuracy ->
        soft_accuracy).
    temperature : float
        Softmax temperature of the soft accuracies.
    calibrate : bool
        Scale the expansion so that the surrogate's gain ``v(N) - v(empty)`` equals the real one
        (values then sum to the real gain, like exact Shapley).
    max_exact_players : int
        Largest ``n`` enumerated exactly (2^n coalitions of an ``n x n`` quadratic form).
    n_permutations : int
        Permutations sampled on the surrogate beyond ``max_exact_players``.
    batch_size : int
        Validation examples per double-backward pass.
    center : bool
        Expand around the grand coalition's model rather than ``w_t`` (see
        :meth:`SurrogateGame.from_round_game`).
    surrogate : SurrogateGame, optional
        Use this surrogate instead of expanding the game (e.g. one computed elsewhere).

    Attributes
    ----------
    surrogate_ : SurrogateGame
        The (calibrated) surrogate used.
    exact_ : bool
        Whether the surrogate's Shapley values were enumerated.
    scale_ : float
        Calibration factor (1 without calibration).
    taylor_seconds_ : float
        Seconds spent on the gradient and Hessian-vector products.
    """

    def __init__(self, metric: str | None = None, temperature: float = 1.0, calibrate: bool = True,
                 max_exact_players: int = MAX_EXACT_SURROGATE_PLAYERS, n_permutations: int = 4000,
                 batch_size: int = 500, center: bool = True, surrogate: SurrogateGame | None = None):
        self.metric = metric
        self.temperature = temperature
        self.calibrate = calibrate
        self.max_exact_players = max_exact_players
        self.n_permutations = n_permutations
        self.batch_size = batch_size
        self.center = center
        self.surrogate = surrogate

    def _fit(self, game, req, rng):
        if game.n == 0:
            return np.zeros(0)
        sur = _calibrated_surrogate(self, game, req)
        values, self.exact_ = sur.shapley(self.max_exact_players, self.n_permutations, rng)
        self.surrogate_ = sur
        self.scale_ = sur.scale
        self.taylor_seconds_ = getattr(sur, "taylor_seconds_", 0.0)
        return values


def _calibrated_surrogate(ev, game: Game, req) -> SurrogateGame:
    sur = ev.surrogate if ev.surrogate is not None else surrogate_for(
        game, ev.metric, ev.temperature, ev.batch_size, center=ev.center)
    if sur.n != game.n:
        raise ValueError(f"the surrogate has {sur.n} players, the game {game.n}")
    if ev.calibrate:
        v0, vn = req.values([0, game.full_mask])
        sur = sur.calibrated(v0, vn)
    return sur
