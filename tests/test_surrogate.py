"""The second-order surrogate game and control-variate Shapley against exact answers."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedattr.evaluators import (
    EVALUATORS,
    ExactShapley,
    MaxEvaluations,
    MaxPermutations,
    ModelUtility,
    RoundGame,
    SurrogateGame,
    TabularGame,
    fedavg_coefficients,
    make_evaluator,
    masks_to_matrix,
    taylor_terms,
)


def random_surrogate(n, seed=0, zero_weight=True):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    m = rng.normal(size=(n, n))
    h = (m + m.T) / 2
    w = rng.integers(1, 50, size=n).astype(float)
    if zero_weight:
        w[0] = 0.0  # FedAvg's uniform fallback for {0} must be reproduced too
    return SurrogateGame(0.3, a, h, w)


class QuadraticUtility:
    """``U(w) = b.w + 1/2 w'Mw`` of flat parameter sets (exactly quadratic)."""

    def __init__(self, p, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.b = torch.randn(p, generator=g, dtype=torch.float64)
        m = torch.randn(p, p, generator=g, dtype=torch.float64)
        self.m = (m + m.T) / 2

    def __call__(self, params):
        params = params.double()
        return (params @ self.b + 0.5 * ((params @ self.m) * params).sum(1)).numpy()


def test_fedavg_coefficients_match_round_game():
    n = 5
    w = np.array([0.0, 0.0, 3.0, 1.0, 2.0])
    game = RoundGame(lambda p: np.zeros(p.shape[0]), torch.zeros(3), torch.zeros(n, 3), weights=w)
    masks = list(range(1 << n))
    np.testing.assert_array_equal(fedavg_coefficients(masks_to_matrix(masks, n), w), game.coefficients(masks))


def test_surrogate_equals_round_game_on_quadratic_utility():
    n, p = 6, 9
    util = QuadraticUtility(p)
    g = torch.Generator().manual_seed(1)
    base = torch.randn(p, generator=g, dtype=torch.float64)
    updates = torch.randn(n, p, generator=g, dtype=torch.float64)
    weights = np.array([0.0, 5.0, 1.0, 2.0, 7.0, 3.0])
    real = RoundGame(util, base, updates, weights=weights)
    grad = util.b + util.m @ base
    sur = SurrogateGame(float(util(base[None])[0]), (updates @ grad).numpy(), (updates @ util.m @ updates.T).numpy(),
                        weights)
    masks = list(range(1 << n))
    np.testing.assert_allclose(sur.values(masks), real.values(masks), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(sur.table(), real.values(masks), rtol=1e-10, atol=1e-10)
    exact = ExactShapley().fit(real).values_
    np.testing.assert_allclose(make_evaluator("surrogate_shapley", surrogate=sur, calibrate=False).fit(real).values_,
                               exact, atol=1e-10)


class TinyNet(nn.Module):
    """Linear -> BatchNorm -> tanh -> Linear, float64: smooth, with running statistics."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.bn(self.fc1(x))))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = TinyNet().double()
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 4, dtype=torch.float64))  # non-trivial running statistics
    model.eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    state = copy.deepcopy(model.state_dict())
    clients = []
    for i in range(4):
        sd = copy.deepcopy(state)
        for k, v in sd.items():
            if torch.is_floating_point(v):
                sd[k] = v + 0.05 * torch.randn(v.shape, generator=g, dtype=v.dtype)
        sd["bn.running_var"] = sd["bn.running_var"].abs() + 0.05
        clients.append(sd)
    return model, x, y, state, clients


@pytest.mark.parametrize("metric", ["neg_ce", "soft_accuracy", "soft_balanced_accuracy"])
def test_taylor_terms_against_explicit_hessian(tiny, metric):
    model, x, y, state, clients = tiny
    util = ModelUtility(model, x, y, metric="neg_ce")
    base = util.layout.flatten(state)
    updates = util.layout.flatten_many(clients) - base
    u0, a, h = taylor_terms(util, base, updates, metric, temperature=0.7, batch_size=16)

    counts = torch.bincount(y, minlength=3).double()

    def utility(flat):
        # Written independently of the module: the layout is fc1.w, fc1.b, bn.w, bn.b, bn.rm, bn.rv, fc2.w, fc2.b
        p = util.layout.unflatten(flat)
        z = x @ p["fc1.weight"].T + p["fc1.bias"]
        z = (z - p["bn.running_mean"]) / torch.sqrt(p["bn.running_var"] + model.bn.eps) * p["bn.weight"] + p["bn.bias"]
        logits = torch.tanh(z) @ p["fc2.weight"].T + p["fc2.bias"]
        if metric == "neg_ce":
            return -F.cross_entropy(logits, y)
        prob = torch.softmax(logits / 0.7, -1).gather(1, y[:, None])[:, 0]
        if metric == "soft_accuracy":
            return prob.mean()
        return (prob / counts[y]).sum() / (counts > 0).sum()

    grad = torch.autograd.functional.jacobian(utility, base)
    hess = torch.autograd.functional.hessian(utility, base, vectorize=True)
    assert u0 == pytest.approx(float(utility(base)), rel=1e-10)
    np.testing.assert_allclose(a, (updates @ grad).numpy(), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(h, (updates @ hess @ updates.T).numpy(), rtol=1e-7, atol=1e-12)


def test_taylor_terms_against_finite_differences_of_the_real_module(tiny):
    # The module runs its fused eval-mode BatchNorm kernel; the surrogate its own formula.
    model, x, y, state, clients = tiny
    util = ModelUtility(model, x, y, metric="neg_ce")
    base = util.layout.flatten(state)
    updates = util.layout.flatten_many(clients) - base
    u0, a, h = taylor_terms(util, base, updates, "neg_ce")
    net = copy.deepcopy(model).eval()
    eps = 1e-3

    @torch.no_grad()
    def u(v):
        net.load_state_dict(util.layout.to_state_dict(base + v, state))
        return float(-F.cross_entropy(net(x), y))

    assert u0 == pytest.approx(u(0 * base), rel=1e-12)
    for i in range(len(clients)):
        gi = updates[i]
        assert a[i] == pytest.approx((u(eps * gi) - u(-eps * gi)) / (2 * eps), rel=1e-5, abs=1e-9)
        for j in range(len(clients)):
            gj = updates[j]
            fd = (u(eps * (gi + gj)) - u(eps * (gi - gj)) - u(eps * (gj - gi)) + u(-eps * (gi + gj))) / (4 * eps**2)
            assert h[i, j] == pytest.approx(fd, rel=1e-4, abs=1e-8)


def test_surrogate_game_from_round_game_tracks_small_updates(tiny):
    model, x, y, state, clients = tiny
    util = ModelUtility(model, x, y, metric="neg_ce")
    base = util.layout.flatten(state)
    # Small updates: the cubic remainder is negligible, so the surrogate matches the real game.
    small = [util.layout.to_state_dict(base + 0.01 * (u - base), state) for u in util.layout.flatten_many(clients)]
    game = RoundGame.from_state_dicts(util, state, small, weights=[3, 1, 2, 5])
    masks = list(range(16))
    real = game.values(masks)
    for center, exact_at in ((False, 0), (True, 15)):
        sur = SurrogateGame.from_round_game(game, center=center)
        np.testing.assert_allclose(sur.values(masks), real, atol=1e-5 * np.abs(real - real[0]).max())
        # Exact at the expansion point (w_t, or the grand coalition's model when centred), up to
        # ModelUtility's float32 cross-entropy.
        assert sur.values([exact_at])[0] == pytest.approx(real[exact_at], rel=1e-7)
    ev = make_evaluator("surrogate_shapley").fit(game)
    assert ev.values_.sum() == pytest.approx(game.gain(), rel=1e-9)  # calibrated: efficiency holds
    exact = ExactShapley().fit(game).values_
    assert np.abs(ev.values_ - exact).sum() <= 1e-3 * np.abs(exact).sum()
    assert ev.exact_ and ev.n_evaluations_ == 2


def test_surrogate_requires_fedavg_round_game(tiny):
    model, x, y, state, clients = tiny
    util = ModelUtility(model, x, y, metric="neg_ce")
    game = RoundGame.from_state_dicts(util, state, clients, aggregate=lambda u, w: u.median(0).values)
    with pytest.raises(ValueError, match="custom aggregation"):
        make_evaluator("surrogate_shapley").fit(game)
    with pytest.raises(ValueError, match="ModelUtility"):
        make_evaluator("cv_shapley").fit(TabularGame(np.zeros(8)))
    with pytest.raises(ValueError, match="unknown surrogate metric"):
        taylor_terms(util, game.base, game.updates, "accuracy")


@pytest.mark.parametrize("n", [1, 3, 7])
def test_surrogate_shapley_by_enumeration_matches_generic_exact(n):
    sur = random_surrogate(n, seed=n)
    table = sur.table()
    np.testing.assert_allclose(table, sur.values(range(1 << n)), atol=1e-12)
    exact = ExactShapley().fit(TabularGame(table)).values_
    values, is_exact = sur.shapley()
    assert is_exact
    np.testing.assert_allclose(values, exact, atol=1e-12)


def test_permutation_marginals_are_prefix_differences():
    n = 6
    sur = random_surrogate(n, seed=3)
    rng = np.random.default_rng(0)
    perms = np.stack([rng.permutation(n) for _ in range(20)])
    marg = sur.permutation_marginals(perms)
    for p, row in zip(perms, marg):
        masks = [0]
        for i in p:
            masks.append(masks[-1] | (1 << int(i)))
        v = sur.values_of(masks_to_matrix(masks, n))
        np.testing.assert_allclose(row[p], np.diff(v), atol=1e-12)


def test_sampled_surrogate_shapley_converges_to_exact():
    sur = random_surrogate(8, seed=4)
    exact, _ = sur.shapley()
    err = [np.abs(sur.shapley(max_exact_players=0, n_permutations=k, seed=1)[0] - exact).sum() for k in (20, 20000)]
    assert not sur.shapley(max_exact_players=0, n_permutations=10)[1]
    assert err[1] < 0.02 * np.abs(exact).sum() and err[1] < err[0] / 5


def test_calibration_matches_real_gain_and_keeps_sign():
    sur = random_surrogate(5, seed=5, zero_weight=False)
    gain = sur.values([31])[0] - sur.values([0])[0]
    cal = sur.calibrated(1.0, 1.0 + 2 * gain)
    assert cal.values([31])[0] - cal.values([0])[0] == pytest.approx(2 * gain)
    assert cal.values([0])[0] == 1.0
    assert sur.calibrated(0.0, -gain).scale == 1.0  # opposite signs: no flip


# ------------------------------------------------------------------------------ control variate


def noisy_game(n, seed, noise):
    """A real game = a quadratic surrogate plus a non-quadratic residual of size ``noise``."""
    sur = random_surrogate(n, seed=seed, zero_weight=False)
    rng = np.random.default_rng(seed + 100)
    table = sur.table() + noise * rng.normal(size=1 << n)
    return TabularGame(table), sur


def test_cv_is_exact_with_zero_variance_when_surrogate_equals_game():
    sur = random_surrogate(6, seed=6)
    real = TabularGame(sur.table())
    exact = ExactShapley().fit(real).values_
    ev = make_evaluator("cv_shapley", surrogate=sur, stop=MaxPermutations(6)).fit(real, seed=0)
    np.testing.assert_allclose(ev.values_, exact, atol=1e-10)
    np.testing.assert_allclose(ev.stderr_, 0.0, atol=1e-12)
    assert ev.n_evaluations_ > 2  # it did sample the real game


def test_cv_converges_to_exact_as_budget_grows():
    real, sur = noisy_game(7, seed=7, noise=0.3)
    exact = ExactShapley().fit(real).values_

    def err(perms, seed):
        ev = make_evaluator("cv_shapley", surrogate=sur, stop=MaxPermutations(perms))
        return np.abs(ev.fit(real, seed=seed).values_ - exact).sum() / np.abs(exact).sum()

    small = np.mean([err(4, s) for s in range(5)])
    large = np.mean([err(2000, s) for s in range(5)])
    assert large < small / 3 and large < 0.05


def test_cv_is_unbiased_and_beats_plain_sampling_with_a_good_surrogate():
    real, sur = noisy_game(6, seed=8, noise=0.05)
    exact = ExactShapley().fit(real).values_
    runs, tmc = [], []
    for s in range(300):
        runs.append(make_evaluator("cv_shapley", surrogate=sur, stop=MaxPermutations(2), antithetic=False)
                    .fit(real, seed=s).values_)
        tmc.append(make_evaluator("tmc", truncation=None, stop=MaxPermutations(2)).fit(real, seed=s).values_)
    runs, tmc = np.array(runs), np.array(tmc)
    se = runs.std(0) / np.sqrt(len(runs))
    assert np.all(np.abs(runs.mean(0) - exact) < 4 * se + 1e-12)  # unbiased within 4 standard errors
    assert runs.std(0).mean() < tmc.std(0).mean() / 3


def test_cv_respects_hard_budget_and_uses_shared_cache():
    real, sur = noisy_game(7, seed=9, noise=0.1)
    ev = make_evaluator("cv_shapley", surrogate=sur, stop=MaxEvaluations(30)).fit(real, seed=0)
    assert ev.n_evaluations_ <= 30 and ev.budget_exhausted_
    assert real.cache.n_evaluations == ev.n_evaluations_
    again = make_evaluator("cv_shapley", surrogate=sur, stop=MaxEvaluations(30)).fit(real, seed=0)
    assert again.n_new_evaluations_ == 0
    np.testing.assert_array_equal(again.values_, ev.values_)


def test_registered():
    assert EVALUATORS["surrogate_shapley"].__name__ == "SurrogateShapley"
    assert EVALUATORS["cv_shapley"].__name__ == "ControlVariateShapley"
