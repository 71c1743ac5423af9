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
    from fedattr.attacks.truth import benign_totals
    from fedattr.learning.data import partition_from_spec, withheld_classes

    spec = {"kind": "dirichlet", "alpha": 0.5, "classes_per_client": 2, "min_partition_size": 10,
            "withhold_count": 2, "attacker_share": 0.0}
    chosen = withheld_classes(10, (), 2, seed=5)
    assert len(chosen) == 2 and chosen == withheld_classes(10, (), 2, seed=5)
    hists = {pid: label_histogram(partition_from_spec(splits, pid, 6, spec, seed=5, attacker_ids=[0])[1], 10)
             for pid in range(6)}
    totals = benign_totals({p: h for p, h in hists.items() if p != 0}, 10)
    assert all(totals[c] == 0 for c in chosen)
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


# --- digits: scikit-learn's 8x8 digits, embedded like mnist5k ---------------------------------

@pytest.fixture(scope="module")
def digits():
    return load_splits.__wrapped__("digits")


def test_digits_splits_are_sized_scaled_disjoint_and_seeded(digits):
    from sklearn.datasets import load_digits

    from fedattr.learning.data import DATASETS, DEFAULT_SIZES

    assert DATASETS["digits"][1:] == (1, 8, 10)
    val, test, aux = DEFAULT_SIZES["digits"]
    assert (len(digits.y_val), len(digits.y_test), len(digits.y_aux)) == (val, test, aux)
    assert len(digits.y_pool) == 1797 - val - test - aux > 0
    assert (digits.channels, digits.side, digits.num_classes) == (1, 8, 10)
    for x in (digits.x_pool, digits.x_val, digits.x_test, digits.x_aux):
        assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert float(digits.x_pool.max()) == 1.0  # 16 -> 1: scaled by 16, not by 255
    # Every image lands in exactly one split, with its own label.
    raw = load_digits()
    by_hash = {hashlib.sha1((img / 16.0).astype(np.float32).tobytes()).hexdigest(): int(t)
               for img, t in zip(raw.images, raw.target)}
    parts = [_hashes(t) for t in (digits.x_pool, digits.x_val, digits.x_test, digits.x_aux)]
    assert sum(map(len, parts)) == 1797 and set().union(*parts) == set(by_hash)
    for x, y in ((digits.x_pool, digits.y_pool), (digits.x_test, digits.y_test)):
        assert [by_hash[h] for h in (hashlib.sha1(r.numpy().tobytes()).hexdigest() for r in x)] == y.tolist()
    again = load_splits.__wrapped__("digits")
    assert torch.equal(again.x_val, digits.x_val) and torch.equal(again.y_pool, digits.y_pool)
    other = load_splits.__wrapped__("digits", None, None, None, None, None, 1)
    assert not torch.equal(other.y_val, digits.y_val)


def test_digits_sizes_that_exceed_the_dataset_are_one_clear_error():
    with pytest.raises(UserError, match=r"digits has 1797 images.*2001 does not fit.*val_size = 300"):
        load_splits.__wrapped__("digits", None, 500, 1000, 500)
    with pytest.raises(UserError, match="data.pool_size"):
        load_splits.__wrapped__("digits", None, 300, 400, 200, 1000)
    fits = load_splits.__wrapped__("digits", None, 300, 400, 200, 897)
    assert len(fits.y_pool) == 897


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "pathological"])
def test_digits_partitions_withhold_classes_from_benign_clients(digits, kind):
    labels = tuple(digits.y_pool.tolist())
    lab = np.asarray(labels)
    parts = partition_indices(labels, kind, 8, 0.5, 2, 10, 3, (8, 9), (0,), 0.5)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(set(allidx.tolist()))
    for pid, p in enumerate(parts[1:], 1):
        assert len(p) > 0 and not np.isin(lab[p], [8, 9]).any(), pid
    for c in (8, 9):
        assert int((lab[parts[0]] == c).sum()) == int(round(0.5 * (lab == c).sum()))
    if kind == "dirichlet":
        assert min(len(p) for p in parts[1:]) >= 10
    # The same seed gives the same partitions; another seed others.
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition_indices.__wrapped__(
        labels, kind, 8, 0.5, 2, 10, 3, (8, 9), (0,), 0.5)))
    if kind != "iid":
        other = partition_indices(labels, kind, 8, 0.5, 2, 10, 4, (8, 9), (0,), 0.5)
        assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


# --- a failed download leaves data_dir as it was --------------------------------------------------

def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _offline_mnist(monkeypatch):
    """torchvision's own MNIST class, whose downloads fail after writing a partial file."""
    import torchvision.datasets.mnist as tv_mnist

    def fail(url, download_root, filename=None, md5=None, **_):
        from pathlib import Path

        Path(download_root, filename or "part").write_bytes(b"partial")
        raise OSError("no network")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", fail)


def test_failed_download_creates_no_folders_in_a_new_data_dir(tmp_path, monkeypatch):
    _offline_mnist(monkeypatch)
    target = tmp_path / "elsewhere" / "data"
    with pytest.raises(DatasetUnavailableError, match="could not be downloaded"):
        load_splits.__wrapped__("mnist", str(target))
    assert _tree(tmp_path) == []  # neither data/, elsewhere/ nor MNIST/raw are left


def test_failed_download_leaves_an_existing_data_dir_as_it_was(tmp_path, monkeypatch):
    _offline_mnist(monkeypatch)
    (tmp_path / "MNIST").mkdir()
    (tmp_path / "MNIST" / "notes.txt").write_text("kept")
    (tmp_path / "other.bin").write_bytes(b"\x00")
    before = _tree(tmp_path)
    with pytest.raises(DatasetUnavailableError):
        load_splits.__wrapped__("mnist", str(tmp_path))
    assert _tree(tmp_path) == before
    assert (tmp_path / "MNIST" / "notes.txt").read_text() == "kept"
