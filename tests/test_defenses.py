"""Detectors on constructed updates whose answer is known, FoolsGold's state, the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedattr.defenses import DETECTORS, DetectorResult, RoundUpdates, make_detector, root_update, validate_detector
from fedattr.defenses._stats import robust_z
from fedattr.defenses.foolsgold import foolsgold_weights
from fedattr.evaluators.layout import StateLayout
from fedattr.learning.training import train_local

P = 200


def _round(updates, reference=None, players=None, r=1):
    n = updates.shape[0]
    return RoundUpdates(r, list(range(n)) if players is None else players, updates, np.ones(n), torch.zeros(updates.shape[1]), reference)


def _benign(n=7, seed=0, spread=0.3):
    """Updates around one common direction, norms near 1."""
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(P, generator=gen, dtype=torch.float64)
    common /= common.norm()
    noise = torch.randn(n, P, generator=gen, dtype=torch.float64) * spread / np.sqrt(P)
    return common, common + noise


def test_norm_outlier_flagged_by_norm_and_krum():
    _, g = _benign()
    out = g[0] * 10.0
    upd = torch.cat([g[:3], out[None], g[3:]])  # the outlier at position 3
    for name, params in [("norm", {}), ("krum", {"f": 1}), ("multikrum", {"f": 1})]:
        res = make_detector(name, **params).observe(_round(upd))
        assert res.flags.tolist() == [i == 3 for i in range(8)], name
        assert res.ranks()[3] == 1, name
    z = make_detector("norm").observe(_round(upd)).scores
    assert z[3] > 3.5 and np.all(np.abs(np.delete(z, 3)) < 3.5)


def test_norm_two_sided_flags_a_free_rider():
    _, g = _benign()
    upd = torch.cat([g, torch.zeros(1, P, dtype=torch.float64)])
    assert not make_detector("norm").observe(_round(upd)).flags.any()
    assert make_detector("norm", two_sided=True).observe(_round(upd)).flags.tolist() == [False] * 7 + [True]


def test_direction_outlier_flagged_by_cosine_median_and_fltrust():
    common, g = _benign()
    upd = torch.cat([g, -common[None]])  # same norm, opposite direction
    assert make_detector("norm").observe(_round(upd)).flags.sum() == 0  # not a norm outlier
    res = make_detector("cosine_median").observe(_round(upd))
    assert res.flags.tolist() == [False] * 7 + [True]
    assert not res.suspicious_high and res.ranks()[7] == 1
    trust = make_detector("fltrust").observe(_round(upd, reference=common))
    assert trust.scores[7] == 0.0 and trust.flags.tolist() == [False] * 7 + [True]
    assert np.all(trust.scores[:7] > 0.9)
    coef = np.asarray(trust.info["aggregation_coefficients"])
    assert coef[7] == 0.0 and coef.sum() == pytest.approx(np.sum(trust.scores[:7] / upd[:7].norm(dim=1).numpy()) / trust.scores.sum())


def test_free_rider_gets_zero_trust():
    common, g = _benign()
    upd = torch.cat([g, torch.zeros(1, P, dtype=torch.float64)])
    res = make_detector("fltrust").observe(_round(upd, reference=common))
    assert res.flags.tolist() == [False] * 7 + [True]
    assert make_detector("cosine_median").observe(_round(upd)).flags.tolist() == [False] * 7 + [True]


def test_fltrust_needs_reference_update():
    assert DETECTORS["fltrust"].needs_reference_update and not DETECTORS["norm"].needs_reference_update
    _, g = _benign()
    with pytest.raises(ValueError, match="reference_update"):
        make_detector("fltrust").observe(_round(g))


def test_flame_flags_the_minority_cluster():
    common, g = _benign(n=6, spread=0.2)
    other = torch.randn(P, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    other /= other.norm()
    pair = torch.stack([other + 0.01 * g[0], other - 0.01 * g[1]])
    upd = torch.cat([g[:2], pair, g[2:]])
    res = make_detector("flame").observe(_round(upd))
    assert res.flags.tolist() == [False, False, True, True, False, False, False, False]
    labels = np.asarray(res.info["labels"])
    assert len(set(labels[[0, 1, 4, 5, 6, 7]])) == 1 and labels[0] == res.info["majority_label"]


def test_krum_scores_match_brute_force():
    g = torch.randn(7, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    f = 2
    want = []
    for i in range(7):
        d = sorted(float(((g[i] - g[j]) ** 2).sum()) for j in range(7) if j != i)
        want.append(sum(d[: 7 - f - 2]))
    res = make_detector("multikrum", f=f).observe(_round(g))
    np.testing.assert_allclose(res.scores, want, rtol=1e-10)
    assert set(np.flatnonzero(res.flags)) == set(np.argsort(want)[-f:])


def test_krum_flags_a_colluding_pair_far_from_the_winner():
    common, g = _benign(n=6)
    far = common * 0 + torch.randn(P, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    upd = torch.cat([g, far[None], far[None] + 1e-3])  # two near-identical outliers vouch for each other
    res = make_detector("krum", f=2).observe(_round(upd))
    assert res.flags.tolist() == [False] * 6 + [True, True]
    assert res.info["winner"] < 6


def _orthogonal_clients(n, rounds, seed):
    """Per client a fixed random direction plus per-round noise (benign, mutually dissimilar)."""
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n, P, generator=gen, dtype=torch.float64)
    return [dirs + 0.5 * torch.randn(n, P, generator=gen, dtype=torch.float64) for _ in range(rounds)]


def test_foolsgold_flags_an_identical_sybil_pair():
    upd = _orthogonal_clients(6, 1, 0)[0]
    sybil = torch.randn(P, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    upd = torch.cat([upd, sybil[None], sybil[None]])
    res = make_detector("foolsgold").observe(_round(upd))
    assert res.flags.tolist() == [False] * 6 + [True, True]
    assert np.all(res.scores[:6] == 1.0) and np.all(res.scores[6:] == 0.0)


def test_foolsgold_weights_hand_computed():
    # Three clients: 0 and 1 share cosine 0.5, 2 is orthogonal to both.
    cs = np.array([[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]], dtype=float)
    # a = 1 - max cs = [0.5, 0.5, 1] -> /max -> [0.5, 0.5, 0.99]; logit(0.5) + 0.5 = 0.5.
    np.testing.assert_allclose(foolsgold_weights(cs), [0.5, 0.5, 1.0])


def test_foolsgold_state_accumulates_across_rounds_and_resets():
    rounds = 12
    benign = _orthogonal_clients(6, rounds, 1)
    gen = torch.Generator().manual_seed(7)
    goal = torch.randn(P, generator=gen, dtype=torch.float64)
    # The sybils share a small common goal under large independent per-round noise: one round
    # looks unrelated, their sums over rounds point the same way.
    sybils = [goal + torch.randn(2, P, generator=gen, dtype=torch.float64) for _ in range(rounds)]
    det = make_detector("foolsgold")
    first = None
    for r in range(rounds):
        res = det.observe(_round(torch.cat([benign[r], sybils[r]]), r=r + 1))
        first = res if first is None else first
    assert not first.flags.any()
    assert res.flags.tolist() == [False] * 6 + [True, True]
    assert res.info["rounds_accumulated"] == [rounds] * 8
    fresh = make_detector("foolsgold").observe(_round(torch.cat([benign[-1], sybils[-1]])))
    assert not fresh.flags.any()
    det.reset()
    again = det.observe(_round(torch.cat([benign[-1], sybils[-1]])))
    np.testing.assert_array_equal(again.scores, fresh.scores)


def test_foolsgold_tracks_clients_by_partition_id():
    upd = _orthogonal_clients(4, 2, 2)
    det = make_detector("foolsgold")
    det.observe(_round(upd[0], players=[10, 11, 12, 13]))
    res = det.observe(_round(upd[1][:2], players=[11, 13]))
    assert res.info["rounds_accumulated"] == [2, 2] and set(det.history_) == {10, 11, 12, 13}


def test_robust_z_handles_zero_mad():
    np.testing.assert_allclose(robust_z([1, 2, 3, 4, 100]), 0.6745 * (np.array([1, 2, 3, 4, 100]) - 3) / 1)
    z = robust_z([1, 1, 1, 1, 5])  # MAD 0: mean absolute deviation 0.8 takes over
    np.testing.assert_allclose(z, [0, 0, 0, 0, 4 / (1.253314 * 0.8)])
    assert np.all(robust_z([2, 2, 2]) == 0)


def test_ranks_ties_by_position():
    r = DetectorResult(np.array([1.0, 3.0, 3.0, 0.5]), np.zeros(4, dtype=bool), True)
    assert r.ranks().tolist() == [3, 1, 2, 4]
    r = DetectorResult(np.array([1.0, 3.0, 3.0, 0.5]), np.zeros(4, dtype=bool), False)
    assert r.ranks().tolist() == [2, 3, 4, 1]


def test_every_detector_returns_one_verdict_per_client():
    common, g = _benign()
    for name in sorted(DETECTORS):
        if getattr(DETECTORS[name], "needs_server_data", False):
            continue  # tested against the server's data in tests/test_footprint.py
        params = {"f": 1} if "krum" in name else {}
        res = make_detector(name, **params).observe(_round(g, reference=common))
        assert res.scores.shape == (7,) and res.flags.dtype == bool and res.flags.shape == (7,)
        if name == "flame":
            # HDBSCAN labels the fringe of even one tight cluster as noise: FLAME admits a
            # majority, not everyone.
            assert (~res.flags).sum() >= 7 // 2 + 1
        elif "krum" in name:
            assert res.flags.sum() == 1  # Krum always drops f
        else:
            assert not res.flags.any(), name  # a tight benign federation: nobody flagged


def test_registry_errors():
    with pytest.raises(ValueError, match="did you mean 'krum'"):
        make_detector("krun")
    with pytest.raises(ValueError, match="did you mean 'threshold'"):
        make_detector("norm", treshold=3)
    with pytest.raises(ValueError, match="2f\\+3=9 clients per round, got 8"):
        validate_detector("multikrum", {"f": 3}, 8)
    validate_detector("multikrum", {"f": 2}, 8)
    with pytest.raises(ValueError, match="f must be an integer"):
        validate_detector("krum", {"f": -1}, 8)
    with pytest.raises(ValueError, match="threshold must be > 0"):
        validate_detector("cosine_median", {"threshold": 0}, 8)
    with pytest.raises(ValueError, match="unknown parameter 'root_size'"):
        validate_detector("fltrust", {"root_size": 0}, 8)
    with pytest.raises(ValueError, match="unknown detector"):
        validate_detector("bulyan_x", {}, 8)


def test_root_update_is_a_seeded_training_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    layout = StateLayout.from_module(model)
    base = layout.flatten(model.state_dict())
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(1))
    y = torch.arange(40) % 3
    g0 = root_update(model, layout, base, x, y, epochs=2, batch_size=8, lr=0.1, seed=4)
    ref = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    ref.load_state_dict(model.state_dict())
    train_local(ref, x, y, epochs=2, batch_size=8, lr=0.1, seed=4)
    torch.testing.assert_close(g0, layout.flatten(ref.state_dict()) - base)
    assert g0.norm() > 0
    torch.testing.assert_close(layout.flatten(model.state_dict()), base)  # the template is untouched
