import pytest
import torch

from fedattr.errors import UserError
from fedattr.models import MODELS, build_model, resolve_device
from fedattr.training import evaluate, train_local


@pytest.mark.parametrize("name,channels,side", [("cnn", 1, 28), ("cnn", 3, 32), ("vgg11", 3, 32),
                                                ("resnet18", 3, 32), ("wrn16_4", 3, 32)])
def test_model_output_shapes(name, channels, side):
    model = build_model(name, 10, channels, side).eval()
    assert model(torch.rand(3, channels, side, side)).shape == (3, 10)


def test_registry_and_errors():
    assert set(MODELS) == {"cnn", "vgg11", "resnet18", "wrn16_4"}
    with pytest.raises(UserError):
        build_model("alexnet")
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
