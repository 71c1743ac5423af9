"""Coalition engines: how many parameter sets of one model are run on the validation data.

Every engine takes a chunk of flat parameter vectors ``[K, P]`` (see :class:`StateLayout`) and
returns, per model, the summed statistics the utility's metrics are computed from
(:meth:`Engine.statistics`), or its logits (:meth:`Engine.logits`). The engines differ only in how
the forward passes are batched:

``naive``
    per parameter set, ``load_state_dict`` into a model copy and one forward over the whole
    validation set: the reference every other engine is checked against.
``loop``
    ``torch.func.functional_call`` on views of the flat vector (no state-dict copies), validation
    data in batches; on CPU, convolution outputs may be made channels-last on the engine's own
    model copy (faster max-pool/ReLU kernels), never on the user's model.
``vmap``
    ``functional_call`` vectorised with ``torch.func.vmap`` over the chunk.
``stacked``
    the chunk as one wider network (:class:`~fedattr.evaluators.stacked.StackedNet`), for
    networks that are a plain sequence of layers.

:func:`verify_engine` runs an engine and the naive reference on a probe (two parameter sets, a
few validation examples) and says why the engine cannot be used on this model, if it cannot;
:class:`~fedattr.evaluators.utility.ModelUtility` uses it to choose, and to fall back.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .layout import StateLayout
from .stacked import StackedNet

__all__ = ["ENGINE_CLASSES", "Engine", "LoopEngine", "NaiveEngine", "StackedEngine", "ValidationData",
           "VmapEngine", "batch_statistics", "probe_parameter_sets", "verify_engine"]


@dataclass(frozen=True)
class ValidationData:
    """The validation examples every engine evaluates on (already on the utility's device).

    Attributes
    ----------
    x : Tensor
        Inputs ``[n, ...]``.
    y : Tensor
        Integer labels ``[n]``.
    onehot : Tensor
        ``y`` one-hot, float32 ``[n, classes]``.
    """

    x: torch.Tensor
    y: torch.Tensor
    onehot: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def batches(self, size: int):
        """``(x, y, onehot)`` slices of ``size`` examples, in order."""
        for s in range(0, self.n, size):
            e = s + size
            yield self.x[s:e], self.y[s:e], self.onehot[s:e]


def batch_statistics(logits: torch.Tensor, y: torch.Tensor, onehot: torch.Tensor,
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


def _add(acc: dict | None, s: dict) -> dict:
    return s if acc is None else {m: acc[m] + s[m] for m in acc}


def _cat(rows: list[dict]) -> dict:
    return {m: torch.cat([r[m] for r in rows]) for m in rows[0]}


class Engine(Protocol):
    """What :class:`~fedattr.evaluators.utility.ModelUtility` calls: one chunk of ``[K, P]`` flat
    parameter vectors at a time."""

    name: str
    batch: int

    def statistics(self, flats: torch.Tensor, metrics: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Per-model summed statistics over the validation set (see :func:`batch_statistics`)."""

    def logits(self, flats: torch.Tensor, step: int) -> list[torch.Tensor]:
        """Per parameter set, its logits ``[n, classes]`` on the validation set."""

    def forward(self, flats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[K, B, classes]`` on inputs ``x`` as this engine computes them (the probe)."""

    def bytes_per_model(self, param_bytes: int, act_bytes: int) -> int:
        """Memory one parameter set of a chunk takes (flat vector and, where they are alive
        together, its activations on one validation batch)."""


class _FunctionalEngine:
    """Shared part of the engines: the model copy whose forward ``functional_call`` runs, the
    validation data and the batch size.

    Parameters
    ----------
    model : nn.Module
        The utility's evaluation copy (eval mode, on the device); never modified.
    layout : StateLayout
    data : ValidationData
    batch : int
        Validation examples per forward pass.
    """

    name: ClassVar[str] = ""
    #: Validation examples per forward pass when the utility is given none.
    default_batch: ClassVar[int] = 250

    def __init__(self, model: nn.Module, layout: StateLayout, data: ValidationData, batch: int):
        self.model = model
        self.layout = layout
        self.data = data
        self.batch = int(batch)

    def logits(self, flats: torch.Tensor, step: int) -> list[torch.Tensor]:
        return [torch.cat([functional_call(self.model, self.layout.unflatten(flat), (xb,))
                           for xb, _, _ in self.data.batches(self.batch)]) for flat in flats]

    def forward(self, flats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([functional_call(self.model, self.layout.unflatten(f), (x,)) for f in flats])

    def bytes_per_model(self, param_bytes: int, act_bytes: int) -> int:
        return param_bytes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch={self.batch})"


class NaiveEngine(_FunctionalEngine):
    """Per parameter set, ``load_state_dict`` into a private model copy and one forward over the
    whole validation set (the reference); ``template_state`` supplies the integer buffers."""

    name = "naive"

    def __init__(self, model: nn.Module, layout: StateLayout, data: ValidationData, batch: int,
                 template_state: dict[str, torch.Tensor]):
        super().__init__(model, layout, data, batch)
        self.template_state = template_state
        self._loaded = copy.deepcopy(model)

    def statistics(self, flats: torch.Tensor, metrics: tuple[str, ...]) -> dict[str, torch.Tensor]:
        rows = []
        for k in range(flats.shape[0]):
            self._loaded.load_state_dict(self.layout.to_state_dict(flats[k], self.template_state))
            rows.append(batch_statistics(self._loaded(self.data.x)[None], self.data.y, self.data.onehot, metrics))
        return _cat(rows)

    def forward(self, flats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = []
        for f in flats:
            self._loaded.load_state_dict(self.layout.to_state_dict(f, self.template_state))
            out.append(self._loaded(x))
        return torch.stack(out)


def _channels_last_hook(module, inputs, output):
    # PyTorch's CPU max-pool/ReLU kernels are several times faster on channels_last tensors
    # than on NCHW ones, and a conv with one input channel never picks channels_last by
    # itself; the layout changes strides only, never values' meaning.
    if isinstance(output, torch.Tensor) and output.dim() == 4:
        return output.contiguous(memory_format=torch.channels_last)
    return output


class LoopEngine(_FunctionalEngine):
    """``functional_call`` per parameter set on views of the flat vector, validation data in
    batches.

    With ``channels_last`` the engine runs its own copy of the model whose convolution outputs
    are made channels-last (the user's model and the utility's copy keep their layout);
    :func:`verify_engine` checks that the model's forward accepts it (a ``view`` after a
    convolution does not).
    """

    name = "loop"

    def __init__(self, model: nn.Module, layout: StateLayout, data: ValidationData, batch: int,
                 channels_last: bool = False):
        self.channels_last = bool(channels_last)
        if self.channels_last:
            model = copy.deepcopy(model)
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    m.register_forward_hook(_channels_last_hook)
        super().__init__(model, layout, data, batch)

    def statistics(self, flats: torch.Tensor, metrics: tuple[str, ...]) -> dict[str, torch.Tensor]:
        rows = []
        for k in range(flats.shape[0]):
            params = self.layout.unflatten(flats[k])
            acc = None
            for xb, yb, ob in self.data.batches(self.batch):
                acc = _add(acc, batch_statistics(functional_call(self.model, params, (xb,))[None], yb, ob, metrics))
            rows.append(acc)
        return _cat(rows)

    def __repr__(self) -> str:
        return f"LoopEngine(batch={self.batch}, channels_last={self.channels_last})"


class VmapEngine(_FunctionalEngine):
    """``functional_call`` vectorised with ``torch.func.vmap`` over the chunk of parameter sets."""

    name = "vmap"

    def _batched(self):
        def forward(p, xb):
            return functional_call(self.model, p, (xb,))

        return torch.func.vmap(forward, in_dims=(0, None))

    def statistics(self, flats: torch.Tensor, metrics: tuple[str, ...]) -> dict[str, torch.Tensor]:
        params = self.layout.unflatten_batch(flats)
        batched = self._batched()
        acc = None
        for xb, yb, ob in self.data.batches(self.batch):
            acc = _add(acc, batch_statistics(batched(params, xb), yb, ob, metrics))
        return acc

    def forward(self, flats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._batched()(self.layout.unflatten_batch(flats), x)

    def bytes_per_model(self, param_bytes: int, act_bytes: int) -> int:
        # Activations of every model in the chunk are alive together; 2x covers the
        # temporaries of the widest layer.
        return param_bytes + 2 * act_bytes * min(self.batch, self.data.n)


class StackedEngine(_FunctionalEngine):
    """The chunk of parameter sets as one wider network (:class:`StackedNet`); raises
    ``ValueError`` when the network is not a plain sequence of layers."""

    name = "stacked"
    # K models x 50 images keep the stacked activations in cache.
    default_batch = 50

    def __init__(self, model: nn.Module, layout: StateLayout, data: ValidationData, batch: int,
                 sub_batch: int = 2):
        super().__init__(model, layout, data, batch)
        self.net = StackedNet(model, sub_batch=sub_batch)

    def _batches(self, flats: torch.Tensor):
        """Logits ``[K, B, C]`` of one chunk of parameter sets, with the batch's labels and
        one-hot labels, validation batch by validation batch."""
        prepared = self.net.prepare(self.layout.unflatten_batch(flats))
        for i, (xb, yb, ob) in enumerate(self.data.batches(self.batch)):
            yield self.net.forward(prepared, xb, key=i), yb, ob

    def statistics(self, flats: torch.Tensor, metrics: tuple[str, ...]) -> dict[str, torch.Tensor]:
        acc = None
        for logits, yb, ob in self._batches(flats):
            acc = _add(acc, batch_statistics(logits, yb, ob, metrics))
        return acc

    def logits(self, flats: torch.Tensor, step: int) -> list[torch.Tensor]:
        rows: list[torch.Tensor] = []
        for start in range(0, flats.shape[0], step):
            chunk = flats[start:start + step]
            rows.extend(torch.cat([z for z, _, _ in self._batches(chunk)], 1))
        return rows

    def forward(self, flats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward(self.net.prepare(self.layout.unflatten_batch(flats)), x)

    def bytes_per_model(self, param_bytes: int, act_bytes: int) -> int:
        # The chunk's flat vectors, their stacked-layout copy and the activations of its models
        # on one validation batch.
        return 2 * param_bytes + 2 * act_bytes * min(self.batch, self.data.n)


#: Engine name -> class.
ENGINE_CLASSES: dict[str, type[_FunctionalEngine]] = {
    c.name: c for c in (NaiveEngine, LoopEngine, VmapEngine, StackedEngine)
}


def probe_parameter_sets(layout: StateLayout, template_state: dict[str, torch.Tensor],
                         device: torch.device) -> torch.Tensor:
    """Two parameter sets ``[2, P]``: the template's and a seeded perturbation of it (BatchNorm
    running variances left as they are, so that they stay valid)."""
    flat = layout.flatten(template_state).to(device)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(flat.shape, generator=gen, dtype=flat.dtype).to(device)
    flats = torch.stack([flat, flat + 0.01 * noise * flat.abs().mean()])
    names = [e.name for e in layout.entries if e.name.endswith("running_var")]
    for e in (layout[n] for n in names):
        flats[1, e.offset:e.offset + e.numel] = flats[0, e.offset:e.offset + e.numel]
    return flats


@torch.no_grad()
def verify_engine(engine: Engine, reference: Engine, flats: torch.Tensor, x: torch.Tensor) -> str:
    """``""`` if ``engine`` gives ``reference``'s logits (within ``1e-4`` of their scale) for
    ``flats`` on inputs ``x``; otherwise why it does not (the error it raised, or the difference)."""
    try:
        got = engine.forward(flats, x)
    except Exception as err:  # any failure of the user's forward under this engine
        first = (str(err).strip().splitlines() or [""])[0]
        return f"its forward fails under the {engine.name} engine ({type(err).__name__}: {first})"
    ref = reference.forward(flats, x)
    if got.shape != ref.shape:
        return f"the {engine.name} engine gives logits of shape {tuple(got.shape)}, the model {tuple(ref.shape)}"
    diff = float((got - ref).abs().max())
    tol = 1e-4 * max(1.0, float(ref.abs().max()))
    if not diff <= tol:
        return f"the {engine.name} engine's logits differ from the model's own forward by {diff:.3g}"
    return ""
