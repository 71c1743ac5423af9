"""Many parameter sets of one feed-forward network evaluated as one wider network.

K coalition models of a round differ only in their weights, and all of them score the same
validation images. Evaluating them one by one runs K small networks; stacking them runs one
network K times wider, which keeps the matrix units busy:

- the first layer sees the shared input, so K convolutions become one matrix product of the K
  models' filters side by side by the input's patches (unfolded once per validation batch and
  kept): ``[K*O, C*kh*kw + 1] @ [C*kh*kw + 1, L]`` per image, the bias riding as a row of ones;
- every later convolution is one grouped convolution (``groups = K``) on ``[B, K*C, H, W]``
  (oneDNN's grouped convolution is faster on this layout than on channels-last); BatchNorm
  (eval) is one per-channel scale and shift over the K*C channels;
- after ``Flatten`` the activations are ``[K, B, F]`` and a linear layer is one batched matrix
  product (``baddbmm``).

The first layer's output is the largest tensor of the network (K times the input's positions
times its channels); it is produced and reduced by the layers that follow it (ReLU, pooling)
tile by tile of ``sub_batch`` images, into buffers allocated once, so it stays in cache.
2x2 max-pooling is an elementwise maximum of four strided views (several times faster than
PyTorch's CPU max-pool here); max-pooling commutes with ReLU, so pooling runs first on the
larger tensor.

Only networks whose ``forward`` applies their leaf modules one after another, in registration
order, can be stacked (``nn.Sequential`` trees such as the model zoo's small CNN and VGG-11);
:func:`stacking_plan` says why a network cannot, and :class:`ModelUtility` additionally checks
the stacked output against the network's own forward before using it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StackedNet", "stacking_plan"]

_PARAMETER_FREE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten,
                   nn.Dropout, nn.Identity)


@dataclass(frozen=True)
class _Step:
    kind: str        # prefix | conv_first | linear_first | conv | linear | bn | relu | pool | flatten | skip
    name: str        # qualified module name ("" for the root)
    module: nn.Module


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if not list(m.children())]


def stacking_plan(model: nn.Module) -> tuple[list[_Step] | None, str]:
    """The stacked steps of ``model`` and ``""``, or ``None`` and the reason it cannot be stacked."""
    steps: list[_Step] = []
    state = "shared"  # shared input -> "chan" ([B, K*C, H, W]) -> "feat" ([K, B, F])
    for name, m in _leaves(model):
        has_state = any(True for _ in m.parameters(recurse=False)) or any(
            torch.is_floating_point(b) for b in m.buffers(recurse=False))
        if state == "shared":
            if isinstance(m, nn.Conv2d):
                if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                    return None, f"first convolution {name!r} has groups, padding mode or string padding"
                steps.append(_Step("conv_first", name, m))
                state = "chan"
            elif isinstance(m, nn.Linear):
                steps.append(_Step("linear_first", name, m))
                state = "feat"
            elif has_state:
                return None, f"layer {name!r} ({type(m).__name__}) cannot be stacked"
            else:
                # Parameter-free preprocessing (e.g. input normalisation) acts on the shared input.
                steps.append(_Step("prefix", name, m))
            continue
        if isinstance(m, nn.Conv2d):
            if state != "chan" or m.padding_mode != "zeros" or isinstance(m.padding, str):
                return None, f"convolution {name!r} after a flatten, or with a padding mode"
            steps.append(_Step("conv", name, m))
        elif isinstance(m, nn.Linear):
            if state != "feat":
                return None, f"linear layer {name!r} on a 4-d activation"
            steps.append(_Step("linear", name, m))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not m.track_running_stats or (isinstance(m, nn.BatchNorm2d) != (state == "chan")):
                return None, f"BatchNorm {name!r} without running statistics or on the wrong rank"
            steps.append(_Step("bn", name, m))
        elif isinstance(m, nn.ReLU):
            steps.append(_Step("relu", name, m))
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            if state != "chan":
                return None, f"pooling {name!r} after a flatten"
            steps.append(_Step("pool", name, m))
        elif isinstance(m, nn.Flatten):
            if state != "chan" or m.start_dim != 1 or m.end_dim != -1:
                return None, f"flatten {name!r} is not Flatten(1, -1) of a 4-d activation"
            steps.append(_Step("flatten", name, m))
            state = "feat"
        elif isinstance(m, (nn.Dropout, nn.Identity)):
            steps.append(_Step("skip", name, m))
        else:
            return None, f"layer {name!r} ({type(m).__name__}) cannot be stacked"
    if state != "feat":
        return None, "the network does not end in a linear layer on [batch, features]"
    return steps, ""


def _is_pool2x2(m: nn.Module) -> bool:
    def pair(v):
        return (v, v) if isinstance(v, int) else tuple(v)
    return (isinstance(m, nn.MaxPool2d) and pair(m.kernel_size) == (2, 2)
            and pair(m.stride or m.kernel_size) == (2, 2) and pair(m.padding) == (0, 0)
            and pair(m.dilation) == (1, 1) and not m.ceil_mode)


def _pool2x2(h: torch.Tensor) -> torch.Tensor:
    """2x2 max-pool, stride 2, of a ``[B, C, H, W]`` tensor (odd edges dropped, as torch)."""
    hh, ww = h.shape[2] // 2 * 2, h.shape[3] // 2 * 2
    a = torch.maximum(h[:, :, 0:hh:2, 0:ww:2], h[:, :, 0:hh:2, 1:ww:2])
    b = torch.maximum(h[:, :, 1:hh:2, 0:ww:2], h[:, :, 1:hh:2, 1:ww:2])
    return torch.maximum(a, b, out=a)


class StackedNet:
    """K parameter sets of one sequential network evaluated as one network.

    Parameters
    ----------
    model : nn.Module
        The network (evaluation copy; eval mode). :func:`stacking_plan` must accept it.
    sub_batch : int
        Images per tile of the first layer and the parameter-free layers after it.
    cache_inputs_bytes : int
        Keep the first layer's unfolded input patches of each validation batch up to this many
        bytes in all (they are the same on every call).

    Use :meth:`prepare` once per chunk of K parameter sets, then :meth:`forward` per validation
    batch.
    """

    def __init__(self, model: nn.Module, sub_batch: int = 2, cache_inputs_bytes: int = 256 << 20):
        steps, reason = stacking_plan(model)
        if steps is None:
            raise ValueError(f"cannot stack {type(model).__name__}: {reason}")
        self.steps = steps
        self.sub_batch = max(1, int(sub_batch))
        self.cache_inputs_bytes = int(cache_inputs_bytes)
        # The first layer and the parameter-free steps after it run tile by tile.
        first = next(i for i, s in enumerate(steps) if s.kind in ("conv_first", "linear_first"))
        end = first + 1
        while end < len(steps) and steps[end].kind in ("relu", "pool", "skip"):
            end += 1
        self._first, self._head_end = first, end
        # A 2x2 max-pool right after the first convolution (ReLUs between commute with it) is
        # fused into the matrix product: the patches are ordered window corner by window corner,
        # so the pool is a maximum of four contiguous blocks (strided pooling was a fifth of the
        # time). Positions the pool drops (odd edges) are not computed at all.
        self._fused_pool = None
        if steps[first].kind == "conv_first":
            for i in range(first + 1, end):
                if steps[i].kind == "pool" and _is_pool2x2(steps[i].module):
                    self._fused_pool = i
                    break
                if steps[i].kind not in ("relu", "skip"):
                    break
        self._patches: dict = {}  # batch key -> (patches, output height and width)
        self._patch_bytes = 0
        self._buffers: dict[tuple, torch.Tensor] = {}

    # weights -----------------------------------------------------------------------------------
    def prepare(self, params: dict[str, torch.Tensor]) -> list:
        """Per step, the K models' weights in the stacked layout; ``params`` maps state-dict names
        to ``[K, *shape]`` tensors (as :meth:`StateLayout.unflatten_batch` returns)."""
        prepared: list = []
        k = next(iter(params.values())).shape[0]
        for s in self.steps:
            m = s.module

            def p(key, prefix=s.name):
                return params.get(f"{prefix}.{key}" if prefix else key)

            if s.kind == "conv_first":
                w, b = p("weight"), p("bias")
                o = w.shape[1]
                rows = w.reshape(k * o, -1)
                bias = b.reshape(k * o, 1) if b is not None else rows.new_zeros(k * o, 1)
                prepared.append(torch.cat([rows, bias.to(rows.dtype)], 1).contiguous())
            elif s.kind == "linear_first":
                w, b = p("weight"), p("bias")
                prepared.append((w.reshape(k * w.shape[1], w.shape[2]).t().contiguous(),
                                 None if b is None else b.reshape(k * b.shape[1]).contiguous()))
            elif s.kind == "conv":
                w, b = p("weight"), p("bias")
                w = w.reshape(k * w.shape[1], *w.shape[2:]).contiguous()
                prepared.append((w, None if b is None else b.reshape(-1).contiguous()))
            elif s.kind == "linear":
                w, b = p("weight"), p("bias")
                prepared.append((w.transpose(1, 2), None if b is None else b[:, None, :]))
            elif s.kind == "bn":
                mean, var = p("running_mean"), p("running_var")
                weight, bias = p("weight"), p("bias")
                scale = torch.rsqrt(var + m.eps)
                if weight is not None:
                    scale = scale * weight
                shift = -mean * scale
                if bias is not None:
                    shift = shift + bias
                if isinstance(m, nn.BatchNorm2d):
                    prepared.append((scale.reshape(1, -1, 1, 1).contiguous(), shift.reshape(1, -1, 1, 1).contiguous()))
                else:
                    prepared.append((scale[:, None, :], shift[:, None, :]))
            else:
                prepared.append(None)
        return prepared

    # forward -----------------------------------------------------------------------------------
    def forward(self, prepared: list, x: torch.Tensor, key=None) -> torch.Tensor:
        """Logits ``[K, B, classes]`` of the K prepared models on images ``x`` ``[B, ...]``.

        ``key`` identifies ``x`` (e.g. its slice of the validation set) so that its first-layer
        patches are computed once and reused on later calls.
        """
        k = self._num_models(prepared)
        h = self._head(prepared, x, k, key)
        state = "feat" if self.steps[self._first].kind == "linear_first" else "chan"
        for s, w in zip(self.steps[self._head_end:], prepared[self._head_end:]):
            h, state = self._step(s, w, h, state, k)
        return h

    def _num_models(self, prepared: list) -> int:
        s, w = self.steps[self._first], prepared[self._first]
        if s.kind == "conv_first":
            return w.shape[0] // s.module.out_channels
        return w[0].shape[1] // s.module.out_features

    def _inputs(self, x: torch.Tensor, key) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The shared input after the prefix steps and, for a first convolution, as patches
        ``[B, C*kh*kw + 1, L]`` with the output's height and width."""
        if key is not None and key in self._patches:
            return self._patches[key]
        for s in self.steps[:self._first]:
            x = s.module(x)
        first, side = self.steps[self._first], ()
        if first.kind == "conv_first":
            m = first.module
            side = tuple(
                (x.shape[2 + d] + 2 * m.padding[d] - m.dilation[d] * (m.kernel_size[d] - 1) - 1) // m.stride[d] + 1
                for d in range(2))
            cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # [B, C*kh*kw, L]
            if self._fused_pool is not None:
                ho, wo = side[0] // 2, side[1] // 2
                rows = torch.arange(ho)[:, None] * 2 * side[1] + torch.arange(wo)[None, :] * 2
                order = torch.cat([(rows + dy * side[1] + dx).reshape(-1) for dy in (0, 1) for dx in (0, 1)])
                cols = cols[:, :, order.to(cols.device)]
                side = (ho, wo)
            ones = cols.new_ones(cols.shape[0], 1, cols.shape[2])
            x = torch.cat([cols, ones], 1)                                   # [B, C*kh*kw + 1, L]
        nbytes = x.numel() * x.element_size()
        if key is not None and self._patch_bytes + nbytes <= self.cache_inputs_bytes:
            self._patches[key] = (x, side)
            self._patch_bytes += nbytes
        return x, side

    def _buffer(self, tag: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        # Large fresh allocations are returned to the OS and page-faulted in again on every call;
        # reusing one buffer per shape avoids that.
        key = (tag, shape, like.dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    def _head(self, prepared: list, x: torch.Tensor, k: int, key) -> torch.Tensor:
        x, side = self._inputs(x, key)
        first, w = self.steps[self._first], prepared[self._first]
        if first.kind == "linear_first":
            weight, bias = w
            h = x.reshape(x.shape[0], -1) @ weight
            if bias is not None:
                h += bias
            h = h.view(x.shape[0], k, -1).transpose(0, 1)
            for s in self.steps[self._first + 1:self._head_end]:
                h, _ = self._step(s, None, h, "feat", k)
            return h
        b = x.shape[0]
        out, sub = None, self.sub_batch
        for start in range(0, b, sub):
            part = x[start:start + sub]
            n = part.shape[0]
            buf = self._buffer("first", (sub, w.shape[0], part.shape[2]), w)[:n]
            h = torch.matmul(w, part, out=buf)
            if self._fused_pool is not None:
                q = part.shape[2] // 4
                corners = h.view(n, w.shape[0], 4, q)
                pooled = self._buffer("pooled", (sub, w.shape[0], q), w)[:n]
                torch.maximum(corners[:, :, 0], corners[:, :, 1], out=pooled)
                torch.maximum(pooled, corners[:, :, 2], out=pooled)
                h = torch.maximum(pooled, corners[:, :, 3], out=pooled)
            h = h.view(n, w.shape[0], *side)
            for i in range(self._first + 1, self._head_end):
                if i != self._fused_pool:
                    h, _ = self._step(self.steps[i], None, h, "chan", k)
            if out is None:
                out = self._buffer("head", (b, *h.shape[1:]), h)
            out[start:start + n].copy_(h)
        return out

    def _step(self, s: _Step, w, h: torch.Tensor, state: str, k: int):
        m = s.module
        if s.kind == "relu":
            return h.relu_(), state
        if s.kind == "skip":
            return h, state
        if s.kind == "pool":
            if _is_pool2x2(m):
                return _pool2x2(h), state
            if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
                return h.mean((2, 3), keepdim=True), state
            return m(h), state
        if s.kind == "conv":
            weight, bias = w
            out = F.conv2d(h, weight, bias, m.stride, m.padding, m.dilation, groups=k * m.groups)
            return out, state
        if s.kind == "bn":
            scale, shift = w
            return torch.addcmul(shift, h, scale), state
        if s.kind == "flatten":
            return h.reshape(h.shape[0], k, -1).transpose(0, 1), "feat"
        if s.kind == "linear":
            weight, bias = w
            if bias is None:
                return torch.bmm(h, weight), state
            return torch.baddbmm(bias, h, weight), state
        raise AssertionError(f"unexpected step {s.kind}")
