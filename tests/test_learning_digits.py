"""The digits dataset through the learning stack: the 8x8 generator, training every grey model
family, and the latent attack's round on 8x8 images."""

import pytest
import torch

from fedattr.attacks import AttackContext, make_attack, run_attacker_round, train_generator
from fedattr.learning.data import client_partition, load_splits
from fedattr.learning.models import build_model
from fedattr.learning.training import evaluate, train_local



# These small models run faster on one thread than on two contended ones (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def digits():
    return load_splits("digits")


def test_the_vae_sizes_itself_to_8x8_and_learns_digits(digits, tmp_path):
    vae, info = train_generator(digits.x_aux, channels=1, side=8, epochs=40, seed=0, cache_dir=tmp_path)
    assert vae.base == 2 and vae.latent_dim == 16  # 8 -> 4 -> 2, grey images' latent size
    recon = info["recon_losses"]
    assert recon[-1] < 0.75 * recon[0]
    with torch.no_grad():
        out = vae.decode(torch.randn(5, vae.latent_dim))
        rebuilt = vae.decode(vae.encode(digits.x_val[:100])[0])
    assert out.shape == (5, 1, 8, 8) and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    # Reconstructions of unseen digits are closer to their own image than to another one.
    own = (rebuilt - digits.x_val[:100]).pow(2).mean()
    other = (rebuilt - digits.x_val[:100].roll(1, 0)).pow(2).mean()
    assert own < 0.6 * other
    again, cached = train_generator(digits.x_aux, channels=1, side=8, epochs=40, seed=0, cache_dir=tmp_path)
    assert cached["cached"] and all(torch.equal(v, again.state_dict()[k]) for k, v in vae.state_dict().items())


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet8"])
def test_every_grey_family_learns_digits(digits, name):
    torch.manual_seed(0)
    model = build_model(name, digits.num_classes, digits.channels, digits.side)
    before = evaluate(model, digits.x_test, digits.y_test)["accuracy"]
    train_local(model, digits.x_pool, digits.y_pool, epochs=8, batch_size=32, lr=0.05, seed=0)
    after = evaluate(model, digits.x_test, digits.y_test)["accuracy"]
    assert after > 0.8 and after > before + 0.5


def test_latent_attack_round_on_digits(digits, tmp_path):
    x, y = client_partition(digits, 0, "dirichlet", 8, alpha=0.5, seed=0, withhold=(8, 9), attacker_ids=(0,))
    assert not torch.isin(y, torch.tensor([8, 9])).any()
    torch.manual_seed(0)
    model = build_model("cnn", 10, 1, 8)
    keep = (digits.y_pool < 8).nonzero().flatten()
    train_local(model, digits.x_pool[keep], digits.y_pool[keep], epochs=3, lr=0.05, seed=0)
    ctx = AttackContext(global_model=model.eval(), x_local=x, y_local=y, x_aux=digits.x_aux, y_aux=digits.y_aux,
                        num_classes=10, channels=1, side=8, server_round=2, seed=3,
                        train={"epochs": 1, "batch_size": 32, "lr": 0.05}, cache_dir=tmp_path, run_seed=0)
    attack = make_attack("latent", generator_epochs=10, teacher_epochs=4, steps=8, candidates=4,
                         num_target_classes=2)
    r = run_attacker_round(attack, ctx)
    assert sorted(r.info["target_classes"]) == [8, 9]  # the classes the global model never saw
    assert r.metrics["synthetic_count"] == round(0.25 * len(y)) and r.num_examples == len(y)
    assert {k: v.shape for k, v in r.state_dict.items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert any(not torch.equal(r.state_dict[k], r.honest_state_dict[k]) for k in r.state_dict)
