"""The adaptive attacker latent_mixed: real public images of the targets replace a share of its synthetic batch."""

import pytest
import torch

from fedattr.attacks import AttackContext, make_attack, run_attacker_round
from fedattr.attacks.adaptive import split_labels
from fedattr.core.errors import UserError
from fedattr.learning.data import load_splits
from fedattr.learning.models import build_model
from fedattr.learning.training import train_local

FAST = {"generator_epochs": 2, "teacher_epochs": 2, "steps": 4, "candidates": 2, "num_target_classes": 2,
        "coverage": "oracle"}


@pytest.fixture(scope="module")
def world():
    splits = load_splits("mnist5k", None, 1000, 1000, 500)
    keep = (splits.y_pool < 8).nonzero().flatten()
    torch.manual_seed(0)
    model = build_model("cnn", 10, 1, 28)
    train_local(model, splits.x_pool[keep[200:800]], splits.y_pool[keep[200:800]], epochs=1, lr=0.05, seed=0)
    return splits, (splits.x_pool[keep[:120]], splits.y_pool[keep[:120]]), model.eval()


def _ctx(world, tmp_path):
    splits, local, model = world
    return AttackContext(global_model=model, x_local=local[0], y_local=local[1], x_aux=splits.x_aux,
                         y_aux=splits.y_aux, num_classes=10, channels=1, side=28, server_round=3, seed=11,
                         train={"epochs": 1, "batch_size": 32, "lr": 0.05},
                         benign_histograms={1: [50] * 8 + [0, 0]}, cache_dir=tmp_path, state={}, run_seed=0)


def _is_aux_row(x, aux):
    return bool((aux.flatten(1) == x.flatten()).all(1).any())


def test_split_labels_keeps_each_class_share():
    real, synth = split_labels(torch.tensor([8, 9, 8, 9, 8, 9, 8, 9]), 0.5)
    assert real.tolist() == [8, 9, 8, 9] and synth.tolist() == [8, 9, 8, 9]  # batch order kept
    real, synth = split_labels(torch.tensor([8, 8, 8, 9]), 0.34)  # round(1.02) of the 8s, round(0.34) of the 9
    assert real.tolist() == [8] and sorted(synth.tolist()) == [8, 8, 9]
    assert len(split_labels(torch.tensor([8, 9]), 0.0)[0]) == 0 and len(split_labels(torch.tensor([8, 9]), 1.0)[1]) == 0


@pytest.mark.slow  # trains a VAE, a teacher and the latent optimiser (about a minute on 2 cores)
def test_mixed_batch_holds_the_real_share_of_aux_images(world, tmp_path):
    splits = world[0]
    r = run_attacker_round(make_attack("latent_mixed", real_share=0.5, **FAST), ctx := _ctx(world, tmp_path))
    batch = ctx.state["latent_mixed/batch"]["batch"]
    assert len(batch.y) == 30 and sorted(set(batch.y.tolist())) == [8, 9]  # 25% of 120, the oracle targets
    real = [_is_aux_row(x, splits.x_aux) for x in batch.x]
    # 15 labels of each class, round(0.5 * 15) = 8 of each real, placed first
    assert sum(real) == 16 and all(real[:16]) and not any(real[16:])
    assert batch.diagnostics["real_count"] == 16.0 and r.metrics["synthetic_count"] == 30


def test_all_real_is_the_targeted_real_control(world, tmp_path):
    mixed = make_attack("latent_mixed", real_share=1.0, **FAST)
    ctx = _ctx(world, tmp_path)
    run_attacker_round(mixed, ctx)
    assert "generator_cached" not in ctx.metrics  # no synthetic image: the generator is never built
    ref = make_attack("targeted_real", num_target_classes=2, coverage="oracle")
    ctx2 = _ctx(world, tmp_path)
    run_attacker_round(ref, ctx2)
    a, b = ctx.state["latent_mixed/batch"]["batch"], ctx2.state["targeted_real/batch"]["batch"]
    assert torch.equal(a.y.sort().values, b.y.sort().values)
    assert all(_is_aux_row(x, world[0].x_aux) for x in a.x)


def test_bad_real_share_is_a_user_error():
    with pytest.raises(UserError, match="real_share"):
        make_attack("latent_mixed", real_share=1.5)
