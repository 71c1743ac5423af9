"""Small helpers shared by the attack modules: seeding, state-dict arithmetic, hashing, atomic saves."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Seed torch's RNG inside the block and restore it afterwards, so attacks never perturb the caller."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed) % (2**63))
        yield


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any JSON-able parts (Python's hash() is salted per process)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def tensor_fingerprint(*tensors: torch.Tensor | None) -> str:
    """sha256 of the shapes, dtypes and bytes of ``tensors`` (the data half of a cache key)."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def config_key(config: dict[str, Any], data_fingerprint: str) -> str:
    """sha256 over a JSON config and a data fingerprint: the cache key of a trained artefact."""
    blob = json.dumps(config, sort_keys=True, default=str) + "|" + data_fingerprint
    return hashlib.sha256(blob.encode()).hexdigest()


def architecture_signature(model: nn.Module) -> dict[str, Any]:
    """Class name plus every state-dict entry's shape and dtype: identifies an architecture."""
    return {
        "class": type(model).__name__,
        "entries": [[k, list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()],
    }


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through the package's one atomic write, so readers never see a half-written cache."""
    import io

    from fedattr.core.io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def cpu_state(model: nn.Module) -> StateDict:
    """A detached CPU copy of ``model.state_dict()``."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def is_float(t: torch.Tensor) -> bool:
    """Whether an entry is part of the update geometry (integer buffers such as num_batches_tracked are not)."""
    return t.is_floating_point()


def flat_update(w_t: StateDict, w: StateDict) -> torch.Tensor:
    """The update w - w_t over floating-point entries, flattened in key order."""
    parts = [(w[k].double() - w_t[k].double()).flatten() for k in w_t if is_float(w_t[k])]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def scale_update(w_t: StateDict, w: StateDict, factor: float) -> StateDict:
    """w_t + factor * (w - w_t) on float entries; integer buffers are copied from ``w``.

    BatchNorm running variances are clamped to stay positive, since a scaled-down variance
    that crosses zero would make the model output NaN.
    """
    out: StateDict = {}
    for k, v in w.items():
        if not is_float(v):
            out[k] = v.clone()
            continue
        scaled = w_t[k] + (v - w_t[k]) * factor
        if k.endswith("running_var"):
            scaled = scaled.clamp_min(1e-5)
        out[k] = scaled.to(v.dtype)
    return out

