"""The generator-footprint test: does a client's update follow the public generator's images of a
class more than real images of that class?

The attacker's synthetic images come from a generator trained on the public auxiliary split. The
server holds the same split, so it can train a generator of the same family, label what it
produces with a classifier trained on the public labels, and keep a fixed set of generator
samples of every class. Each round, at the global model ``w_t``, it computes per class ``c``

    ``g_gen_c``  = grad_w CE(f_w(generator samples of c), c)
    ``g_real_c`` = grad_w CE(f_w(real held-out images of c), c)     (the server's validation split)

and for every client update ``u_i`` how much more it follows the generator's samples of ``c``
than real images of ``c``:

    ``s_ic = cos(u_i, -g_gen_c) - cos(u_i, -g_real_c)``.

A single SGD step on generator samples gives ``s = 1 - rho_c`` (``rho_c`` the cosine of the two
gradients), a step on real images ``-(1 - rho_c)``; where the generator's and the real images'
gradients agree (``rho_c`` near 1) the difference is small whatever the client did, so a class the
generator renders faithfully cannot flag anyone. A client is flagged on class ``c`` when
``s_ic > threshold`` and it clearly learns class ``c`` (``cos(u_i, -g_gen_c) > min_alignment``).

``footprint`` is the detector (it needs the server's data: :meth:`FootprintDetector.bind`);
``footprint_discounted`` is the scoring rule that uses it on every round game: a flagged client's
value is discounted, as a whole (``scope = "client"``) or on its flagged classes only
(``scope = "class"``, also registered as ``footprint_class``: its per-class values, the base
evaluator on each class's share of the utility, which sum to its plain value). Hypothesis to
measure: the generator's images carry a direction real images do not, and a genuine holder of
real images of the rare classes is not flagged; the attack's alignment term (towards a real
proxy-validation gradient) works against it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from fedattr.core.env import default_cache_dir
from fedattr.evaluators import FunctionGame, ModelUtility, RoundGame

from .base import Detector, DetectorResult, RoundUpdates, register_detector
from .robust_scoring import ShardedUtility, _ClassCounts, _proxy, _validation_of, _Wrapper

__all__ = [
    "SCORERS", "FootprintClassDiscounted", "FootprintDetector", "FootprintDiscounted", "FootprintData", "class_gradients",
    "footprint_statistics", "generator_samples",
]


@dataclass
class FootprintData:
    """What the server holds for the test: a model template (architecture), real held-out images
    and the public split (images, labels)."""

    model: torch.nn.Module
    x_real: torch.Tensor
    y_real: torch.Tensor
    x_public: torch.Tensor
    y_public: torch.Tensor


def _check_images(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"footprint: {name} images must be [N, C, H, W], got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"footprint: {name} labels must be [N] for {x.shape[0]} images, got shape {tuple(y.shape)}")


def class_gradients(model: torch.nn.Module, layout, base: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    classes: list[int]) -> torch.Tensor:
    """``[len(classes), layout.size]``: per class ``c``, the gradient at ``base`` (``w_t``) of the mean
    cross-entropy of ``model`` on the examples of ``(x, y)`` labelled ``c``, in ``layout``; buffers
    (and classes without examples) are 0. The model runs in eval mode."""
    m = copy.deepcopy(model).cpu().eval()
    m.load_state_dict(layout.to_state_dict(torch.as_tensor(base).detach().cpu().to(layout.dtype), m.state_dict()))
    m.requires_grad_(True)
    names = [n for n, _ in m.named_parameters()]
    params = [p for _, p in m.named_parameters()]
    template = {k: torch.zeros_like(v) for k, v in m.state_dict().items()}
    x, y = torch.as_tensor(x).cpu(), torch.as_tensor(y).cpu().long()
    rows = []
    for c in classes:
        sel = y == c
        if not bool(sel.any()):
            rows.append(torch.zeros(layout.size, dtype=layout.dtype))
            continue
        grads = torch.autograd.grad(F.cross_entropy(m(x[sel].to(params[0].dtype)), y[sel]), params)
        state = dict(template)
        state.update({n: g.detach() for n, g in zip(names, grads)})
        rows.append(layout.flatten(state))
    return torch.stack(rows) if rows else torch.zeros(0, layout.size, dtype=layout.dtype)


def _unit(g: torch.Tensor) -> torch.Tensor:
    n = g.norm(dim=-1, keepdim=True)
    return torch.where(n > 0, g / n.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(g))


def footprint_statistics(updates: torch.Tensor, g_gen: torch.Tensor, g_real: torch.Tensor) -> dict[str, np.ndarray]:
    """Per client ``i`` and class ``c`` (all ``[n, C]``): ``a_gen = cos(u_i, -g_gen_c)``,
    ``a_real = cos(u_i, -g_real_c)`` and the footprint ``score = a_gen - a_real`` (cosines with a
    zero vector are 0)."""
    u = torch.as_tensor(updates).detach().to(torch.float64)
    gg = torch.as_tensor(g_gen).detach().to(torch.float64)
    gr = torch.as_tensor(g_real).detach().to(torch.float64)
    if u.dim() != 2 or gg.dim() != 2 or gg.shape != gr.shape or gg.shape[1] != u.shape[1]:
        raise ValueError(f"footprint: updates [n, P] and class gradients [C, P] of one P expected, got "
                         f"{tuple(u.shape)}, {tuple(gg.shape)} and {tuple(gr.shape)}")
    uu, ug, ur = _unit(u), _unit(gg), _unit(gr)
    a_gen, a_real = -(uu @ ug.T), -(uu @ ur.T)
    return {"a_gen": a_gen.numpy(), "a_real": a_real.numpy(), "score": (a_gen - a_real).numpy()}


# -- the server's generator samples -----------------------------------------------------------------

_SAMPLES: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def generator_samples(model: torch.nn.Module, x_public: torch.Tensor, y_public: torch.Tensor, *, per_class: int,
                      generator_seed: int, generator_epochs: int, teacher_epochs: int, steps: int,
                      candidates: int, cache_dir=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` generator images of every class of the public split, and their labels.

    The latent attack's VAE (its default architecture and recipe, ``generator_epochs`` epochs, seed
    ``generator_seed``) is trained on the public images; a fresh copy of ``model`` trained on the
    public labels (``teacher_epochs``) labels its samples: for each wanted image the most confident
    of ``candidates`` random codes is refined for ``steps`` Adam steps towards its class (the attack's
    optimiser without its alignment term). Memoised per process on the inputs; the VAE and the labeller
    are cached on disk under ``cache_dir`` when given.
    """
    from fedattr.attacks._util import architecture_signature, tensor_fingerprint

    _check_images("public", x_public, y_public)
    params = (per_class, generator_seed, generator_epochs, teacher_epochs, steps, candidates)
    key = tensor_fingerprint(x_public, y_public) + repr(params) + repr(architecture_signature(model))
    if key in _SAMPLES:
        return _SAMPLES[key]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums in a fixed order: the same samples in every process
    try:
        _SAMPLES[key] = _samples(model, x_public, y_public, per_class, generator_seed, generator_epochs,
                                 teacher_epochs, steps, candidates, cache_dir)
    finally:
        torch.set_num_threads(threads)
    return _SAMPLES[key]


def _samples(model, x_public, y_public, per_class, generator_seed, generator_epochs, teacher_epochs, steps,
             candidates, cache_dir):
    """:func:`generator_samples`' work, uncached."""
    from fedattr.attacks import generator as gen
    from fedattr.attacks.latent import LatentOptimiser
    from fedattr.attacks.teacher import TeacherTrainer

    channels, side = int(x_public.shape[1]), int(x_public.shape[2])
    vae, _ = gen.train_generator(x_public.cpu(), channels=channels, side=side, epochs=generator_epochs,
                                 seed=generator_seed, cache_dir=cache_dir, source_tag="public")
    vae.requires_grad_(False)
    teacher, _ = TeacherTrainer(epochs=teacher_epochs).train(model, x_public.cpu(), y_public.cpu().long(),
                                                             seed=generator_seed, cache_dir=cache_dir)
    teacher.requires_grad_(False)
    classes = sorted(int(c) for c in torch.unique(y_public))
    labels = torch.tensor([c for c in classes for _ in range(per_class)], dtype=torch.long)
    opt = LatentOptimiser(steps=steps, lambda_align=0.0, candidates=candidates)
    empty = x_public[:0].cpu()
    batch = opt.optimise(vae.decode, vae.latent_dim, teacher, teacher, labels, empty, labels[:0],
                         seed=generator_seed)
    return batch.x.detach(), batch.y.long()


# -- the detector ------------------------------------------------------------------------------------


def _check_params(name: str, p: dict[str, Any]) -> None:
    for key in ("per_class", "generator_epochs", "teacher_epochs", "candidates"):
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: {key} must be an integer >= 1, got {v!r}")
    for key in ("steps", "generator_seed"):
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}: {key} must be an integer >= 0, got {v!r}")
    for key in ("threshold", "min_alignment"):
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -1.0 <= float(v) <= 1.0:
            raise ValueError(f"{name}: {key} must be a number in [-1, 1], got {v!r}")


@register_detector("footprint")
class FootprintDetector(Detector):
    """Flags a client on class ``c`` when its update follows the public generator's images of ``c``
    more than real images of ``c``: footprint ``s_ic > threshold`` and ``a_gen_ic > min_alignment``
    (see the module docstring). Its score is ``max_c s_ic`` over the classes it learns (NaN when it
    learns none); higher is more suspicious.

    The server's data comes through :meth:`bind` (model template, real held-out images, public
    split) or, for tests and precomputed runs, :meth:`bind_samples` (generator samples given).

    Parameters
    ----------
    threshold : float
        Footprint ``s_ic`` above which a (client, class) is flagged (0.02).
    min_alignment : float
        ``cos(u_i, -g_gen_c)`` a client needs on class ``c`` to be judged on it (0.15: it clearly
        learns the class).
    per_class : int
        Generator samples per class (32).
    generator_seed, generator_epochs, teacher_epochs, steps, candidates : int
        The server's generator (seed 0, 30 epochs: the attack's recipe), its labeller (15 epochs),
        and the refinement of each sample (30 Adam steps from the best of 8 codes).
    max_real_per_class : int
        Real images per class the real gradient averages (the first ones of the split; 100).

    Attributes (after ``observe``)
    ------------------------------
    statistics_ : dict of ndarray
        ``a_gen``, ``a_real``, ``score``, each ``[n, C]``.
    class_flags_ : ndarray of bool, shape [n, C]
    classes_ : list of int
    """

    needs_server_data: ClassVar[bool] = True

    def __init__(self, threshold: float = 0.02, min_alignment: float = 0.15, per_class: int = 32,
                 generator_seed: int = 0, generator_epochs: int = 30, teacher_epochs: int = 15, steps: int = 30,
                 candidates: int = 8, max_real_per_class: int = 100):
        self.threshold = threshold
        self.min_alignment = min_alignment
        self.per_class = per_class
        self.generator_seed = generator_seed
        self.generator_epochs = generator_epochs
        self.teacher_epochs = teacher_epochs
        self.steps = steps
        self.candidates = candidates
        self.max_real_per_class = max_real_per_class
        self._check()
        self._model = self._gen = self._real = None

    def _check(self) -> None:
        _check_params("detector 'footprint'", self.get_params())
        v = self.max_real_per_class
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"detector 'footprint': max_real_per_class must be an integer >= 1, got {v!r}")

    def bind(self, data: FootprintData, cache_dir=None) -> "FootprintDetector":
        """Build the generator samples from ``data``'s public split and keep its real images."""
        if len(data.y_public) == 0:
            raise ValueError("detector 'footprint' needs the public auxiliary split: set data.aux_size > 0")
        x, y = generator_samples(data.model, data.x_public, data.y_public, per_class=self.per_class,
                                 generator_seed=self.generator_seed, generator_epochs=self.generator_epochs,
                                 teacher_epochs=self.teacher_epochs, steps=self.steps, candidates=self.candidates,
                                 cache_dir=cache_dir)
        return self.bind_samples(data.model, (x, y), (data.x_real, data.y_real))

    def bind_samples(self, model: torch.nn.Module, generated: tuple[torch.Tensor, torch.Tensor],
                     real: tuple[torch.Tensor, torch.Tensor]) -> "FootprintDetector":
        """Use ``generated`` (images, labels) as the generator samples and ``real`` as the held-out images."""
        _check_images("generator", *generated)
        _check_images("real", *real)
        xr, yr = torch.as_tensor(real[0]).cpu(), torch.as_tensor(real[1]).cpu().long()
        keep = torch.zeros(len(yr), dtype=torch.bool)
        for c in torch.unique(yr):
            keep[torch.nonzero(yr == c).reshape(-1)[: self.max_real_per_class]] = True
        self._model = model
        self._gen = (torch.as_tensor(generated[0]).cpu(), torch.as_tensor(generated[1]).cpu().long())
        self._real = (xr[keep], yr[keep])
        return self

    def observe(self, round_updates: RoundUpdates) -> DetectorResult:
        if self._model is None:
            raise ValueError("detector 'footprint' needs the server's data: call bind() (model, real images, public split)")
        from fedattr.evaluators import StateLayout

        layout = StateLayout.from_state_dict(self._model.state_dict())
        if round_updates.updates.shape[1] != layout.size:
            raise ValueError(f"footprint: updates have {round_updates.updates.shape[1]} entries, the model {layout.size}")
        classes = sorted(set(self._gen[1].tolist()) & set(self._real[1].tolist()))
        self.classes_ = classes
        g_gen = class_gradients(self._model, layout, round_updates.base, *self._gen, classes)
        g_real = class_gradients(self._model, layout, round_updates.base, *self._real, classes)
        st = self.statistics_ = footprint_statistics(round_updates.updates, g_gen, g_real)
        judged = st["a_gen"] > float(self.min_alignment)
        self.class_flags_ = judged & (st["score"] > float(self.threshold))
        masked = np.where(judged, st["score"], -np.inf)
        score = masked.max(axis=1) if classes else np.full(round_updates.n, -np.inf)
        score = np.where(np.isfinite(score), score, np.nan)
        flags = self.class_flags_.any(axis=1)
        info = {"classes": classes, "threshold": float(self.threshold),
                "flagged_classes": {str(p): [c for c, f in zip(classes, row) if f]
                                    for p, row in zip(round_updates.players, self.class_flags_)},
                "class_scores": {str(p): [float(s) for s in row] for p, row in zip(round_updates.players, st["score"])}}
        return DetectorResult(score, flags, True, info)


# -- the scoring rule --------------------------------------------------------------------------------

SCOPES = ("client", "class")


class FootprintDiscounted(_Wrapper):
    """The base evaluator's values with the clients the ``footprint`` detector flags this round
    discounted: ``v_i (1 - discount)`` (``scope = "client"``), or ``v_i - discount * sum_{c flagged}
    v_i^c`` (``scope = "class"``), ``v^c`` the base evaluator on class ``c``'s share of the utility
    (``n_c / N`` times the metric on class ``c``'s validation images; ``1 / C`` for balanced accuracy),
    so that ``sum_c v_i^c = v_i`` for a linear base evaluator. Unflagged clients keep their values.

    The detector reads the round game's validation images as the real held-out images and its
    ``public_data`` as the public split (set by the server's ``RoundScorer``); a game without them
    (a table, as in scenario validation) gets the base values with ``applied_ = False``.

    Parameters
    ----------
    base, base_params : str, dict
        The evaluator whose values are discounted (default exact Shapley).
    scope : {"client", "class"}
        What a flag discounts.
    discount : float
        Share of the flagged value removed, in [0, 1] (1.0).
    detector_params : dict, optional
        Parameters of the ``footprint`` detector.

    Attributes (after ``fit``)
    --------------------------
    flags_ : ndarray of bool
        Clients flagged this round.
    class_flags_ : ndarray of bool, shape [n, C]
    raw_values_ : ndarray
        The base values.
    """

    #: it reads the public split (``data.aux_size`` > 0), checked before a run starts
    needs_server_data: ClassVar[bool] = True

    def __init__(self, base: str = "shapley", base_params: dict | None = None, scope: str = "client",
                 discount: float = 1.0, detector_params: dict | None = None):
        super().__init__(base, base_params)
        self.scope = scope
        self.discount = discount
        self.detector_params = detector_params

    def _check(self) -> FootprintDetector:
        if self.scope not in SCOPES:
            raise ValueError(f"evaluator 'footprint_discounted': scope must be one of {list(SCOPES)}, got {self.scope!r}")
        d = self.discount
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= float(d) <= 1.0:
            raise ValueError(f"evaluator 'footprint_discounted': discount must be a number in [0, 1], got {d!r}")
        try:
            return FootprintDetector(**dict(self.detector_params or {}))
        except TypeError as exc:
            raise ValueError(f"evaluator 'footprint_discounted': detector_params: {exc}") from None

    def _fit(self, game, req, rng):
        det = self._check()
        seed = self._seed(rng)
        raw = np.asarray(self._base().fit(_proxy(game, req.values), seed=seed).values_, dtype=np.float64)
        self.raw_values_ = raw
        n = game.n
        utility = getattr(game, "utility", None)
        public = getattr(game, "public_data", None)
        if not isinstance(game, RoundGame) or not isinstance(utility, ModelUtility) or public is None or n == 0:
            self.applied_ = False
            self.flags_ = np.zeros(n, dtype=bool)
            return raw
        self.applied_ = True
        model, x_val, y_val = _validation_of(utility)
        # The generator and the labeller are disk-cached by config and data (the generator cache
        # every fedattr process shares), so a resumed or second run does not train them again.
        det.bind(FootprintData(model, x_val.cpu(), y_val.cpu(), public[0], public[1]), cache_dir=default_cache_dir())
        w = np.ones(n) if game.weights is None else np.asarray(game.weights, dtype=np.float64)
        res = det.observe(RoundUpdates(0, list(game.players), game.updates, w, game.base))
        self.flags_, self.class_flags_, self.classes_ = res.flags, det.class_flags_, det.classes_
        out = raw.copy()
        if not self.flags_.any():
            return out
        d = float(self.discount)
        if self.scope == "client":
            out[self.flags_] = (1.0 - d) * raw[self.flags_]
            return out
        per_class = self.class_values(game, utility, det.classes_, seed)
        self.class_values_ = per_class
        return out - d * (per_class * self.class_flags_).sum(axis=1)

    def class_values(self, game: RoundGame, utility: ModelUtility, classes: list[int], seed: int) -> np.ndarray:
        """``[n, len(classes)]``: the base evaluator on each class's share of the utility."""
        _, _, y = _validation_of(utility)
        y = y.cpu()
        groups = [torch.nonzero(y == c).reshape(-1) for c in classes]
        share = (np.full(len(classes), 1.0 / max(int(torch.unique(y).numel()), 1)) if utility.metric == "balanced_accuracy"
                 else np.array([g.numel() / max(len(y), 1) for g in groups], dtype=np.float64))
        metric = "accuracy" if utility.metric == "balanced_accuracy" else utility.metric
        table: dict[int, np.ndarray] = {}
        counts = _ClassCounts(game) if metric == "accuracy" and game.has_class_counts else None
        if counts is not None:
            # Each class's recall is its correct count over its examples: read from the counts the
            # round game keeps of every coalition it evaluated (nothing new once Shapley has run).
            size = np.array([max(g.numel(), 1) for g in groups], dtype=np.float64)

            def rows(masks: list[int]) -> np.ndarray:
                return counts(masks)[:, classes] / size
        else:
            sharded = ShardedUtility(utility, groups, lambda t: t, metric=metric)

            def rows(masks: list[int]) -> np.ndarray:
                new = [m for m in dict.fromkeys(int(m) for m in masks) if m not in table]
                if new:
                    with torch.no_grad():
                        t = sharded.table(game.aggregate_many(new))
                    table.update(zip(new, t))
                return np.stack([table[int(m)] for m in masks])

        out = np.zeros((game.n, len(classes)))
        for k in range(len(classes)):
            if groups[k].numel() == 0:
                continue
            col = FunctionGame(lambda masks, k=k: share[k] * rows(list(masks))[:, k], game.n, game.players, batched=True)
            out[:, k] = self._base().fit(col, seed=seed).values_
        # Coalitions evaluated for the per-class games (none when the round's counts had them all).
        self.n_class_evaluations_ = len(table) if counts is None else counts.evaluated
        return out


class FootprintClassDiscounted(FootprintDiscounted):
    """:class:`FootprintDiscounted` with ``scope = "class"`` by default: a flag removes only the
    flagged classes' share of the client's value (a second registry name, so that one scenario
    can score both scopes on the same round games)."""

    def __init__(self, base: str = "shapley", base_params: dict | None = None, scope: str = "class",
                 discount: float = 1.0, detector_params: dict | None = None):
        super().__init__(base, base_params, scope, discount, detector_params)


#: Registry name -> scoring rule of this module (``fedattr.defenses.register_scoring_rules`` adds them).
SCORERS = {"footprint_discounted": FootprintDiscounted, "footprint_class": FootprintClassDiscounted}
