import hashlib

import numpy as np
import pytest
import torch

from fedattr.data import client_partition, label_histogram, load_splits, partition_indices
from fedattr.errors import DatasetUnavailableError, UserError


def _hashes(x: torch.Tensor) -> set[str]:
    return {hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in x}


def test_splits_are_disjoint_sized_and_seeded(splits):
    assert len(splits.y_val) == 500 and len(splits.y_test) == 500 and len(splits.y_aux) == 300
    assert len(splits.y_pool) == 5000 - 500 - 500 - 300
    assert splits.x_pool.shape[1:] == (1, 28, 28) and splits.x_pool.dtype == torch.float32
    assert 0.0 <= float(splits.x_pool.min()) and float(splits.x_pool.max()) <= 1.0
    parts = [_hashes(t) for t in (splits.x_pool, splits.x_val, splits.x_test, splits.x_aux)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not parts[i] & parts[j]
    again = load_splits.__wrapped__("mnist5k", None, 500, 500, 300)
    assert torch.equal(again.y_val, splits.y_val)
    other = load_splits.__wrapped__("mnist5k", None, 500, 500, 300, None, 1)
    assert not torch.equal(other.y_val, splits.y_val)


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "pathological"])
def test_partitions_cover_pool_disjointly(splits, kind):
    labels = tuple(splits.y_pool.tolist())
    parts = partition_indices(labels, kind, 8, 0.5, 2, 10, 3)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(set(allidx.tolist()))
    if kind != "pathological":  # pathological may leave classes unassigned
        assert sorted(allidx.tolist()) == list(range(len(labels)))
    assert all(len(p) > 0 for p in parts)
    if kind == "dirichlet":
        assert min(len(p) for p in parts) >= 10
    if kind == "pathological":
        for p in parts:
            assert len(set(np.asarray(labels)[p].tolist())) <= 2


def _concentration(splits, alpha):
    parts = partition_indices(tuple(splits.y_pool.tolist()), "dirichlet", 10, alpha, 2, 10, 0)
    shares = []
    for p in parts:
        h = np.asarray(label_histogram(splits.y_pool[torch.from_numpy(p)], 10), dtype=float)
        shares.append(h.max() / h.sum())
    return float(np.mean(shares))


def test_lower_alpha_is_more_skewed(splits):
    assert _concentration(splits, 0.1) > _concentration(splits, 1.0) + 0.2


def test_client_partition_matches_indices_and_histogram(splits):
    x, y = client_partition(splits, 2, "dirichlet", 5, alpha=0.5, seed=7)
    idx = partition_indices(tuple(splits.y_pool.tolist()), "dirichlet", 5, 0.5, 2, 10, 7)[2]
    assert torch.equal(y, splits.y_pool[torch.from_numpy(idx)])
    assert sum(label_histogram(y, 10)) == len(y) == len(x)


def test_missing_torchvision_dataset_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*a, **k):
        if k.get("download"):
            raise OSError("no network")
        raise RuntimeError("Dataset not found")

    monkeypatch.setattr(tvd, "FashionMNIST", offline)
    with pytest.raises(DatasetUnavailableError) as err:
        load_splits.__wrapped__("fashion_mnist", str(tmp_path))
    assert str(tmp_path) in str(err.value) and "download=True" in str(err.value)


def test_bad_inputs_are_user_errors(splits):
    with pytest.raises(UserError):
        load_splits.__wrapped__("imagenet")
    with pytest.raises(UserError):
        partition_indices(tuple(splits.y_pool.tolist()), "shards", 4)
    with pytest.raises(UserError):
        partition_indices(tuple(splits.y_pool.tolist()), "dirichlet", 10, 0.5, 2, 1000, 0)


def test_dirichlet_that_cannot_meet_the_minimum_is_a_user_error(splits):
    labels = tuple(splits.y_pool.tolist())
    with pytest.raises(UserError, match="min_partition_size"):
        partition_indices(labels, "dirichlet", 10, 0.01, 2, 300, 0)
