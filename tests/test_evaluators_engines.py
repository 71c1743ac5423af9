"""fedattr.evaluators.engines: every engine on a model written as Flower's quickstart writes it, and
the choice verified (and fallen back from) when the utility is built."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedattr.evaluators import ENGINES, ModelUtility, RoundGame
from fedattr.evaluators.engines import NaiveEngine, ValidationData, probe_parameter_sets, verify_engine
from fedattr.evaluators.layout import StateLayout
from fedattr.learning.models import SmallCNN


class QuickstartNet(nn.Module):
    """Flower's PyTorch quickstart model: functional ReLUs and ``x.view`` after the convolutions."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 4 * 4)  # needs a contiguous NCHW tensor
        return self.fc2(F.relu(self.fc1(x)))


class CapturedWeights(nn.Module):
    """Reads its weight through a list captured at construction, so functional_call's parameters
    never reach the forward (load_state_dict writes into the same tensor, so naive works)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(12, 3)
        self._captured = [self.lin.weight]

    def forward(self, x):
        return F.linear(x, self._captured[0], self.lin.bias)


def _data(shape, classes, n=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=gen), torch.randint(0, classes, (n,), generator=gen)


def _parameter_sets(model, k=5, scale=0.05):
    layout = StateLayout.from_module(model)
    flat = layout.flatten(model.state_dict())
    gen = torch.Generator().manual_seed(3)
    return torch.stack([flat + scale * torch.randn(flat.shape, generator=gen) * flat.abs().mean() for _ in range(k)])


@pytest.fixture(scope="module")
def quickstart():
    torch.manual_seed(0)
    model = QuickstartNet().eval()
    x, y = _data((1, 28, 28), 10)
    flats = _parameter_sets(model)
    ref = ModelUtility(model, x, y, engine="naive").evaluate_all(flats)
    return model, x, y, flats, ref


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_evaluates_the_quickstart_model(quickstart, engine):
    model, x, y, flats, ref = quickstart
    util = ModelUtility(model, x, y, engine=engine, batch_size=16)
    got = util.evaluate_all(flats)
    for metric in ref:
        np.testing.assert_allclose(got[metric], ref[metric], rtol=0, atol=1e-6, err_msg=metric)
    assert util.logits(flats[:2]).shape == (2, 40, 10)
    # the engine used is one that works on this model, and the utility says why others were not
    assert util.engine_.name in ("loop", "vmap", "naive")
    assert not util.channels_last_  # its forward cannot take channels-last activations
    if engine in ("auto", "batched", "stacked"):
        assert util.engine_.name == "loop"
        assert util.engine_reason_.startswith("stacked: cannot stack QuickstartNet")
        assert "loop (channels-last): its forward fails under the loop engine" in util.engine_reason_
        assert "view" in util.engine_reason_
    elif engine == "loop":
        assert util.engine_.name == "loop" and util.engine_reason_.startswith("loop (channels-last):")
    else:
        assert util.engine_.name == engine and util.engine_reason_ == ""


def test_channels_last_asked_for_by_name_falls_back_on_the_quickstart_model(quickstart):
    model, x, y, flats, ref = quickstart
    util = ModelUtility(model, x, y, engine="loop", channels_last=True)
    assert util.engine_.name == "loop" and not util.channels_last_
    np.testing.assert_allclose(util(flats), ref["accuracy"], rtol=0, atol=1e-12)


def test_the_round_scorer_verifies_the_engine_when_it_is_built(quickstart):
    from fedattr.strategies.scoring import RoundScorer

    model, x, y, flats, ref = quickstart
    scorer = RoundScorer(model, x, y, [("shapley", {})])
    assert scorer.utility.engine_.name == "loop" and "view" in scorer.utility.engine_reason_
    game = RoundGame(scorer.utility, flats[0], flats[1:] - flats[0])
    naive = RoundGame(ModelUtility(model, x, y, engine="naive"), flats[0], flats[1:] - flats[0])
    np.testing.assert_array_equal(game.values(range(16)), naive.values(range(16)))


def test_layout_never_reaches_the_users_model():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x, y = _data((1, 28, 28), 10, n=12)
    util = ModelUtility(model, x, y, engine="loop")
    assert util.engine_.name == "loop" and util.channels_last_  # this forward accepts the layout
    assert all(not m._forward_hooks for m in model.modules())
    assert all(not m._forward_hooks for m in util.model_.modules())  # gradient evaluators' copy
    flats = _parameter_sets(model, k=3)
    np.testing.assert_allclose(util(flats), ModelUtility(model, x, y, engine="naive")(flats), rtol=0, atol=1e-12)


def test_an_engine_whose_logits_differ_is_passed_over_for_naive():
    torch.manual_seed(0)
    model = CapturedWeights().eval()
    x, y = _data((12,), 3)
    flats = _parameter_sets(model, k=4, scale=0.5)
    util = ModelUtility(model, x, y, engine="vmap")
    assert util.engine_.name == "naive"
    assert util.engine_reason_.startswith("vmap: the vmap engine's logits differ from the model's own forward by ")
    assert "; loop: the loop engine's logits differ" in util.engine_reason_
    np.testing.assert_allclose(util(flats), ModelUtility(model, x, y, engine="naive")(flats), rtol=0, atol=0)
    # without the check, the loop engine would have scored other models than the ones given
    from fedattr.evaluators.engines import LoopEngine

    data = ValidationData(x, y, F.one_hot(y, 3).float())
    loop = LoopEngine(model, StateLayout.from_module(model), data, batch=40)
    with torch.no_grad():
        loop_ce = -loop.statistics(flats, ("neg_ce",))["neg_ce"][:, 0].numpy() / 40
    naive_ce = ModelUtility(model, x, y, metric="neg_ce", engine="naive")(flats)
    assert np.abs(loop_ce - naive_ce).max() > 1e-3


def test_verify_engine_reports_errors_and_differences():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    layout = StateLayout.from_module(model)
    x, y = _data((12,), 3, n=4)
    data = ValidationData(x, y, F.one_hot(y, 3).float())
    reference = NaiveEngine(model, layout, data, 4, model.state_dict())
    flats = probe_parameter_sets(layout, model.state_dict(), torch.device("cpu"))
    assert flats.shape == (2, layout.size) and not torch.equal(flats[0], flats[1])

    class Off:
        name = "off"

        def __init__(self, delta=0.0, fail=False):
            self.delta, self.fail = delta, fail

        def forward(self, f, xb):
            if self.fail:
                raise RuntimeError("view size is not compatible with input tensor's size and stride\nmore")
            return reference.forward(f, xb) + self.delta

    assert verify_engine(Off(), reference, flats, x) == ""
    assert verify_engine(Off(delta=1e-7), reference, flats, x) == ""
    assert verify_engine(Off(delta=0.1), reference, flats, x) == \
        "the off engine's logits differ from the model's own forward by 0.1"
    assert verify_engine(Off(fail=True), reference, flats, x) == (
        "its forward fails under the off engine (RuntimeError: view size is not compatible with input "
        "tensor's size and stride)")
