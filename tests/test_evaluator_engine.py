"""The round game on a real model: layout, FedAvg coalitions, and batched vs naive evaluation."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedattr.evaluators import (
    ExactShapley,
    IndividualMarginal,
    LeaveOneOut,
    ModelUtility,
    RoundGame,
    StateLayout,
    flatten_state,
    make_evaluator,
    unflatten_state,
)

N_CLIENTS = 4


class TinyCNN(nn.Module):
    """2 conv layers + BatchNorm + linear, 28x28 grey input, 10 classes."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 12, 5)
        self.bn2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = TinyCNN()
    # A few training steps so BatchNorm running stats and num_batches_tracked are non-trivial.
    x_tr = torch.randn(64, 1, 28, 28)
    y_tr = torch.randint(0, 10, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x_tr), y_tr).backward()
        opt.step()
    global_state = copy.deepcopy(model.state_dict())
    gen = torch.Generator().manual_seed(1)
    clients = []
    for _ in range(N_CLIENTS):
        sd = copy.deepcopy(global_state)
        for k, v in sd.items():
            if torch.is_floating_point(v):
                sd[k] = v + 0.3 * v.abs().mean() * torch.randn(v.shape, generator=gen)
        sd["bn1.running_var"] = sd["bn1.running_var"].abs() + 0.1
        sd["bn2.running_var"] = sd["bn2.running_var"].abs() + 0.1
        sd["bn1.num_batches_tracked"] = sd["bn1.num_batches_tracked"] + 100  # must be ignored
        clients.append(sd)
    x_val = torch.randn(200, 1, 28, 28, generator=gen)
    y_val = torch.randint(0, 8, (200,), generator=gen)  # classes 8, 9 absent: balanced accuracy over 8
    weights = [10, 20, 30, 45]
    return model, global_state, clients, weights, x_val, y_val


def manual_fedavg(global_state, clients, weights, members):
    """FedAvg of the members' state dicts, written out entry by entry."""
    if not members:
        return copy.deepcopy(global_state)
    tot = sum(weights[i] for i in members)
    out = {}
    for k, v in global_state.items():
        if torch.is_floating_point(v):
            out[k] = v + sum((weights[i] / tot) * (clients[i][k] - v) for i in members)
        else:
            out[k] = v.clone()
    return out


def manual_utility(model, state, x, y, metric):
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    m.eval()
    with torch.no_grad():
        logits = m(x).double()
    pred = logits.argmax(1)
    if metric == "accuracy":
        return (pred == y).double().mean().item()
    if metric == "neg_ce":
        return -F.cross_entropy(logits, y).item()
    return np.mean([((pred == y) & (y == c)).sum().item() / (y == c).sum().item() for c in torch.unique(y)])


def test_layout_roundtrip_keeps_integer_buffers_from_template(setup):
    model, global_state, clients, *_ = setup
    layout = StateLayout.from_module(model)
    assert "bn1.num_batches_tracked" not in layout.names
    assert "bn1.running_mean" in layout.names and "conv1.weight" in layout.names
    assert layout.size == sum(v.numel() for v in global_state.values() if torch.is_floating_point(v))
    flat = layout.flatten(clients[0])
    back = layout.to_state_dict(flat, global_state)
    for k, v in clients[0].items():
        if torch.is_floating_point(v):
            assert torch.equal(back[k], v)
        else:
            assert torch.equal(back[k], global_state[k])
    assert torch.equal(flatten_state(clients[0]), flat)
    assert torch.equal(unflatten_state(flat, global_state)["fc.bias"], clients[0]["fc.bias"])
    assert list(back) == list(global_state)
    arrays = [v.numpy() for v in clients[0].values()]  # Flower's ndarrays: every entry, in order
    assert torch.equal(layout.flatten_arrays(arrays), flat)


@pytest.mark.parametrize("metric", ["accuracy", "neg_ce", "balanced_accuracy"])
def test_round_game_values_match_a_hand_written_fedavg_and_evaluation(setup, metric):
    model, global_state, clients, weights, x_val, y_val = setup
    util = ModelUtility(model, x_val, y_val, metric=metric, batch_size=64)
    game = RoundGame.from_state_dicts(util, global_state, clients, weights=weights, players=[5, 6, 7, 8])
    for members in ([], [0], [1, 3], [0, 1, 2, 3]):
        mask = sum(1 << i for i in members)
        expected = manual_utility(model, manual_fedavg(global_state, clients, weights, members), x_val, y_val, metric)
        assert game.value(mask) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("metric", ["accuracy", "neg_ce", "balanced_accuracy"])
@pytest.mark.parametrize("val_subset", [None, 97])
def test_batched_and_naive_engines_agree_on_all_coalitions(setup, metric, val_subset):
    model, global_state, clients, weights, x_val, y_val = setup
    values = {}
    # vmap is slow on CPU: checked on the full validation set only (the subset path is shared).
    engines = ("naive", "auto", "vmap") if val_subset is None else ("naive", "auto")
    for engine in engines:
        util = ModelUtility(model, x_val, y_val, metric=metric, engine=engine, val_subset=val_subset,
                            subset_seed=3, batch_size=40)
        game = RoundGame.from_state_dicts(util, global_state, clients, weights=weights)
        values[engine] = game.values(range(1 << N_CLIENTS))
        assert util.n_val_ == (97 if val_subset else 200)
        assert util.n_models_ == 1 << N_CLIENTS
    assert np.ptp(values["naive"]) > 0  # coalitions really differ
    np.testing.assert_allclose(values["auto"], values["naive"], atol=1e-5, rtol=0)
    if "vmap" in values:
        np.testing.assert_allclose(values["vmap"], values["naive"], atol=1e-5, rtol=0)


def test_memory_chunking_gives_the_same_values(setup):
    model, global_state, clients, weights, x_val, y_val = setup
    ref = ModelUtility(model, x_val, y_val, engine="vmap")
    layout = ref.layout
    tiny = ModelUtility(model, x_val, y_val, engine="vmap", max_memory_bytes=3 * layout.size * 4 + 1)
    assert tiny.max_coalitions_per_call_ == 1
    loop = ModelUtility(model, x_val, y_val, engine="loop", max_memory_bytes=3 * layout.size * 4 + 1)
    assert loop.max_coalitions_per_call_ == 3
    masks = [0, 1, 6, 7, 9, 15]
    vals = [RoundGame.from_state_dicts(u, global_state, clients, weights).values(masks) for u in (ref, tiny, loop)]
    np.testing.assert_allclose(vals[1], vals[0], atol=1e-6)
    np.testing.assert_allclose(vals[2], vals[0], atol=1e-5)


def test_template_model_is_not_modified(setup):
    model, global_state, clients, weights, x_val, y_val = setup
    before = copy.deepcopy(model.state_dict())
    model.train()
    hooks_before = [len(m._forward_hooks) for m in model.modules()]
    for engine in ("naive", "auto"):
        util = ModelUtility(model, x_val, y_val, engine=engine)
        RoundGame.from_state_dicts(util, global_state, clients, weights).values(range(16))
    assert model.training
    assert [len(m._forward_hooks) for m in model.modules()] == hooks_before
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_shared_cache_on_a_model_and_evaluator_counts(setup):
    model, global_state, clients, weights, x_val, y_val = setup
    util = ModelUtility(model, x_val, y_val)
    game = RoundGame.from_state_dicts(util, global_state, clients, weights=weights, players=[11, 12, 13, 14])
    shap = ExactShapley().fit(game)
    assert util.n_calls_ == 1 and util.n_models_ == 16
    loo = LeaveOneOut().fit(game)
    ind = IndividualMarginal().fit(game)
    tmc = make_evaluator("tmc").fit(game, seed=0)
    assert util.n_models_ == 16 and game.cache.n_evaluations == 16
    assert (loo.n_evaluations_, loo.n_new_evaluations_) == (5, 0)
    assert (ind.n_evaluations_, ind.n_new_evaluations_) == (5, 0)
    assert tmc.n_new_evaluations_ == 0
    assert shap.values_.sum() == pytest.approx(game.gain(), abs=1e-12)
    assert shap.players_ == (11, 12, 13, 14)


def test_same_numbers_across_runs(setup):
    model, global_state, clients, weights, x_val, y_val = setup
    runs = []
    for _ in range(2):
        util = ModelUtility(model, x_val, y_val, metric="neg_ce")
        game = RoundGame.from_state_dicts(util, global_state, clients, weights)
        runs.append((game.values(range(16)), make_evaluator("gtg", eps_round=0).fit(game, seed=4).values_))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_custom_aggregation(setup):
    model, global_state, clients, weights, x_val, y_val = setup
    util = ModelUtility(model, x_val, y_val, metric="neg_ce")
    layout = util.layout
    base = layout.flatten(global_state)
    ups = layout.flatten_many(clients) - base
    median = lambda g, w: g.median(dim=0).values  # noqa: E731
    game = RoundGame(util, base, ups, weights=weights, aggregate=median)
    assert torch.equal(game.aggregate(0), base)
    assert torch.allclose(game.aggregate(0b1011), base + ups[[0, 1, 3]].median(0).values)
    fedavg = RoundGame(util, base, ups, weights=weights)
    assert torch.allclose(fedavg.aggregate(0b0101), base + (10 * ups[0] + 30 * ups[2]) / 40, atol=1e-6)
    assert game.value(0b1011) != fedavg.value(0b1011)


def test_utility_input_validation(setup):
    model, global_state, clients, weights, x_val, y_val = setup
    with pytest.raises(ValueError, match="metric"):
        ModelUtility(model, x_val, y_val, metric="f1")
    with pytest.raises(ValueError, match="engine"):
        ModelUtility(model, x_val, y_val, engine="fast")
    with pytest.raises(ValueError, match="num_classes"):
        ModelUtility(model, x_val, y_val, num_classes=3)
    util = ModelUtility(model, x_val, y_val)
    with pytest.raises(ValueError, match="shape"):
        util(torch.zeros(2, 5))
    assert float(util(util.layout.flatten(global_state))[0]) == pytest.approx(
        manual_utility(model, global_state, x_val, y_val, "accuracy"), abs=1e-12)


@pytest.mark.parametrize("engine", ["loop", "vmap", "naive"])
def test_evaluate_all_equals_the_separate_metrics(setup, engine):
    model, global_state, clients, weights, x_val, y_val = setup
    masks = [0, 1, 6, 15]
    params = None
    separate = {}
    for metric in ("accuracy", "neg_ce", "balanced_accuracy"):
        util = ModelUtility(model, x_val, y_val, metric=metric, engine=engine, batch_size=64)
        game = RoundGame.from_state_dicts(util, global_state, clients, weights=weights)
        params = game.aggregate_many(masks)
        separate[metric] = util(params)
    both = ModelUtility(model, x_val, y_val, metric="accuracy", engine=engine, batch_size=64)
    out = both.evaluate_all(params)
    assert set(out) == set(separate)
    for metric, values in separate.items():
        np.testing.assert_array_equal(out[metric], values)
    assert both.n_models_ == len(masks)  # one pass over the parameter sets for all three
    only = both.evaluate_all(params, ("neg_ce",))
    assert list(only) == ["neg_ce"]
    with pytest.raises(ValueError, match="unknown metric"):
        both.evaluate_all(params, ("recall",))
