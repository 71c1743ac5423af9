import hashlib

import numpy as np
import pytest
import torch

from fedattr.learning.data import client_partition, label_histogram, load_splits, partition_indices
from fedattr.core.errors import DatasetUnavailableError, UserError


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


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "pathological"])
def test_withheld_classes_reach_no_benign_client(splits, kind):
    labels = tuple(splits.y_pool.tolist())
    lab = np.asarray(labels)
    parts = partition_indices(labels, kind, 8, 0.5, 2, 10, 3, (8, 9), (0,), 0.1)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(set(allidx.tolist()))  # still disjoint
    for pid, p in enumerate(parts[1:], 1):
        assert not np.isin(lab[p], [8, 9]).any(), pid
    # The attacker holds round(10%) of each withheld class, nothing more of them.
    for c in (8, 9):
        assert int((lab[parts[0]] == c).sum()) == int(round(0.1 * (lab == c).sum()))
    if kind != "pathological":  # every other pool image is dealt
        assert set(allidx.tolist()) >= set(np.nonzero(~np.isin(lab, [8, 9]))[0].tolist())


def test_withholding_with_no_attacker_share_leaves_the_classes_unused(splits):
    labels = tuple(splits.y_pool.tolist())
    lab = np.asarray(labels)
    parts = partition_indices(labels, "dirichlet", 8, 0.5, 2, 10, 3, (3,), (0, 1), 0.0)
    assert not any((lab[p] == 3).any() for p in parts)
    shared = partition_indices(labels, "dirichlet", 8, 0.5, 2, 10, 3, (3,), (0, 1), 1.0)
    got = [int((lab[p] == 3).sum()) for p in shared]
    assert got[0] + got[1] == int((lab == 3).sum()) and abs(got[0] - got[1]) <= 1 and sum(got[2:]) == 0


def test_partition_from_spec_and_withhold_count(splits):
    from fedattr.learning.data import benign_lacking, partition_from_spec, withheld_classes

    spec = {"kind": "dirichlet", "alpha": 0.5, "classes_per_client": 2, "min_partition_size": 10,
            "withhold_count": 2, "attacker_share": 0.0}
    chosen = withheld_classes(10, (), 2, seed=5)
    assert len(chosen) == 2 and chosen == withheld_classes(10, (), 2, seed=5)
    hists = {pid: label_histogram(partition_from_spec(splits, pid, 6, spec, seed=5, attacker_ids=[0])[1], 10)
             for pid in range(6)}
    assert set(chosen) <= set(benign_lacking({p: h for p, h in hists.items() if p != 0}, 10))
    plain = {**spec, "withhold_count": 0}
    x, y = partition_from_spec(splits, 2, 6, plain, seed=5)
    x2, y2 = client_partition(splits, 2, "dirichlet", 6, alpha=0.5, seed=5)
    assert torch.equal(y, y2)  # without withholding the split is the old one


def test_bad_withholding_is_a_user_error(splits):
    from fedattr.learning.data import withheld_classes

    with pytest.raises(UserError):
        withheld_classes(10, (10,))
    with pytest.raises(UserError):
        withheld_classes(10, (1,), 2)
    with pytest.raises(UserError):
        withheld_classes(10, tuple(range(10)))
    with pytest.raises(UserError, match="classes_per_client"):
        partition_indices(tuple(splits.y_pool.tolist()), "pathological", 4, 0.5, 9, 10, 0, (0, 1))
    with pytest.raises(UserError):
        partition_indices(tuple(splits.y_pool.tolist()), "iid", 4, 0.5, 2, 10, 0, (0,), (0,), 1.5)
