"""Coalition engine: FLOP rate against the machine's matmul peak, engine by engine, in one run.

    python -m benchmarks.engine                 # small CNN and VGG-11, then a Flower run
    python -m benchmarks.engine --no-flower     # standalone only
    python -m benchmarks.engine --quick         # fewer models and images (a smoke test)

Per model (the model zoo's small CNN on 500 mnist5k validation images; VGG-11 on 100 random
32x32 images), the same coalition models of one FedAvg round (base + c(S) . updates, every
coalition of n clients) are evaluated by the ``naive`` reference (``load_state_dict`` + forward),
the ``loop`` engine (``functional_call`` per model) and the ``stacked`` engine (K models as one
network), interleaved chunk by chunk so that load from other processes hits all alike. Printed:
seconds, model evaluations per second, achieved GFLOP/s (FLOPs of one forward counted by
``torch.utils.flop_counter`` x models / seconds inside the utility), the share of the float32
matmul peak (2048 x 2048 products, measured before and after each model; the best measurement
of the run is used, since load from other processes only lowers one) and the largest difference
of any utility from the naive reference.

The Flower part runs ``scenarios/engine_flower.toml`` (8 clients, 2 rounds, exact Shapley, the
same small CNN and validation size) with ``fedattr run`` and reads the coalition engine's work
per round from the round records (``timings.utility``: models and seconds inside the utility);
its GFLOP/s is printed next to the standalone ``stacked`` figure with their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.evaluators import matmul_gflops, model_flops
from fedattr.evaluators import ModelUtility, RoundGame, StateLayout
from fedattr.launch.processes import FLWR_ENV
from fedattr.learning.models import VGG11, SmallCNN

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("naive", "loop", "stacked")


def flops_per_image(model: torch.nn.Module, x: torch.Tensor) -> float:
    return float(model_flops(model.eval(), x[:1]))


def mnist_validation(n: int):
    from fedattr.learning.data import load_splits

    splits = load_splits("mnist5k", val_size=n)
    return splits.x_val, splits.y_val


def round_updates(model, n_clients: int, scale: float, seed: int):
    """A FedAvg round's base state and n client updates (random directions of the given scale;
    BatchNorm variances kept positive)."""
    layout = StateLayout.from_module(model)
    base = layout.flatten(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    updates = scale * base.abs().mean() * torch.randn(n_clients, layout.size, generator=gen)
    for e in layout.entries:
        if e.name.endswith("running_var") or e.name.endswith("num_batches_tracked"):
            updates[:, e.offset:e.offset + e.numel] = 0.0
    return base, updates, [float(w) for w in torch.randint(20, 200, (n_clients,), generator=gen)]


def compare_engines(name, model, x, y, n_clients, chunks, peak_fn, seed=0):
    """Every engine on the same 2^n coalition models, interleaved chunk by chunk; returns the
    rows and the matmul peaks measured before and after."""
    base, updates, weights = round_updates(model, n_clients, 0.05, seed)
    utils = {e: ModelUtility(model, x, y, metric="neg_ce", engine=e) for e in ENGINES}
    masks = list(range(1 << n_clients))
    for u in utils.values():  # warm-up: kernels, allocator, cached input patches
        RoundGame(u, base, updates, weights=weights).values(masks[:4])
        u.seconds_, u.n_models_ = 0.0, 0
    games = {e: RoundGame(u, base, updates, weights=weights) for e, u in utils.items()}
    step = max(1, len(masks) // chunks)
    values = {e: [] for e in ENGINES}
    peaks = [peak_fn()]
    for s in range(0, len(masks), step):
        for e in ENGINES:
            values[e].append(games[e].values(masks[s:s + step]))
    peaks.append(peak_fn())
    per_model = flops_per_image(model, x) * utils["naive"].n_val_
    ref = np.concatenate(values["naive"])
    rows = []
    for e in ENGINES:
        u = utils[e]
        gflops = per_model * u.n_models_ / u.seconds_ / 1e9
        rows.append({
            "model": name, "engine": u.engine_.name, "models": u.n_models_, "seconds": u.seconds_,
            "models_per_s": u.n_models_ / u.seconds_, "gflops": gflops,
            "max_abs_diff": float(np.abs(np.concatenate(values[e]) - ref).max()),
            "n_val": u.n_val_, "params": u.layout.size, "gflop_per_model": per_model / 1e9,
            "stack_size": u.max_coalitions_per_call_ if e == "stacked" else 1,
        })
    return rows, peaks


def flower_figure(n_val: int, out: Path) -> dict:
    """Run the Flower scenario and read the coalition engine's work from its round records."""
    env = {**os.environ, **FLWR_ENV}
    env.setdefault("FLWR_HOME", str(ROOT / ".flwr_home"))
    cmd = [sys.executable, "-m", "fedattr.cli.app", "run", str(ROOT / "scenarios" / "engine_flower.toml"),
           "--out", str(out), "--no-report", "--set", f"data.val_size={n_val}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"Flower run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    models = seconds = 0.0
    engines = set()
    for path in sorted(out.glob("jobs/*/rounds.jsonl")):
        for line in path.read_text().splitlines():
            util = json.loads(line).get("timings", {}).get("utility") or {}
            models += util.get("models", 0)
            seconds += util.get("seconds", 0.0)
            engines.add(util.get("engine"))
    if not models:
        raise SystemExit(f"no coalition timings in the round records under {out}")
    return {"models": int(models), "seconds": seconds, "engine": ",".join(sorted(map(str, engines))),
            "wall_s": wall}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n = 5 clients, 50 images (smoke test)")
    ap.add_argument("--no-flower", action="store_true", help="skip the Flower run")
    ap.add_argument("--no-vgg", action="store_true", help="skip VGG-11")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=str, default=None, help="write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    n_val_cnn = 50 if args.quick else 500
    n_clients = 5 if args.quick else 8
    print(f"# coalition engine benchmark  torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs")
    x, y = mnist_validation(n_val_cnn)
    peak_fn = (lambda: matmul_gflops(512, 3)) if args.quick else matmul_gflops
    rows, peaks = [], []
    cnn_rows, p = compare_engines("small_cnn", SmallCNN(), x, y, n_clients, 4, peak_fn)
    rows += cnn_rows
    peaks += p
    if not args.no_vgg:
        gen = torch.Generator().manual_seed(0)
        n_vgg = 20 if args.quick else 100
        xv, yv = torch.rand(n_vgg, 3, 32, 32, generator=gen), torch.randint(0, 10, (n_vgg,), generator=gen)
        vgg_rows, p = compare_engines("vgg11", VGG11(), xv, yv, 4 if args.quick else 5, 2, peak_fn)
        rows += vgg_rows
        peaks += p
    # The machine's peak is the best of every measurement in the run (load from other processes
    # only lowers a measurement), so the percentages are not flattered by one slow measurement.
    peak = max(peaks)
    for r in rows:
        r["pct_of_peak"] = 100 * r["gflops"] / peak

    print(f"{'model':<10}{'engine':<9}{'models':>7}{'seconds':>9}{'models/s':>10}{'GFLOP/s':>9}"
          f"{'% peak':>8}{'max|diff|':>11}")
    for r in rows:
        print(f"{r['model']:<10}{r['engine']:<9}{r['models']:>7}{r['seconds']:>9.2f}{r['models_per_s']:>10.1f}"
              f"{r['gflops']:>9.1f}{r['pct_of_peak']:>7.1f}%{r['max_abs_diff']:>11.1e}")
    for m in dict.fromkeys(r["model"] for r in rows):
        first = next(r for r in rows if r["model"] == m)
        print(f"# {m}: {first['params']} parameters, {first['gflop_per_model']:.3f} GFLOP per model "
              f"({first['n_val']} images)")
    print(f"# float32 matmul peak {peak:.1f} GFLOP/s (best of {len(peaks)} measurements in this run: "
          f"{', '.join(f'{p:.0f}' for p in peaks)})")
    result = {"rows": rows, "peaks": peaks, "peak": peak, "args": vars(args)}

    if not args.no_flower:
        with tempfile.TemporaryDirectory(prefix="fedattr-engine-") as tmp:
            fl = flower_figure(n_val_cnn, Path(tmp) / "run")
        stacked = next(r for r in cnn_rows if r["engine"] == "stacked")
        per_model = stacked["gflop_per_model"]
        fl["gflops"] = per_model * fl["models"] / fl["seconds"]
        fl["pct_of_peak"] = 100 * fl["gflops"] / peak
        fl["standalone_over_flower"] = stacked["gflops"] / fl["gflops"]
        print(f"# inside Flower (fedattr run scenarios/engine_flower.toml, engine {fl['engine']}): "
              f"{fl['models']} models in {fl['seconds']:.2f} s -> {fl['gflops']:.1f} GFLOP/s "
              f"({fl['pct_of_peak']:.1f}% of peak); standalone stacked / in-Flower = "
              f"{fl['standalone_over_flower']:.2f}x (run wall {fl['wall_s']:.0f} s)")
        result["flower"] = fl
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
