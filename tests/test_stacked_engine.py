"""The stacked coalition engine: K models as one network, checked against the naive reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedattr.evaluators import ModelUtility, RoundGame, StateLayout
from fedattr.evaluators.stacked import StackedNet, stacking_plan
from fedattr.learning.models import VGG11, SmallCNN, resnet18


class StridedNet(nn.Module):
    """Padding, stride, a non-square input, BatchNorm2d/1d, average pooling and dropout."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.MaxPool2d(2, stride=1),
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * 1 * 2, 12), nn.BatchNorm1d(12), nn.ReLU(),
            nn.Linear(12, 5),
        )

    def forward(self, x):
        return self.body(x)


class FunctionalNet(nn.Module):
    """Same layers as a sequence, but the forward adds a skip: must not be stacked."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 20)
        self.fc2 = nn.Linear(20, 4)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)) + x)


def _perturbed(model, k, scale=0.05, seed=0):
    """k parameter sets around ``model``'s state, with valid BatchNorm variances."""
    layout = StateLayout.from_module(model)
    base = layout.flatten(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    flats = base[None] + scale * torch.randn(k, layout.size, generator=gen)
    for e in layout.entries:
        if e.name.endswith("running_var"):
            flats[:, e.offset:e.offset + e.numel] = flats[:, e.offset:e.offset + e.numel].abs() + 0.5
    return layout, flats


CASES = {
    "small_cnn": (lambda: SmallCNN(), (1, 28, 28), 10),
    "vgg11": (lambda: VGG11(width=0.125), (3, 32, 32), 10),
    "strided": (lambda: StridedNet(), (3, 9, 11), 5),
    # odd first-layer output (10 x 9): the fused pool drops the last row and column, as torch does
    "odd_pool": (lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 3, 2),
                                       nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 3, 4)), (1, 12, 11), 4),
    "mlp": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                  nn.Linear(16, 3)), (3, 4), 3),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_stacked_engine_equals_naive_on_every_metric(case):
    make, shape, classes = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(37, *shape, generator=gen)
    y = torch.randint(0, classes, (37,), generator=gen)
    layout, flats = _perturbed(model, 11)
    # 11 parameter sets in stacks of 4, 37 images in batches of 10 and first-layer tiles of 3:
    # every remainder path runs.
    stacked = ModelUtility(model, x, y, engine="stacked", stack_size=4, batch_size=10, sub_batch=3)
    naive = ModelUtility(model, x, y, engine="naive")
    assert stacked.engine_.name == "stacked" and stacked.max_coalitions_per_call_ == 4
    got, ref = stacked.evaluate_all(flats), naive.evaluate_all(flats)
    for metric in ref:
        np.testing.assert_allclose(got[metric], ref[metric], rtol=0, atol=1e-5, err_msg=metric)
    # a second call reuses the cached input patches and buffers
    np.testing.assert_allclose(stacked.evaluate_all(flats)["neg_ce"], ref["neg_ce"], rtol=0, atol=1e-5)
    logits = stacked.logits(flats)
    with torch.no_grad():
        expected = torch.stack([functional_call(model, layout.unflatten(f), (x,)) for f in flats])
    assert logits.shape == expected.shape
    assert float((logits - expected).abs().max()) < 1e-4


def test_auto_stacks_the_model_zoo_cnn_on_cpu():
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    util = ModelUtility(SmallCNN(), x, y)
    assert util.engine_.name == "stacked" and util.engine_reason_ == ""


@pytest.mark.parametrize("make,shape", [(FunctionalNet, (20,)), (lambda: resnet18(num_classes=4), (3, 8, 8))])
def test_auto_falls_back_to_loop_when_the_forward_is_not_a_sequence(make, shape):
    torch.manual_seed(0)
    model = make().eval()
    x, y = torch.rand(6, *shape), torch.randint(0, 4, (6,))
    util = ModelUtility(model, x, y)
    assert util.engine_.name == "loop" and util.engine_reason_.startswith("stacked: ")
    # asked for by name, the stacked engine is passed over the same way, and says why
    named = ModelUtility(model, x, y, engine="stacked")
    assert named.engine_.name == "loop" and named.engine_reason_ == util.engine_reason_
    # the fallback still evaluates correctly
    layout, flats = _perturbed(model, 3)
    np.testing.assert_allclose(util(flats), ModelUtility(model, x, y, engine="naive")(flats), atol=1e-6)


def test_plan_names_the_layer_it_cannot_stack():
    steps, reason = stacking_plan(nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)))
    assert steps is None and "GELU" in reason
    with pytest.raises(ValueError, match="GELU"):
        StackedNet(nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)))
    steps, reason = stacking_plan(SmallCNN())
    assert reason == "" and [s.kind for s in steps][:3] == ["prefix", "conv_first", "relu"]


def test_round_game_on_the_stacked_engine_matches_the_loop_engine():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(60, 1, 28, 28, generator=gen), torch.randint(0, 10, (60,), generator=gen)
    layout, flats = _perturbed(model, 5, scale=0.1)
    base, updates = flats[0], flats[1:] - flats[0]
    values = {}
    for engine in ("stacked", "loop"):
        util = ModelUtility(model, x, y, metric="neg_ce", engine=engine, stack_size=6)
        values[engine] = RoundGame(util, base, updates, weights=[1, 2, 3, 4]).values(range(16))
    np.testing.assert_allclose(values["stacked"], values["loop"], rtol=0, atol=1e-5)


def test_auto_leaves_large_networks_to_the_loop():
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    util = ModelUtility(VGG11(width=0.25), x, y)  # ~20 MFLOP per example
    assert util.engine_.name == "stacked"
    util = ModelUtility(VGG11(width=0.25), x, y, stack_max_flops=1e6)
    assert util.engine_.name == "loop" and "MFLOP per example" in util.engine_reason_
    assert ModelUtility(VGG11(width=0.25), x, y, engine="stacked", stack_max_flops=1e6).engine_.name == "stacked"
