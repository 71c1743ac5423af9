import pytest
import torch

from fedattr.core.errors import UserError
from fedattr.learning.models import MODELS, build_model, resolve_device
from fedattr.learning.training import evaluate, train_local


@pytest.mark.parametrize("name,channels,side", [("cnn", 1, 28), ("cnn", 3, 32), ("cnn", 1, 8), ("vgg11", 3, 32),
                                                ("resnet18", 3, 32), ("wrn16_4", 3, 32), ("mlp", 1, 28),
                                                ("mlp", 1, 8), ("resnet8", 1, 28), ("resnet8", 1, 8)])
def test_model_output_shapes(name, channels, side):
    model = build_model(name, 10, channels, side).eval()
    assert model(torch.rand(3, channels, side, side)).shape == (3, 10)


def test_registry_and_errors():
    assert set(MODELS) == {"mlp", "cnn", "resnet8", "vgg11", "resnet18", "wrn16_4"}
    with pytest.raises(UserError):
        build_model("alexnet")
    for name in ("cnn", "resnet8"):
        with pytest.raises(UserError, match="at least 4x4"):
            build_model(name, 10, 1, 3)
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(UserError):
            resolve_device("cuda")


def test_training_lowers_loss_and_is_deterministic(splits):
    x, y = splits.x_pool[:400], splits.y_pool[:400]
    torch.manual_seed(0)
    model = build_model("cnn")
    init = {k: v.clone() for k, v in model.state_dict().items()}
    before = evaluate(model, x, y)["loss"]
    train_local(model, x, y, epochs=3, batch_size=32, lr=0.05, seed=1)
    after = evaluate(model, x, y)["loss"]
    assert after < before - 0.3
    again = build_model("cnn")
    again.load_state_dict(init)
    train_local(again, x, y, epochs=3, batch_size=32, lr=0.05, seed=1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_batchnorm_model_trains_on_odd_batch():
    model = build_model("vgg11", 10, 3, 32)
    x, y = torch.rand(33, 3, 32, 32), torch.randint(0, 10, (33,))
    out = train_local(model, x, y, epochs=1, batch_size=16, lr=0.01, seed=0)
    assert out["steps"] == 2  # the single-example last batch is skipped for BatchNorm


def _trained(x, y, init, **kw):
    model = build_model("cnn")
    model.load_state_dict(init)
    out = train_local(model, x, y, epochs=2, batch_size=32, lr=0.05, seed=5, trace=True, **kw)
    return model.state_dict(), out


def test_empty_extras_equal_the_plain_run_bit_for_bit(splits):
    x, y = splits.x_pool[:150], splits.y_pool[:150]
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in build_model("cnn").state_dict().items()}
    plain, a = _trained(x, y, init)
    empty, b = _trained(x, y, init, extra_x=x[:0], extra_y=y[:0])
    assert a["steps"] == b["steps"] == 10 and a["loss"] == b["loss"]
    for k, v in plain.items():
        assert torch.equal(v, empty[k]), k
    assert torch.equal(a["real_order"], b["real_order"]) and b["extra_per_step"] == [0] * 10


def test_extras_ride_along_without_changing_the_real_minibatches(splits):
    x, y = splits.x_pool[:150], splits.y_pool[:150]
    ex, ey = splits.x_aux[:23], splits.y_aux[:23]
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in build_model("cnn").state_dict().items()}
    plain, a = _trained(x, y, init)
    attacked, b = _trained(x, y, init, extra_x=ex, extra_y=ey)
    # Same real samples in the same order, same number of steps; only the extras differ.
    assert torch.equal(a["real_order"], b["real_order"])
    assert sorted(a["real_order"][:150].tolist()) == list(range(150))
    assert a["steps"] == b["steps"] == 10
    # 23 extras over 5 steps per epoch: chunks of 5 or 4, every extra once per epoch.
    per_epoch = b["extra_per_step"][:5]
    assert sum(per_epoch) == 23 and max(per_epoch) - min(per_epoch) <= 1
    assert b["extra_per_step"][5:] == per_epoch
    assert any(not torch.equal(v, attacked[k]) for k, v in plain.items())


def test_extras_keep_batchnorm_skip_and_step_count():
    model = build_model("vgg11", 10, 3, 32)
    x, y = torch.rand(33, 3, 32, 32), torch.randint(0, 10, (33,))
    out = train_local(model, x, y, epochs=1, batch_size=16, lr=0.01, seed=0,
                      extra_x=torch.rand(5, 3, 32, 32), extra_y=torch.randint(0, 10, (5,)), trace=True)
    assert out["steps"] == 2 and sum(out["extra_per_step"]) == 5  # the skipped step gets no extras
    assert len(out["real_order"]) == 32
