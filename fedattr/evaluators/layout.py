"""Flat-vector view of a model's floating-point state."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

__all__ = ["LayoutEntry", "StateLayout", "flatten_state", "unflatten_state"]


@dataclass(frozen=True)
class LayoutEntry:
    """One floating-point state entry: its name, shape, dtype and slice of the flat vector."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    numel: int


class StateLayout:
    """Positions of a state dict's floating-point entries in one flat vector.

    Entries keep ``state_dict`` order. Parameters and floating-point buffers (e.g. BatchNorm
    running statistics) are both included, because FedAvg averages them too; integer buffers
    (e.g. ``num_batches_tracked``) are left out and always come from a template.

    Parameters
    ----------
    entries : sequence of LayoutEntry
        The floating-point entries, contiguous and in order.
    dtype : torch.dtype
        dtype of the flat vector.
    all_names : sequence of str, optional
        Every state-dict key in order, integer entries included (for ``flatten_arrays``);
        defaults to the floating-point names.
    """

    def __init__(self, entries: Iterable[LayoutEntry], dtype: torch.dtype = torch.float32,
                 all_names: Iterable[str] | None = None):
        self.entries = tuple(entries)
        self.dtype = dtype
        self.all_names = tuple(e.name for e in self.entries) if all_names is None else tuple(all_names)
        self.size = sum(e.numel for e in self.entries)
        self._by_name = {e.name: e for e in self.entries}

    # construction ------------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> "StateLayout":
        """Layout of the floating-point entries of ``state_dict``."""
        entries, offset, dtypes = [], 0, []
        for name, tensor in state_dict.items():
            if not torch.is_floating_point(tensor):
                continue
            numel = tensor.numel()
            entries.append(LayoutEntry(name, tuple(tensor.shape), tensor.dtype, offset, numel))
            dtypes.append(tensor.dtype)
            offset += numel
        if dtype is None:
            # float64 models keep float64; anything narrower is averaged in float32.
            dtype = torch.float64 if torch.float64 in dtypes else torch.float32
        return cls(entries, dtype, all_names=list(state_dict.keys()))

    @classmethod
    def from_module(cls, module: nn.Module, dtype: torch.dtype | None = None) -> "StateLayout":
        """Layout of the floating-point entries of ``module.state_dict()``."""
        return cls.from_state_dict(module.state_dict(), dtype)

    # queries -----------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> LayoutEntry:
        return self._by_name[name]

    def __repr__(self) -> str:
        return f"StateLayout(entries={len(self.entries)}, size={self.size}, dtype={self.dtype})"

    # conversion --------------------------------------------------------------------------------
    def flatten(self, state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate the layout's entries of ``state_dict`` into a vector of length ``size``."""
        missing = [e.name for e in self.entries if e.name not in state_dict]
        if missing:
            raise KeyError(f"state dict lacks layout entries: {missing[:5]}")
        parts = []
        for e in self.entries:
            t = torch.as_tensor(state_dict[e.name])
            if tuple(t.shape) != e.shape:
                raise ValueError(f"entry {e.name!r} has shape {tuple(t.shape)}, layout expects {e.shape}")
            parts.append(t.detach().reshape(-1).to(self.dtype))
        if not parts:
            return torch.zeros(0, dtype=self.dtype)
        return torch.cat(parts)

    def flatten_arrays(self, arrays: Sequence) -> torch.Tensor:
        """``flatten`` of a model given as a list of arrays in full ``state_dict`` order (as Flower
        ships parameters), integer entries included."""
        if len(arrays) != len(self.all_names):
            raise ValueError(f"got {len(arrays)} arrays for a state dict of {len(self.all_names)} entries")
        return self.flatten({k: torch.as_tensor(a) for k, a in zip(self.all_names, arrays)})

    def flatten_many(self, state_dicts: Iterable[Mapping[str, torch.Tensor]]) -> torch.Tensor:
        """Stack ``flatten`` of several state dicts into a ``[K, size]`` tensor."""
        return torch.stack([self.flatten(sd) for sd in state_dicts])

    def unflatten(self, flat: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Split a flat vector into ``{name: tensor}`` for the layout's entries.

        Entries whose dtype equals the flat vector's dtype are views (no copy).
        """
        self._check(flat)
        out = OrderedDict()
        for e in self.entries:
            t = flat[e.offset:e.offset + e.numel].view(e.shape)
            out[e.name] = t if t.dtype == e.dtype else t.to(e.dtype)
        return out

    def unflatten_batch(self, flats: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Split a ``[K, size]`` tensor into ``{name: tensor[K, *shape]}`` (views where dtypes match)."""
        if flats.dim() != 2 or flats.shape[1] != self.size:
            raise ValueError(f"expected a [K, {self.size}] tensor, got {tuple(flats.shape)}")
        out = OrderedDict()
        for e in self.entries:
            t = flats[:, e.offset:e.offset + e.numel].reshape(flats.shape[0], *e.shape)
            out[e.name] = t if t.dtype == e.dtype else t.to(e.dtype)
        return out

    def to_state_dict(self, flat: torch.Tensor, template: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        """Full state dict: floating-point entries from ``flat``, every other entry cloned from ``template``."""
        floats = self.unflatten(flat)
        out = OrderedDict()
        for name, t in template.items():
            out[name] = floats[name].clone() if name in floats else t.clone()
        return out

    def _check(self, flat: torch.Tensor) -> None:
        if flat.dim() != 1 or flat.numel() != self.size:
            raise ValueError(f"expected a flat vector of length {self.size}, got shape {tuple(flat.shape)}")


def flatten_state(state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Flat vector of the floating-point entries of ``state_dict``, in order."""
    return StateLayout.from_state_dict(state_dict).flatten(state_dict)


def unflatten_state(flat: torch.Tensor, template: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Inverse of ``flatten_state``: a full state dict shaped like ``template``."""
    return StateLayout.from_state_dict(template).to_state_dict(flat, template)
