"""GPU check: coalition evaluation speed and the surrogate on one device, in fp32, tf32 and bf16.

Run ``python -m benchmarks.gpu_check`` (cuda when visible, else cpu) or through
``benchmarks/gpu_check.sh``. For the small CNN (mnist5k) and VGG-11 (random 32x32 images; no
download needed) it prints, per precision:

- coalition evaluation: all 2^n coalitions of a real round through ``ModelUtility`` (engine
  ``auto``: vmap on cuda), seconds, GFLOP/s and percent of the measured matmul rate of that
  precision, max |difference| to fp32;
- whether exact Shapley under that precision ranks the clients as fp32 does (Kendall tau);
- the surrogate: seconds for its Taylor terms, and its relative L1 error to exact Shapley
  (neg_ce), for the small CNN; the logit surrogate (anchors both and loo) enumerated and
  sampled with the cyclic design, seconds and error to exact Shapley;
- the logit surrogate's sampled Shapley values at 100 and 500 players (synthetic logits): the
  baseline walk against the class-major walk with the cyclic design, and the difference to the
  CPU's values.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.evaluators import model_flops, rel_l1  # noqa: E402
from fedattr.evaluators import ModelUtility, RoundGame, make_evaluator, semivalue_from_table, shapley_weights  # noqa: E402
from fedattr.learning.models import build_model  # noqa: E402
from fedattr.learning.training import train_local  # noqa: E402

PRECISIONS = ("fp32", "tf32", "bf16")


@contextlib.contextmanager
def precision(mode: str, device: torch.device):
    """fp32: no tensor-float matmuls; tf32: TF32 matmuls and convolutions; bf16: autocast."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    try:
        if mode == "bf16":
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def matmul_rate(device, mode, size=None, reps=None):
    size = size or (4096 if device.type == "cuda" else 1024)
    reps = reps or (10 if device.type == "cuda" else 3)
    with precision(mode, device):
        a = torch.randn(size, size, device=device)
        b = torch.randn(size, size, device=device)
        a @ b
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - t) / 1e9


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def kendall_tau(a, b):
    """Kendall's tau over the pairs that neither ranking ties (1 = same order)."""
    n = len(a)
    s = pairs = 0
    for i in range(n):
        for j in range(i + 1, n):
            d = np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
            if d != 0:
                s += d
                pairs += 1
    return s / pairs if pairs else 1.0


def make_round(name, n, n_val, device, seed=0):
    """A trained-for-one-round model, its clients' states and a validation set."""
    g = torch.Generator().manual_seed(seed)
    if name == "cnn":
        from fedattr.learning.data import load_splits

        s = load_splits("mnist5k", val_size=n_val, test_size=500, aux_size=100, split_seed=seed)
        x_val, y_val, x_tr, y_tr = s.x_val, s.y_val, s.x_pool, s.y_pool
        model = build_model("cnn")
    else:
        x_val, y_val = torch.rand(n_val, 3, 32, 32, generator=g), torch.randint(0, 10, (n_val,), generator=g)
        x_tr, y_tr = torch.rand(64 * n, 3, 32, 32, generator=g), torch.randint(0, 10, (64 * n,), generator=g)
        model = build_model("vgg11", in_channels=3, side=32)
    torch.manual_seed(seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    per = len(y_tr) // n
    states, weights = [], []
    for i in range(n):
        local = build_model("cnn") if name == "cnn" else build_model("vgg11", in_channels=3, side=32)
        local.load_state_dict(state)
        xi, yi = x_tr[i * per:(i + 1) * per][: 64], y_tr[i * per:(i + 1) * per][: 64]
        train_local(local, xi, yi, epochs=1, batch_size=32, lr=0.05, seed=i, device=device)
        states.append({k: v.cpu() for k, v in local.state_dict().items()})
        weights.append(len(yi))
    model.load_state_dict(state)
    return model, state, states, weights, x_val, y_val


def check_model(name, n, n_val, device, modes):
    model, state, states, weights, x_val, y_val = make_round(name, n, n_val, device)
    flops = model_flops(model.eval(), x_val[:8]) / 8 * len(y_val)
    masks = list(range(1 << n))
    ref = None
    print(f"\n## {name}: {n} clients, {len(y_val)} validation images, {flops / 1e9:.2f} GFLOP per coalition, "
          f"{len(masks)} coalitions")
    print(f"{'precision':<10}{'seconds':>9}{'GFLOP/s':>10}{'matmul':>10}{'% peak':>8}{'max|diff|':>11}{'tau':>7}")
    for mode in modes:
        util = ModelUtility(model, x_val, y_val, metric="accuracy", device=device)
        game = RoundGame.from_state_dicts(util, state, states, weights=weights)
        with precision(mode, device):
            game.values(masks[:4])  # warm-up: kernels, allocator
            game = RoundGame.from_state_dicts(util, state, states, weights=weights)
            _sync(device)
            t = time.perf_counter()
            v = game.values(masks)
            _sync(device)
            sec = time.perf_counter() - t
        peak = matmul_rate(device, mode)
        phi = semivalue_from_table(v, shapley_weights(n))
        if ref is None:
            ref = (v, phi)
        rate = flops * len(masks) / sec / 1e9
        print(f"{mode:<10}{sec:>9.2f}{rate:>10.2f}{peak:>10.1f}{100 * rate / peak:>7.1f}%"
              f"{np.abs(v - ref[0]).max():>11.1e}{kendall_tau(phi, ref[1]):>7.2f}", flush=True)
    return model, state, states, weights, x_val, y_val


def check_surrogate(model, state, states, weights, x_val, y_val, device, modes):
    n = len(states)
    print(f"\n## surrogate (neg_ce) on the cnn round, {n} clients")
    print(f"{'precision':<10}{'taylor s':>9}{'rel L1 vs exact':>17}{'tau':>7}")
    util = ModelUtility(model, x_val, y_val, metric="neg_ce", device=device)
    game = RoundGame.from_state_dicts(util, state, states, weights=weights)
    exact = semivalue_from_table(game.values(range(1 << n)), shapley_weights(n))
    for mode in modes:
        g = RoundGame.from_state_dicts(util, state, states, weights=weights)
        g.cache.prefill(game.cache.items())
        with precision(mode, device):
            ev = make_evaluator("surrogate_shapley").fit(g)
        print(f"{mode:<10}{ev.taylor_seconds_:>9.2f}{100 * rel_l1(ev.values_, exact):>16.1f}%"
              f"{kendall_tau(ev.values_, exact):>7.2f}", flush=True)
    print(f"\n## logit surrogate (neg_ce, fp32) on the cnn round, {n} clients: enumerated and sampled (cyclic design)")
    print(f"{'anchor':<8}{'max exact':>10}{'seconds':>9}{'rel L1 vs exact':>17}{'tau':>7}")
    for anchor in ("both", "loo"):
        for max_exact in (20, 0):
            g = RoundGame.from_state_dicts(util, state, states, weights=weights)
            g.cache.prefill(game.cache.items())
            ev = make_evaluator("logit_surrogate_shapley", anchor=anchor, max_exact_players=max_exact).fit(g, seed=0)
            print(f"{anchor:<8}{max_exact:>10}{ev.seconds_:>9.2f}{100 * rel_l1(ev.values_, exact):>16.1f}%"
                  f"{kendall_tau(ev.values_, exact):>7.2f}", flush=True)


def check_logit_sampling(device, sizes, n_val, n_permutations=1000):
    """The logit surrogate's sampled Shapley values at ``sizes`` players on ``device`` (synthetic
    logits, 10 classes): the baseline walk against the class-major walk with the cyclic design,
    and the largest difference of the latter to the same computation on the CPU."""
    from benchmarks.scaling import baseline_shapley, synthetic_surrogate

    print(f"\n## logit surrogate Shapley, sampled ({n_permutations} permutations, anchor both, neg_ce, "
          f"{n_val} synthetic validation logits)")
    print(f"{'n':>5}{'old s':>9}{'new s':>9}{'old/new':>9}{'max|new - cpu|':>16}")
    for n in sizes:
        game = synthetic_surrogate(n, n_val, device=device)
        game.shapley(0, 2 * n, 0)  # warm-up: kernels, allocator
        _sync(device)
        t = time.perf_counter()
        baseline_shapley(game, n_permutations, 0)
        _sync(device)
        old_s = time.perf_counter() - t
        t = time.perf_counter()
        new, _ = game.shapley(0, n_permutations, 0)
        _sync(device)
        new_s = time.perf_counter() - t
        cpu, _ = synthetic_surrogate(n, n_val).shapley(0, n_permutations, 0)
        print(f"{n:>5}{old_s:>9.2f}{new_s:>9.2f}{old_s / new_s:>8.1f}x{np.abs(new - cpu).max():>16.1e}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of the script on CPU)")
    ap.add_argument("--n", type=int, default=None, help="clients (default 10; quick 3)")
    ap.add_argument("--n-val", type=int, default=None, help="validation images (default 1000; quick 32)")
    ap.add_argument("--models", nargs="+", default=None, choices=["cnn", "vgg11"],
                    help="default cnn vgg11; quick cnn")
    ap.add_argument("--logit-sizes", type=int, nargs="*", default=None,
                    help="players for the sampled logit-surrogate check (default 100 500; quick 30)")
    ap.add_argument("--precisions", nargs="+", default=None, choices=PRECISIONS,
                    help="default fp32 tf32 bf16 on cuda, fp32 bf16 on cpu")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    n = args.n or (3 if args.quick else 10)
    n_val = args.n_val or (32 if args.quick else 1000)
    modes = args.precisions or (list(PRECISIONS) if device.type == "cuda" else ["fp32"] if args.quick else ["fp32", "bf16"])
    models = args.models or (["cnn"] if args.quick else ["cnn", "vgg11"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"# fedattr GPU check: torch {torch.__version__}, device {name}")
    t0 = time.perf_counter()
    for m in models:
        out = check_model(m, n, n_val, device, modes)
        if m == "cnn":
            check_surrogate(*out, device, modes)
    logit_sizes = args.logit_sizes if args.logit_sizes is not None else ([30] if args.quick else [100, 500])
    if logit_sizes:
        check_logit_sampling(device, logit_sizes, 100 if args.quick else 500)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
