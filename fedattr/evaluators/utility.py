"""Validation utility of many parameter sets of one model architecture."""

from __future__ import annotations

import copy
import time
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .layout import StateLayout
from .stacked import StackedNet

__all__ = ["METRICS", "ENGINES", "ModelUtility"]

METRICS = ("accuracy", "neg_ce", "balanced_accuracy")
ENGINES = ("auto", "batched", "stacked", "loop", "vmap", "naive")


def _channels_last_hook(module, inputs, output):
    # PyTorch's CPU max-pool/ReLU kernels are several times faster on channels_last tensors
    # than on NCHW ones, and a conv with one input channel never picks channels_last by
    # itself; the layout changes strides only, never values' meaning.
    if isinstance(output, torch.Tensor) and output.dim() == 4:
        return output.contiguous(memory_format=torch.channels_last)
    return output


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
        ``naive``: per parameter set, ``load_state_dict`` into a model copy and one forward over
        the whole validation set (the reference). ``loop``: ``torch.func.functional_call`` on
        views of the flat vector, no state-dict copies, validation data in batches of
        ``batch_size``. ``vmap``: ``functional_call`` vectorised with ``torch.func.vmap`` over
        chunks of parameter sets. ``stacked``: up to ``stack_size`` parameter sets run as one
        wider network (:class:`StackedNet`: one matrix product for the first layer, grouped
        convolutions, batched matrix products), for networks that are a plain sequence of
        layers. ``auto``/``batched``: ``vmap`` on CUDA; on CPU ``stacked`` when the network can
        be stacked, is small (``stack_max_flops``) and the stacked forward matches its own on a
        probe, ``loop`` otherwise (``stack_reason_`` says why).
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
        Make convolution outputs channels_last in the ``loop`` engine; ``auto`` does it on CPU
        for models containing ``nn.Conv2d``.
    num_threads : int, optional
        torch intra-op threads while evaluating (restored afterwards); None leaves torch's
        setting. When other processes share the cores, 1 thread can be several times faster
        than oversubscribed threads waiting on each other.

    Attributes
    ----------
    layout : StateLayout
        Flat-vector layout of the model's floating-point state.
    strategy_ : str
        The engine actually used: ``"loop"``, ``"vmap"`` or ``"naive"``.
    n_val_ : int
        Number of validation examples used.
    num_classes_ : int
    classes_present_ : Tensor
        Labels present in the validation set used (the classes ``balanced_accuracy`` averages).
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
            raise ValueError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
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
        self._naive_model: nn.Module | None = None

        if engine in ("auto", "batched"):
            self.strategy_ = "vmap" if self.device.type == "cuda" else "stacked"
        else:
            self.strategy_ = engine
        self.stack_reason_ = ""
        self._stacked_net: StackedNet | None = None

        self._setup_data(x_val, y_val)
        self._input_dtype = next(
            (t.dtype for t in self._template_state.values() if torch.is_floating_point(t)), torch.float32
        )
        self._x = self._x.to(self._input_dtype) if torch.is_floating_point(self._x) else self._x

        act_bytes = self._probe()
        if self.strategy_ == "stacked":
            self._setup_stacked(required=engine == "stacked")
        self._batch = int(batch_size if batch_size is not None else (50 if self.strategy_ == "stacked" else 250))
        use_cl = (channels_last is True) or (
            channels_last == "auto"
            and self.device.type == "cpu"
            and any(isinstance(m, nn.Conv2d) for m in self._model.modules())
        )
        self.channels_last_ = bool(use_cl and self.strategy_ == "loop")
        self._hook_ids: set[int] = set()
        if self.channels_last_:
            for m in self._model.modules():
                if isinstance(m, nn.Conv2d):
                    self._hook_ids.add(m.register_forward_hook(_channels_last_hook).id)

        item = torch.empty(0, dtype=self.layout.dtype).element_size()
        per_model = max(1, self.layout.size * item)
        if self.strategy_ == "vmap":
            # Activations of every model in the chunk are alive together; 2x covers the
            # temporaries of the widest layer.
            per_model += 2 * act_bytes * min(self._batch, self.n_val_)
        elif self.strategy_ == "stacked":
            # The chunk's flat vectors, their stacked-layout copy and the activations of its models
            # on one validation batch.
            per_model = 2 * per_model + 2 * act_bytes * min(self._batch, self.n_val_)
        self.max_coalitions_per_call_ = max(1, self.max_memory_bytes // per_model)
        if self.strategy_ == "stacked":
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

    def _setup_stacked(self, required: bool) -> None:
        """Use the stacked engine if the network can be stacked and, on a probe of two parameter
        sets, gives the network's own logits; otherwise fall back to ``loop`` (or, when the
        engine was asked for by name, raise)."""
        net, reason = None, ""
        try:
            net = StackedNet(self._model, sub_batch=self.sub_batch)
        except ValueError as err:
            reason = str(err)
        if net is not None and not required:
            from torch.utils.flop_counter import FlopCounterMode

            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                self._model(self._x[:1])
            flops = counter.get_total_flops()
            if flops > self.stack_max_flops:
                net, reason = None, (f"{flops / 1e6:.0f} MFLOP per example, above stack_max_flops "
                                     f"({self.stack_max_flops / 1e6:.0f} M): the loop is as fast")
        if net is not None:
            flat = self.layout.flatten(self._template_state).to(self.device)
            gen = torch.Generator().manual_seed(0)
            noise = torch.randn(flat.shape, generator=gen, dtype=flat.dtype).to(self.device)
            flats = torch.stack([flat, flat + 0.01 * noise * flat.abs().mean()])
            names = [e.name for e in self.layout.entries if e.name.endswith("running_var")]
            for e in (self.layout[n] for n in names):  # keep perturbed variances valid
                flats[1, e.offset:e.offset + e.numel] = flats[0, e.offset:e.offset + e.numel]
            x = self._x[: min(4, self.n_val_)]
            with torch.no_grad():
                try:
                    got = net.forward(net.prepare(self.layout.unflatten_batch(flats)), x)
                except RuntimeError:  # shapes that do not chain, e.g. a residual block's projection
                    got = None
                ref = torch.stack([functional_call(self._model, self.layout.unflatten(f), (x,)) for f in flats])
            tol = 1e-4 * max(1.0, float(ref.abs().max()))
            if got is not None and got.shape == ref.shape and float((got - ref).abs().max()) <= tol:
                self._stacked_net = net
                return
            reason = "its stacked forward differs from its own forward (not a plain sequence of layers)"
        if required:
            raise ValueError(f"engine='stacked' cannot evaluate {type(self._model).__name__}: {reason}")
        self.stack_reason_ = reason
        self.strategy_ = "loop"

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

    def _run(self, params: torch.Tensor, metrics: tuple[str, ...]) -> dict[str, np.ndarray]:
        params = torch.as_tensor(params)
        if params.dim() == 1:
            params = params[None]
        if params.dim() != 2 or params.shape[1] != self.layout.size:
            raise ValueError(f"expected parameter sets of shape [K, {self.layout.size}], got {tuple(params.shape)}")
        t0 = time.perf_counter()
        params = params.to(self.device, self.layout.dtype)
        out = {m: np.empty(params.shape[0], dtype=np.float64) for m in metrics}
        step = self.max_coalitions_per_call_
        threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(int(self.num_threads))
        try:
            with torch.no_grad():
                for start in range(0, params.shape[0], step):
                    chunk = params[start:start + step]
                    if self.strategy_ == "naive":
                        stats = self._naive(chunk, metrics)
                    elif self.strategy_ == "vmap":
                        stats = self._vmap(chunk, metrics)
                    elif self.strategy_ == "stacked":
                        stats = self._stacked(chunk, metrics)
                    else:
                        stats = self._loop(chunk, metrics)
                    for m, v in self._finish(stats, metrics).items():
                        out[m][start:start + chunk.shape[0]] = v
        finally:
            if self.num_threads is not None:
                torch.set_num_threads(threads)
        self.n_calls_ += 1
        self.n_models_ += params.shape[0]
        self.seconds_ += time.perf_counter() - t0
        return out

    evaluate = __call__

    def score_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> float:
        """Utility of one model given as a state dict."""
        return float(self(self.layout.flatten(state_dict))[0])

    def _batches(self, size: int | None = None):
        size = size or self._batch
        for s in range(0, self.n_val_, size):
            e = s + size
            yield self._x[s:e], self._y[s:e], self._onehot[s:e]

    def _stats(self, logits: torch.Tensor, y: torch.Tensor, onehot: torch.Tensor,
               metrics: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Summed statistics of ``[K, B, C]`` logits per metric: correct count ``[K, 1]``, CE
        ``[K, 1]``, per-class correct counts ``[K, C]``; accuracy and balanced accuracy share
        one argmax."""
        k, b, c = logits.shape
        out = {}
        if "neg_ce" in metrics:
            ce = F.cross_entropy(logits.reshape(k * b, c).float(), y.repeat(k), reduction="none")
            out["neg_ce"] = ce.view(k, b).sum(1, dtype=torch.float64)[:, None]
        if "accuracy" in metrics or "balanced_accuracy" in metrics:
            correct = logits.argmax(-1) == y[None]
            if "accuracy" in metrics:
                out["accuracy"] = correct.sum(1, dtype=torch.float64)[:, None]
            if "balanced_accuracy" in metrics:
                out["balanced_accuracy"] = (correct.to(torch.float32) @ onehot).to(torch.float64)
        return out

    @staticmethod
    def _add(acc: dict | None, s: dict) -> dict:
        return s if acc is None else {m: acc[m] + s[m] for m in acc}

    @staticmethod
    def _cat(rows: list[dict]) -> dict:
        return {m: torch.cat([r[m] for r in rows]) for m in rows[0]}

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

    def _loop(self, flats: torch.Tensor, metrics: tuple[str, ...]) -> dict[str, torch.Tensor]:
        rows = []
        for k in range(flats.shape[0]):
            params = self.layout.unflatten(flats[k])
            acc = None
            for xb, yb, ob in self._batches():
                acc = self._add(acc, self._stats(functional_call(self._model, params, (xb,))[None], yb, ob, metrics))
            rows.append(acc)
        return self._cat(rows)

    def _vmap(self, flats: torch.Tensor, metrics: tuple[str, ...]) -> dict[str, torch.Tensor]:
        params = self.layout.unflatten_batch(flats)

        def forward(p, xb):
            return functional_call(self._model, p, (xb,))

        batched = torch.func.vmap(forward, in_dims=(0, None))
        acc = None
        for xb, yb, ob in self._batches():
            acc = self._add(acc, self._stats(batched(params, xb), yb, ob, metrics))
        return acc

    def _stacked_batches(self, flats: torch.Tensor):
        """Logits ``[K, B, C]`` of one chunk of parameter sets through the stacked engine, with the
        batch's labels and one-hot labels, validation batch by validation batch."""
        net = self._stacked_net
        prepared = net.prepare(self.layout.unflatten_batch(flats))
        for i, (xb, yb, ob) in enumerate(self._batches()):
            yield net.forward(prepared, xb, key=i), yb, ob

    def _stacked(self, flats: torch.Tensor, metrics: tuple[str, ...]) -> dict[str, torch.Tensor]:
        acc = None
        for logits, yb, ob in self._stacked_batches(flats):
            acc = self._add(acc, self._stats(logits, yb, ob, metrics))
        return acc

    def _naive(self, flats: torch.Tensor, metrics: tuple[str, ...]) -> dict[str, torch.Tensor]:
        if self._naive_model is None:
            self._naive_model = copy.deepcopy(self._model)
            # The reference path must not inherit the loop engine's layout hooks.
            for m in self._naive_model.modules():
                for hook_id in self._hook_ids:
                    m._forward_hooks.pop(hook_id, None)
        rows = []
        for k in range(flats.shape[0]):
            self._naive_model.load_state_dict(self.layout.to_state_dict(flats[k], self._template_state))
            rows.append(self._stats(self._naive_model(self._x)[None], self._y, self._onehot, metrics))
        return self._cat(rows)

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

        Eval-mode forwards through the stacked engine when it is in use (chunks of
        ``max_coalitions_per_call_``), otherwise one ``functional_call`` on the evaluation copy per
        parameter set; validation data in batches of ``batch_size``. Not counted in ``n_calls_``,
        ``n_models_`` or ``seconds_``.
        """
        params = torch.as_tensor(params)
        if params.dim() == 1:
            params = params[None]
        if params.dim() != 2 or params.shape[1] != self.layout.size:
            raise ValueError(f"expected parameter sets of shape [K, {self.layout.size}], got {tuple(params.shape)}")
        params = params.to(self.device, self.layout.dtype)
        threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(int(self.num_threads))
        try:
            with torch.no_grad():
                if self._stacked_net is not None:
                    step, rows = self.max_coalitions_per_call_, []
                    for start in range(0, params.shape[0], step):
                        chunk = params[start:start + step]
                        rows.extend(torch.cat([z for z, _, _ in self._stacked_batches(chunk)], 1))
                else:
                    rows = [torch.cat([functional_call(self._model, self.layout.unflatten(flat), (xb,))
                                       for xb, _, _ in self._batches()]) for flat in params]
        finally:
            if self.num_threads is not None:
                torch.set_num_threads(threads)
        if not rows:
            return torch.empty(0, self.n_val_, self.num_classes_, dtype=self._input_dtype, device=self.device)
        return torch.stack(rows)

    def __repr__(self) -> str:
        return (
            f"ModelUtility(metric={self.metric!r}, strategy={self.strategy_!r}, n_val={self.n_val_}, "
            f"P={self.layout.size}, device={str(self.device)!r})"
        )
