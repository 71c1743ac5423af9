"""Cost of the class-group mitigations next to exact Shapley on one round game.

Run ``python -m benchmarks.robust_scoring`` (under a minute on 2 CPU cores). One 8-client FedAvg
round of the project's small MNIST CNN (the defence study's model, 500 validation images) is
scored by exact Shapley, ``mom`` (5 class groups) and ``coverage_weighted`` two ways, in one run:

* shared: the two mitigations compute their utilities from the per-class correct counts the
  round game keeps of the coalitions exact Shapley evaluated (no forward pass of their own);
* sharded: each rebuilds the round game on a :class:`ShardedUtility` (one ModelUtility per class
  group) with its own cache, so each evaluates all 2^n coalitions again.

Prints seconds and new evaluations per evaluator, the sharded / shared ratio of the total and the
largest difference between the two paths' values (rounding only: the same correct counts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.evaluators import load_mnist, make_round, train  # noqa: E402
from fedattr.defenses import register_scoring_rules  # noqa: E402
from fedattr.evaluators import ModelUtility, RoundGame, make_evaluator  # noqa: E402
from fedattr.learning.models import build_model  # noqa: E402

SPECS = [("shapley", {}), ("mom", {"shards": 5, "by": "class"}), ("coverage_weighted", {})]


def score(util, base, updates, weights, sharded: bool) -> dict:
    """Shapley, mom and coverage_weighted on one fresh round game; seconds and new evaluations."""
    game = RoundGame(util, base, updates, weights=weights)
    rows, t0 = {}, time.perf_counter()
    for name, params in SPECS:
        ev = make_evaluator(name, **params)
        if sharded and name != "shapley":
            ev._counted = lambda game, utility: False  # the ShardedUtility round game
        ev.fit(game, seed=0)
        rows[name] = {"seconds": ev.seconds_, "new_evals": ev.n_new_evaluations_, "values": ev.values_.tolist()}
    rows["total_s"] = time.perf_counter() - t0
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the defence study uses 1)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each path; the fastest counts")
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    register_scoring_rules()
    torch.manual_seed(0)
    (x_val, y_val), (x_tr, y_tr) = load_mnist(args.n_val, 0)
    model = train(build_model("cnn"), x_tr[:600], y_tr[:600], epochs=1, seed=0)
    states, weights = make_round(model, x_tr[600:], y_tr[600:], args.clients, 0)
    util = ModelUtility(model, x_val, y_val, metric="accuracy")
    base = util.layout.flatten(model.state_dict())
    updates = util.layout.flatten_many(states) - base
    runs = {"shared": [], "sharded": []}
    for _ in range(args.repeats):  # interleaved, so both paths see the same machine load
        for path in runs:
            runs[path].append(score(util, base, updates, weights, sharded=path == "sharded"))
    best = {path: min(r, key=lambda x: x["total_s"]) for path, r in runs.items()}
    diff = max(abs(a - b) for n, _ in SPECS
               for a, b in zip(best["shared"][n]["values"], best["sharded"][n]["values"]))
    print(f"{args.clients} clients, {util.n_val_} validation images, engine {util.engine_.name}, "
          f"{torch.get_num_threads()} thread(s); fastest of {args.repeats}")
    print(f"{'evaluator':<20}{'shared s':>10}{'new evals':>11}{'sharded s':>11}{'new evals':>11}")
    for name, _ in SPECS:
        a, b = best["shared"][name], best["sharded"][name]
        print(f"{name:<20}{a['seconds']:>10.2f}{a['new_evals']:>11}{b['seconds']:>11.2f}{b['new_evals']:>11}")
    ratio = best["sharded"]["total_s"] / best["shared"]["total_s"]
    print(f"{'total':<20}{best['shared']['total_s']:>10.2f}{'':>11}{best['sharded']['total_s']:>11.2f}")
    print(f"shapley+mom+coverage_weighted: sharded / shared = {ratio:.2f}x; "
          f"max |value difference| {diff:.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "best": best, "ratio": ratio, "max_abs_diff": diff}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
