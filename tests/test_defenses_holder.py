"""The genuine-holder control (partition.genuine_holder): one benign client really holds the withheld classes."""

import numpy as np
import pytest
import torch

from fedattr.core.errors import UserError
from fedattr.learning.data import partition_from_spec, partition_indices
from fedattr.scenario import ScenarioError, scenario_from_dict

SPEC = {"kind": "dirichlet", "alpha": 0.5, "classes_per_client": 2, "min_partition_size": 10,
        "withhold_classes": [8, 9], "attacker_share": 0.0}


def _parts(splits, seed=3, **holder):
    return partition_indices(tuple(splits.y_pool.tolist()), "dirichlet", 8, 0.5, 2, 10, seed, (8, 9), (0,), 0.0,
                             **holder)


def test_holder_gets_exactly_the_attackers_share_of_real_withheld_images(splits):
    y = splits.y_pool.numpy()
    plain = _parts(splits)
    held = _parts(splits, genuine_holder=3, genuine_holder_count=0, genuine_holder_fraction=0.25)
    expected = int(round(0.25 * len(plain[0])))
    extra = held[3][len(plain[3]):]
    # Its own partition first, unchanged, then the real withheld-class images.
    assert np.array_equal(held[3][: len(plain[3])], plain[3])
    assert len(extra) == expected
    counts = np.bincount(y[extra], minlength=10)
    assert counts[8] == (expected + 1) // 2 and counts[9] == expected // 2  # spread as evenly as the attack's labels
    assert counts[:8].sum() == 0
    # They are pool images (real) that nobody else holds.
    others = np.concatenate([held[i] for i in range(8) if i != 3])
    assert not set(extra.tolist()) & set(others.tolist())
    assert len(set(held[3].tolist())) == len(held[3])


def test_other_clients_are_unchanged_and_still_lack_the_classes(splits):
    y = splits.y_pool.numpy()
    plain = _parts(splits)
    held = _parts(splits, genuine_holder=3, genuine_holder_count=40)
    for i in range(8):
        if i != 3:
            assert np.array_equal(held[i], plain[i])
            assert not np.isin(y[held[i]], [8, 9]).any()
    assert np.isin(y[held[3]], [8, 9]).sum() == 40


def test_holder_draw_is_deterministic_by_seed(splits):
    a = _parts(splits, seed=5, genuine_holder=2, genuine_holder_count=30)
    b = _parts(splits, seed=5, genuine_holder=2, genuine_holder_count=30)
    c = _parts(splits, seed=6, genuine_holder=2, genuine_holder_count=30)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    y = splits.y_pool.numpy()
    ea = a[2][np.isin(y[a[2]], [8, 9])]
    ec = c[2][np.isin(y[c[2]], [8, 9])]
    assert set(ea.tolist()) != set(ec.tolist())


def test_partition_from_spec_reads_the_holder_fields(splits):
    spec = {**SPEC, "genuine_holder": 1, "genuine_holder_count": 10}
    x, y = partition_from_spec(splits, 1, 8, spec, seed=0, attacker_ids=[0])
    x0, y0 = partition_from_spec(splits, 1, 8, SPEC, seed=0, attacker_ids=[0])
    assert len(y) == len(y0) + 10 and int(torch.isin(y, torch.tensor([8, 9])).sum()) == 10
    assert torch.equal(x[: len(y0)], x0)


def test_holder_with_the_attackers_share_dealt_draws_from_the_rest(splits):
    y = splits.y_pool.numpy()
    parts = partition_indices(tuple(y.tolist()), "dirichlet", 8, 0.5, 2, 10, 0, (8, 9), (0,), 0.5,
                              genuine_holder=4, genuine_holder_count=50)
    assert not set(parts[4].tolist()) & set(parts[0].tolist())


@pytest.mark.parametrize("holder, count, msg", [
    (0, 10, "benign client id"),        # an attacker
    (9, 10, "benign client id"),        # out of range
    (2, 100000, "needs 50000 images"),  # more than the pool has
])
def test_bad_holder_is_a_user_error(splits, holder, count, msg):
    with pytest.raises(UserError, match=msg):
        _parts(splits, genuine_holder=holder, genuine_holder_count=count)


def test_schema_checks_the_holder():
    base = {"num_clients": 4, "attacker_ids": [0], "partition": {"withhold_classes": [8, 9]}}
    ok = scenario_from_dict({**base, "partition": {"withhold_classes": [8, 9], "genuine_holder": 2}})
    assert ok.partition.genuine_holder == 2 and ok.partition.genuine_holder_count == 0
    with pytest.raises(ScenarioError, match="benign client id"):
        scenario_from_dict({**base, "partition": {"withhold_classes": [8, 9], "genuine_holder": 0}})
    with pytest.raises(ScenarioError, match="needs withheld classes"):
        scenario_from_dict({**base, "partition": {"genuine_holder": 1}})
