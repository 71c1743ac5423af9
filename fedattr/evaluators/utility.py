"""Validation utility of many parameter sets of one model architecture."""

from __future__ import annotations

import contextlib
import copy
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedattr.core.registry import did_you_mean

from .engines import (
    ENGINE_CLASSES,
    LoopEngine,
    NaiveEngine,
    StackedEngine,
    ValidationData,
    VmapEngine,
    probe_parameter_sets,
    verify_engine,
)
from .layout import StateLayout

__all__ = ["METRICS", "ENGINES", "ModelUtility"]

_log = logging.getLogger(__name__)

METRICS = ("accuracy", "neg_ce", "balanced_accuracy")
ENGINES = ("auto", "batched", "stacked", "loop", "vmap", "naive")


class ModelUtility:
    """Utility on a fixed validation set of models given as flat floating-point state vectors.

    A parameter set is a vector over the model's floating-point ``state_dict`` entries in
    ``state_dict`` order (see :class:`StateLayout`): parameters and floating-point buffers such
    as BatchNorm running statistics. Integer buffers come from ``model``. Models are evaluated in
    ``eval()`` mode; ``model`` itself is copied and never modified.

    Parameters
    ----------
    model : nn.Module
        Architecture template; its integer buffers are used as is.
    x_val, y_val : Tensor or array
        Validation inputs (already shaped for ``model``) and integer labels.
    metric : {"accuracy", "neg_ce", "balanced_accuracy"}
        Accuracy; negative mean cross-entropy; or mean per-class recall over the classes
        present in the (subset of the) validation labels.
    num_classes : int, optional
        Number of model outputs; inferred from one forward pass when omitted.
    val_subset : int, optional
        Evaluate on a fixed random subset of this many validation examples.
    subset_seed : int
        Seed of that subset.
    engine : {"auto", "batched", "stacked", "loop", "vmap", "naive"}
        How parameter sets are run (:mod:`fedattr.evaluators.engines`). ``naive``: per
        parameter set, ``load_state_dict`` into a model copy and one forward over the whole
        validation set (the reference). ``loop``: ``torch.func.functional_call`` on views of the
        flat vector, validation data in batches of ``batch_size``. ``vmap``: ``functional_call``
        vectorised with ``torch.func.vmap`` over chunks of parameter sets. ``stacked``: up to
        ``stack_size`` parameter sets run as one wider network (:class:`StackedNet`), for
        networks that are a plain sequence of layers. ``auto``/``batched``: ``vmap`` on CUDA;
        on CPU ``stacked`` for small networks (``stack_max_flops``). The engine is verified on
        the model when the utility is built: its logits on a probe (two parameter sets, up to
        four validation examples) must equal the naive engine's; an engine that cannot take
        the model, fails on it or differs is passed over for ``loop``, then ``naive``
        (``engine_reason_`` says why).
    device : str or torch.device
        Where models run; validation data is moved there once.
    batch_size : int, optional
        Validation examples per forward pass in the ``loop``, ``vmap`` and ``stacked`` engines;
        default 250, and 50 for ``stacked`` (K models x 50 images keep its activations in cache).
    stack_size : int
        Parameter sets per stacked forward (``stacked`` engine), also bounded by
        ``max_memory_bytes``.
    sub_batch : int
        Images per tile of the stacked engine's first layer.
    stack_max_flops : float
        ``auto`` stacks only networks of at most this many FLOPs per example (one forward,
        counted by ``torch.utils.flop_counter``): stacking pays when each model's layers are too
        small to keep the matrix units busy (the small CNN, 2 MFLOP: 2x the loop), not for large
        ones (VGG-11 at 32x32, 300 MFLOP: the loop was faster).
    max_memory_bytes : int
        Bound on the memory of one chunk of parameter sets (and, for ``vmap``, their
        activations); longer batches of parameter sets are processed chunk by chunk.
    channels_last : {"auto", True, False}
        Make convolution outputs channels_last in the ``loop`` engine's own model copy;
        ``auto`` does it on CPU for models containing ``nn.Conv2d``. Used only when the
        model's forward gives the same logits with it (a ``view`` after a convolution does not
        accept it); ``model`` and ``model_`` keep their layout.
    num_threads : int, optional
        torch intra-op threads while evaluating (restored afterwards); None leaves torch's
        setting. When other processes share the cores, 1 thread can be several times faster
        than oversubscribed threads waiting on each other.

    Attributes
    ----------
    layout : StateLayout
        Flat-vector layout of the model's floating-point state.
    engine_ : Engine
        The engine used (``engine_.name``: ``"stacked"``, ``"loop"``, ``"vmap"`` or ``"naive"``).
    engine_reason_ : str
        Why engines before it were passed over (``""`` when the first choice was used).
    channels_last_ : bool
        Whether the loop engine makes convolution outputs channels_last.
    n_val_ : int
        Number of validation examples used.
    num_classes_ : int
    classes_present_ : Tensor
        Labels present in the validation set used (the classes ``balanced_accuracy`` averages).
    class_counts_ : ndarray
        Validation examples of each class used, float64 ``[num_classes_]``.
    max_coalitions_per_call_ : int
        Parameter sets evaluated together under ``max_memory_bytes``.
    n_calls_, n_models_, seconds_ : int, int, float
        Calls made, parameter sets evaluated and seconds spent so far.
    """

    def __init__(
        self,
        model: nn.Module,
        x_val,
        y_val,
        metric: str = "accuracy",
        num_classes: int | None = None,
        val_subset: int | None = None,
        subset_seed: int = 0,
        engine: str = "auto",
        device: str | torch.device = "cpu",
        batch_size: int | None = None,
        max_memory_bytes: int = 1 << 30,
        stack_size: int = 32,
        sub_batch: int = 2,
        stack_max_flops: float = 5e7,
        channels_last: bool | str = "auto",
        num_threads: int | None = None,
    ):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}{did_you_mean(engine, ENGINES)}; valid: {', '.join(ENGINES)}")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if stack_size < 1 or sub_batch < 1:
            raise ValueError("stack_size and sub_batch must be >= 1")
        self.metric = metric
        self.num_classes = num_classes
        self.val_subset = val_subset
        self.subset_seed = subset_seed
        self.engine = engine
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.stack_size = int(stack_size)
        self.sub_batch = int(sub_batch)
        self.stack_max_flops = float(stack_max_flops)
        self.max_memory_bytes = int(max_memory_bytes)
        self.channels_last = channels_last
        self.num_threads = num_threads

        self.layout = StateLayout.from_module(model)
        self._template_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._model = copy.deepcopy(model).to(self.device).eval().requires_grad_(False)

        self._setup_data(x_val, y_val)
        self._input_dtype = next(
            (t.dtype for t in self._template_state.values() if torch.is_floating_point(t)), torch.float32
        )
        self._x = self._x.to(self._input_dtype) if torch.is_floating_point(self._x) else self._x

        act_bytes = self._probe()
        self.engine_, self.engine_reason_ = self._choose_engine()
        self.channels_last_ = bool(getattr(self.engine_, "channels_last", False))
        self._batch = self.engine_.batch

        item = torch.empty(0, dtype=self.layout.dtype).element_size()
        per_model = self.engine_.bytes_per_model(max(1, self.layout.size * item), act_bytes)
        self.max_coalitions_per_call_ = max(1, self.max_memory_bytes // per_model)
        if self.engine_.name == "stacked":
            self.max_coalitions_per_call_ = min(self.max_coalitions_per_call_, self.stack_size)

        self.n_calls_ = 0
        self.n_models_ = 0
        self.seconds_ = 0.0

    # setup -------------------------------------------------------------------------------------
    def _setup_data(self, x_val, y_val) -> None:
        x = torch.as_tensor(x_val)
        y = torch.as_tensor(y_val).long().reshape(-1)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x_val has {x.shape[0]} rows but y_val has {y.shape[0]}")
        if self.val_subset is not None and self.val_subset < x.shape[0]:
            g = torch.Generator().manual_seed(int(self.subset_seed))
            idx = torch.randperm(x.shape[0], generator=g)[: int(self.val_subset)].sort().values
            x, y = x[idx], y[idx]
        if x.shape[0] == 0:
            raise ValueError("empty validation set")
        self._x = x.to(self.device)
        self._y = y.to(self.device)
        self.n_val_ = int(y.shape[0])
        self.classes_present_ = torch.unique(y).cpu()

    @torch.no_grad()
    def _probe(self) -> int:
        """Infer the number of classes and activation bytes per example from a 2-example forward."""
        sizes: list[int] = []

        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                sizes.append(output.numel() * output.element_size())

        handles = [m.register_forward_hook(hook) for m in self._model.modules()]
        try:
            k = min(2, self.n_val_)
            out = self._model(self._x[:k])
        finally:
            for h in handles:
                h.remove()
        if out.dim() != 2:
            raise ValueError(f"model must return logits [batch, classes], got shape {tuple(out.shape)}")
        inferred = int(out.shape[1])
        if self.num_classes is not None and self.num_classes != inferred:
            raise ValueError(f"num_classes={self.num_classes} but the model outputs {inferred} logits")
        self.num_classes_ = inferred
        if int(self.classes_present_.max()) >= inferred or int(self.classes_present_.min()) < 0:
            raise ValueError("validation labels outside [0, num_classes)")
        self._class_counts = torch.bincount(self._y, minlength=inferred).to(torch.float64)
        self._present = self._class_counts > 0
        # Labels one-hot once: per-class correct counts of K models are then one matmul.
        self._onehot = F.one_hot(self._y, inferred).to(torch.float32)
        return max(1, sum(sizes) // k)

    def _candidates(self) -> list[str]:
        """Engines to try, in order: the requested one (``auto``: ``vmap`` on CUDA, ``stacked``
        on CPU), then ``loop``, then the ``naive`` reference."""
        first = self.engine
        if first in ("auto", "batched"):
            first = "vmap" if self.device.type == "cuda" else "stacked"
        return list(dict.fromkeys([first, "loop", "naive"]))

    def _build(self, name: str, data: ValidationData, channels_last: bool = False):
        """Engine ``name`` on this utility's model copy and data; ``ValueError`` if it cannot
        take the model (a network that cannot be stacked)."""
        cls = ENGINE_CLASSES[name]
        batch = int(self.batch_size if self.batch_size is not None else cls.default_batch)
        if name == "naive":
            return NaiveEngine(self._model, self.layout, data, batch, self._template_state)
        if name == "loop":
            return LoopEngine(self._model, self.layout, data, batch, channels_last=channels_last)
        if name == "stacked":
            return StackedEngine(self._model, self.layout, data, batch, sub_batch=self.sub_batch)
        return VmapEngine(self._model, self.layout, data, batch)

    def _too_large_to_stack(self) -> str:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            self._model(self._x[:1])
        flops = counter.get_total_flops()
        if flops > self.stack_max_flops:
            return (f"{flops / 1e6:.0f} MFLOP per example, above stack_max_flops "
                    f"({self.stack_max_flops / 1e6:.0f} M): the loop is as fast")
        return ""

    def _choose_engine(self):
        """The first candidate engine that takes the model and gives the naive engine's logits on
        a probe (two parameter sets, up to four validation examples), and why the ones before it
        were passed over (``""`` when the first was used)."""
        data = ValidationData(self._x, self._y, self._onehot)
        reference = self._build("naive", data)
        if self.engine == "naive":
            return reference, ""
        flats = probe_parameter_sets(self.layout, self._template_state, self.device)
        x = self._x[: min(4, self.n_val_)]
        use_cl = (self.channels_last is True) or (
            self.channels_last == "auto"
            and self.device.type == "cpu"
            and any(isinstance(m, nn.Conv2d) for m in self._model.modules())
        )
        reasons: list[str] = []
        for name in self._candidates():
            if name == "naive":
                break
            layouts = [True, False] if name == "loop" and use_cl else [False]
            for cl in layouts:
                try:
                    engine = self._build(name, data, channels_last=cl)
                except ValueError as err:
                    why = str(err)
                else:
                    # Stacking pays for small networks only, unless asked for by name.
                    why = self._too_large_to_stack() if name == "stacked" and self.engine != "stacked" else ""
                    why = why or verify_engine(engine, reference, flats, x)
                if not why:
                    if reasons:
                        _log.info("engine %s for %s: %s", name, type(self._model).__name__, "; ".join(reasons))
                    return engine, "; ".join(reasons)
                label = f"{name} (channels-last)" if cl else name
                reasons.append(f"{label}: {why}")
        reason = "; ".join(reasons)
        _log.info("engine naive for %s: %s", type(self._model).__name__, reason)
        return reference, reason

    # evaluation --------------------------------------------------------------------------------
    def __call__(self, params: torch.Tensor) -> np.ndarray:
        """Utilities of a ``[K, P]`` batch (or one ``[P]`` vector) of parameter sets, as float64 ``[K]``."""
        return self._run(params, (self.metric,))[self.metric]

    def evaluate_all(self, params: torch.Tensor, metrics: tuple[str, ...] = METRICS) -> dict[str, np.ndarray]:
        """Every metric in ``metrics`` of a ``[K, P]`` batch of parameter sets from one forward pass each.

        Returns ``{metric: float64 [K]}``; each array equals what a :class:`ModelUtility` with that
        ``metric`` returns for the same parameter sets.
        """
        metrics = tuple(dict.fromkeys(metrics))
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise ValueError(f"unknown metric(s) {unknown or metrics!r}; valid: {', '.join(METRICS)}")
        return self._run(params, metrics)

    def evaluate_with_class_counts(self, params: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Utilities and per-class correct counts of a ``[K, P]`` batch (or one ``[P]`` vector) of
        parameter sets, from one forward pass each.

        Returns ``(values, counts)``: ``values`` float64 ``[K]``, equal to ``self(params)``;
        ``counts`` float64 ``[K, num_classes_]``, the validation examples of each class the model
        classifies correctly (integer valued). Available for the argmax metrics only.
        """
        if self.metric not in ("accuracy", "balanced_accuracy"):
            raise ValueError(f"per-class correct counts need metric 'accuracy' or 'balanced_accuracy', not {self.metric!r}")
        counts: list[np.ndarray] = []
        values = self._run(params, tuple(dict.fromkeys((self.metric, "balanced_accuracy"))), counts)[self.metric]
        return values, (np.concatenate(counts) if counts else np.empty((0, self.num_classes_)))

    @property
    def class_counts_(self) -> np.ndarray:
        """Validation examples of each class, float64 ``[num_classes_]`` (0 for absent classes)."""
        return self._class_counts.cpu().numpy().copy()

    def _parameter_sets(self, params) -> torch.Tensor:
        """``params`` as a ``[K, P]`` tensor (one ``[P]`` vector becomes ``K = 1``); any other
        shape is a ``ValueError``."""
        params = torch.as_tensor(params)
        if params.dim() == 1:
            params = params[None]
        if params.dim() != 2 or params.shape[1] != self.layout.size:
            raise ValueError(f"expected parameter sets of shape [K, {self.layout.size}], got {tuple(params.shape)}")
        return params

    def _run(self, params: torch.Tensor, metrics: tuple[str, ...],
             class_counts: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Metrics of ``params``; with ``class_counts`` (a list) and ``"balanced_accuracy"`` among
        ``metrics``, each chunk's per-class correct counts ``[k, C]`` are appended to it."""
        params = self._parameter_sets(params)
        t0 = time.perf_counter()
        params = params.to(self.device, self.layout.dtype)
        out = {m: np.empty(params.shape[0], dtype=np.float64) for m in metrics}
        step = self.max_coalitions_per_call_
        with self._threads(), torch.no_grad():
            for start in range(0, params.shape[0], step):
                chunk = params[start:start + step]
                stats = self.engine_.statistics(chunk, metrics)
                if class_counts is not None:
                    class_counts.append(stats["balanced_accuracy"].cpu().numpy().astype(np.float64))
                for m, v in self._finish(stats, metrics).items():
                    out[m][start:start + chunk.shape[0]] = v
        self.n_calls_ += 1
        self.n_models_ += params.shape[0]
        self.seconds_ += time.perf_counter() - t0
        return out

    evaluate = __call__

    @contextlib.contextmanager
    def _threads(self):
        """torch's intra-op threads set to ``num_threads`` inside, restored after."""
        threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(int(self.num_threads))
        try:
            yield
        finally:
            if self.num_threads is not None:
                torch.set_num_threads(threads)

    def _finish(self, stats: dict[str, torch.Tensor], metrics: tuple[str, ...]) -> dict[str, np.ndarray]:
        out = {}
        for metric in metrics:
            s = stats[metric].cpu()
            if metric == "accuracy":
                out[metric] = (s[:, 0] / self.n_val_).numpy()
            elif metric == "neg_ce":
                out[metric] = (-s[:, 0] / self.n_val_).numpy()
            else:
                present = self._present.cpu()
                recall = s[:, present] / self._class_counts.cpu()[present]
                out[metric] = recall.mean(1).numpy()
        return out

    # access for gradient-based evaluators ------------------------------------------------------
    @property
    def model_(self) -> nn.Module:
        """The evaluation copy of the model (eval mode, on ``device``); do not modify it."""
        return self._model

    @property
    def validation_(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation inputs and labels actually used (after ``val_subset``), on ``device``."""
        return self._x, self._y

    def logits(self, params: torch.Tensor) -> torch.Tensor:
        """Logits ``[K, n_val_, num_classes_]`` of a ``[K, P]`` batch (or one ``[P]`` vector) of
        parameter sets on the validation examples used, on ``device``.

        Eval-mode forwards through the engine in use (the stacked one in chunks of
        ``max_coalitions_per_call_``, the others one ``functional_call`` per parameter set);
        validation data in batches of ``batch_size``. Not counted in ``n_calls_``,
        ``n_models_`` or ``seconds_``.
        """
        params = self._parameter_sets(params)
        params = params.to(self.device, self.layout.dtype)
        with self._threads(), torch.no_grad():
            rows = self.engine_.logits(params, self.max_coalitions_per_call_)
        if not rows:
            return torch.empty(0, self.n_val_, self.num_classes_, dtype=self._input_dtype, device=self.device)
        return torch.stack(rows)

    def __repr__(self) -> str:
        return (
            f"ModelUtility(metric={self.metric!r}, engine={self.engine_.name!r}, n_val={self.n_val_}, "
            f"P={self.layout.size}, device={str(self.device)!r})"
        )
