"""The grey-image model families (mlp, cnn, resnet8) at 28x28 and 8x8: shapes, a training step,
state-dict round trips and the round game's engine choice on each."""

import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedattr.evaluators import ExactShapley, LeaveOneOut, ModelUtility, RoundGame
from fedattr.learning.models import MLP, MODELS, ResNet8, SmallCNN, build_model
from fedattr.learning.training import train_local


# These small models run faster on one thread than on two contended ones (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


FAMILIES = ["mlp", "cnn", "resnet8"]
SIDES = [28, 8]


def _batch(side: int, n: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, side, side, generator=gen), torch.randint(0, 10, (n,), generator=gen)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", FAMILIES)
def test_registered_with_logits_for_grey_images(name, side):
    assert MODELS[name] is {"mlp": MLP, "cnn": SmallCNN, "resnet8": ResNet8}[name]
    model = build_model(name, 10, 1, side).eval()
    x, _ = _batch(side, 5)
    out = model(x)
    assert out.shape == (5, 10) and torch.isfinite(out).all()
    assert build_model(name, 7, 1, side).eval()(x).shape == (5, 7)


def test_cnn_at_28x28_keeps_its_architecture():
    # 5x5 convolutions without padding at 28x28 (16*1*25+16 + 32*16*25+32 + 512*64+64 + 64*10+10).
    model = build_model("cnn", 10, 1, 28)
    assert sum(p.numel() for p in model.parameters()) == 46730
    assert model.features[1].kernel_size == (5, 5) and model.features[1].padding == (0, 0)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", FAMILIES)
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(name, side):
    torch.manual_seed(0)
    model = build_model(name, 10, 1, side)
    x, y = _batch(side)
    model.train()  # BatchNorm on batch statistics, as in the step itself
    with torch.no_grad():
        before = float(F.cross_entropy(model(x), y))
    out = train_local(model, x, y, epochs=1, batch_size=len(y), lr=0.05, seed=0)
    assert out["steps"] == 1 and out["loss"] == pytest.approx(before, rel=1e-5)
    model.train()
    with torch.no_grad():
        after = float(F.cross_entropy(model(x), y))
    assert after < before


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", FAMILIES)
def test_state_dict_round_trip_reproduces_the_model(name, side):
    torch.manual_seed(1)
    source = build_model(name, 10, 1, side)
    x, y = _batch(side, 32)
    train_local(source, x, y, epochs=1, batch_size=8, lr=0.05, seed=0)  # BatchNorm statistics move
    buf = io.BytesIO()
    torch.save(source.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(2)
    target = build_model(name, 10, 1, side)
    assert any(not torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())
    target.load_state_dict(torch.load(buf, weights_only=True))
    for k, v in source.state_dict().items():
        assert torch.equal(v, target.state_dict()[k]), k
    with torch.no_grad():
        assert torch.equal(source.eval()(x), target.eval()(x))


def _round_game_values(model, clients, weights, x_val, y_val, engine):
    utility = ModelUtility(model, x_val, y_val, metric="neg_ce", engine=engine)
    game = RoundGame.from_state_dicts(utility, model.state_dict(), clients, weights=weights)
    return utility, ExactShapley().fit(game).values_, LeaveOneOut().fit(game).values_, game.values(range(1 << 4))


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", FAMILIES)
def test_auto_engine_gives_the_naive_values_on_a_round_game(name, side):
    torch.manual_seed(3)
    model = build_model(name, 10, 1, side)
    clients = []
    for c in range(4):
        local = copy.deepcopy(model)
        x, y = _batch(side, 40, seed=10 + c)
        train_local(local, x, y, epochs=1, batch_size=10, lr=0.05, seed=c)
        clients.append(local.state_dict())
    x_val, y_val = _batch(side, 60, seed=99)
    weights = [40, 10, 25, 5]
    auto, shap_a, loo_a, v_a = _round_game_values(model, clients, weights, x_val, y_val, "auto")
    naive, shap_n, loo_n, v_n = _round_game_values(model, clients, weights, x_val, y_val, "naive")
    # Sequential networks are stacked; ResNet-8's residual blocks are not a plain sequence.
    assert auto.engine_.name == ("loop" if name == "resnet8" else "stacked"), auto.engine_reason_
    assert naive.engine_.name == "naive"
    assert np.ptp(v_n) > 1e-3  # the coalitions differ, so the comparison means something
    np.testing.assert_allclose(v_a, v_n, rtol=0, atol=1e-4)
    np.testing.assert_allclose(shap_a, shap_n, rtol=0, atol=1e-4)
    np.testing.assert_allclose(loo_a, loo_n, rtol=0, atol=1e-4)
