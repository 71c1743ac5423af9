"""Attribution that scales: the surrogate and control-variate Shapley against exact Shapley, GTG and TMC.

Run ``python -m benchmarks.scaling`` (full) or ``--quick``. Everything comes from real FedAvg
rounds of the small CNN on mnist5k (Dirichlet(0.5) partitions, one local epoch, plain torch):

1. accuracy: per n in --error-sizes, arm (honest; ``attack``: client 0 trains on extra public
   images on top of its own) and round, the relative L1 error against exact Shapley of the
   surrogate alone and of control-variate (CV) Shapley at its default stopping rule, and the
   real utility evaluations GTG, TMC and CV need to reach 5% error (mean over seeds, budget
   grid); for the accuracy utility and for neg_ce. The exact table is evaluated once per round
   with ``ModelUtility.evaluate_all`` (both metrics from one forward pass) and prefilled into
   each game's cache, so these estimators cost no model evaluations here.
2. scaling: per n in --scale-sizes, one round's local training time (all n clients, one after
   the other) next to the attribution seconds of GTG, TMC, surrogate and CV Shapley, each on a
   fresh cache, capped at --cap seconds.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.evaluators import _SpendBudget, rel_l1  # noqa: E402
from fedattr.data import client_partition, load_splits  # noqa: E402
from fedattr.evaluators import (  # noqa: E402
    MaxPermutations,
    MaxTime,
    ModelUtility,
    RoundGame,
    make_evaluator,
    semivalue_from_table,
    shapley_weights,
)
from fedattr.models import build_model  # noqa: E402
from fedattr.training import train_local  # noqa: E402

BUDGETS = [12, 16, 24, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096]
METRICS = ("accuracy", "neg_ce")


# ------------------------------------------------------------------------------- real rounds


def fedavg_rounds(n, rounds, seed=0, val_size=300, attack=False, alpha=0.5):
    """Yield ``(round, model, global_state, client_states, weights, train_seconds)`` for
    ``rounds`` FedAvg rounds of ``n`` clients; with ``attack`` client 0 adds as many public
    (auxiliary-split) images as it has to its own data."""
    splits = load_splits("mnist5k", val_size=val_size, test_size=1000, aux_size=500, split_seed=seed)
    min_size = max(2, min(10, len(splits.y_pool) // (4 * n)))
    data = [client_partition(splits, i, "dirichlet", n, alpha=alpha, min_partition_size=min_size, seed=seed)
            for i in range(n)]
    if attack:
        x0, y0 = data[0]
        k = max(16, len(y0))
        data[0] = (torch.cat([x0, splits.x_aux[:k]]), torch.cat([y0, splits.y_aux[:k]]))
    torch.manual_seed(seed)
    model = build_model("cnn")
    for r in range(1, rounds + 1):
        global_state = copy.deepcopy(model.state_dict())
        states, weights = [], []
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(data):
            local = copy.deepcopy(model)
            train_local(local, x, y, epochs=1, batch_size=32, lr=0.05, seed=seed * 100_003 + r * 1009 + i)
            states.append(local.state_dict())
            weights.append(len(y))
        seconds = time.perf_counter() - t0
        yield r, model, global_state, states, weights, seconds
        w = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        model.load_state_dict({k: sum(wi * s[k].double() for wi, s in zip(w, states)).to(v.dtype)
                               if torch.is_floating_point(v) else v for k, v in global_state.items()})


def splits_val(seed, val_size):
    s = load_splits("mnist5k", val_size=val_size, test_size=1000, aux_size=500, split_seed=seed)
    return s.x_val, s.y_val


# ------------------------------------------------------------------------------- accuracy


def exact_tables(model, x_val, y_val, global_state, states, weights):
    """All 2^n coalition values for every metric in METRICS from one forward each."""
    util = ModelUtility(model, x_val, y_val, metric="accuracy")
    game = RoundGame.from_state_dicts(util, global_state, states, weights=weights)
    masks = list(range(1 << game.n))
    t0 = time.perf_counter()
    tables = {m: np.empty(len(masks)) for m in METRICS}
    step = 256
    for s in range(0, len(masks), step):
        out = util.evaluate_all(game.aggregate_many(masks[s:s + step]), METRICS)
        for m in METRICS:
            tables[m][s:s + step] = out[m]
    return tables, time.perf_counter() - t0


def evals_to_reach(game, exact, name, n, seeds, target=0.05):
    """Smallest budget of the grid whose mean error over ``seeds`` is within ``target``, and
    the error curve."""
    curve = []
    for b in [b for b in BUDGETS if b <= (1 << n)]:
        errs, used = [], []
        for s in seeds:
            if name == "tmc":
                ev = make_evaluator("tmc", stop=_SpendBudget(b) | MaxPermutations(1000))
            elif name == "gtg":
                ev = make_evaluator("gtg", tolerance=0.0, max_permutations=1000, stop=_SpendBudget(b))
            else:
                ev = make_evaluator("cv_shapley", stop=_SpendBudget(b) | MaxPermutations(1000))
            ev.fit(game, seed=s)
            errs.append(rel_l1(ev.values_, exact))
            used.append(ev.n_evaluations_)
        curve.append((float(np.mean(used)), float(np.mean(errs))))
        if curve[-1][1] <= target:
            return curve[-1][0], curve
    return None, curve


def accuracy_study(n, arm, rounds, seed, val_size, seeds):
    rows = []
    x_val, y_val = splits_val(seed, val_size)
    for r, model, gstate, states, weights, train_s in fedavg_rounds(n, rounds, seed, val_size, attack=arm == "attack"):
        tables, table_s = exact_tables(model, x_val, y_val, gstate, states, weights)
        for metric in METRICS:
            util = ModelUtility(model, x_val, y_val, metric=metric)
            game = RoundGame.from_state_dicts(util, gstate, states, weights=weights)
            game.cache.prefill(enumerate(tables[metric].tolist()))
            exact = semivalue_from_table(tables[metric], shapley_weights(n))
            sur = make_evaluator("surrogate_shapley").fit(game)
            cv_errs, cv_evals = [], []
            for s in seeds:
                cv = make_evaluator("cv_shapley").fit(game, seed=s)
                cv_errs.append(rel_l1(cv.values_, exact))
                cv_evals.append(cv.n_evaluations_)
            row = {
                "n": n, "arm": arm, "round": r, "metric": metric, "train_s": train_s, "table_s": table_s,
                "gain": float(tables[metric][-1] - tables[metric][0]),
                "update_norm": float(game.updates.norm(dim=1).mean()),
                "surrogate_err": rel_l1(sur.values_, exact), "taylor_s": sur.taylor_seconds_,
                "cv_default_err": float(np.mean(cv_errs)), "cv_default_evals": float(np.mean(cv_evals)),
            }
            for name in ("cv", "gtg", "tmc"):
                row[f"{name}_evals_5pct"], row[f"{name}_curve"] = evals_to_reach(game, exact, name, n, seeds)
            rows.append(row)
            print(_fmt_row(row), flush=True)
    return rows


def _fmt_row(r):
    def ev(x):
        return "   >grid" if x is None else f"{x:8.0f}"
    return (f"{r['n']:>3} {r['arm']:<7}{r['round']:>3} {r['metric']:<9}{r['gain']:>+8.4f}{r['update_norm']:>7.2f}"
            f"{100 * r['surrogate_err']:>8.1f}%{100 * r['cv_default_err']:>7.1f}%{r['cv_default_evals']:>6.0f}"
            f"{ev(r['cv_evals_5pct'])}{ev(r['gtg_evals_5pct'])}{ev(r['tmc_evals_5pct'])}{1 << r['n']:>7}"
            f"{r['taylor_s']:>8.2f}{r['table_s']:>8.1f}")


ACC_HEADER = (f"{'n':>3} {'arm':<7}{'rnd':>3} {'metric':<9}{'gain':>8}{'|g|':>7}{'sur err':>9}{'cv err':>8}"
              f"{'cv ev':>6}{'cv 5%':>8}{'gtg 5%':>8}{'tmc 5%':>8}{'exact':>7}{'taylor s':>8}{'exact s':>8}")


# ------------------------------------------------------------------------------- scaling


def scaling_study(n, seed, val_size, cap):
    x_val, y_val = splits_val(seed, val_size)
    _, model, gstate, states, weights, train_s = next(fedavg_rounds(n, 1, seed, val_size))
    row = {"n": n, "train_s": train_s}
    specs = {
        "gtg": {"stop": MaxTime(cap)},
        "tmc": {"stop": make_evaluator("tmc")._default_stop() | MaxTime(cap)},
        "surrogate_shapley": {},
        "cv_shapley": {"stop": make_evaluator("cv_shapley")._default_stop() | MaxTime(cap)},
    }
    for name, params in specs.items():
        util = ModelUtility(model, x_val, y_val, metric="accuracy")
        game = RoundGame.from_state_dicts(util, gstate, states, weights=weights)
        ev = make_evaluator(name, **params).fit(game, seed=seed)
        row[name] = {"s": ev.seconds_, "evals": ev.n_evaluations_, "capped": "stop" in params and ev.seconds_ >= cap}
        if name == "surrogate_shapley":
            row[name]["taylor_s"] = ev.taylor_seconds_
            row[name]["exact"] = ev.exact_
    cells = "".join(f"{row[k]['s']:>9.1f}{'*' if row[k]['capped'] else ' '}{row[k]['evals']:>6}" for k in specs)
    print(f"{n:>4}{train_s:>9.1f}{cells}{row['surrogate_shapley']['s'] / train_s:>9.2f}", flush=True)
    return row


SCALE_HEADER = (f"{'n':>4}{'train s':>9}" + "".join(f"{k + ' s':>10}{'evals':>6}" for k in ("gtg", "tmc", "sur", "cv"))
                + f"{'sur/train':>9}")


# ------------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="errors at n = 8 only, 2 rounds, 3 seeds; scaling n = 10, 20")
    ap.add_argument("--error-sizes", type=int, nargs="*", help="n for the error study (default 8 10 12)")
    ap.add_argument("--scale-sizes", type=int, nargs="*", help="n for the scaling table (default 10 20 50 100)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per error run (default 3; quick 2)")
    ap.add_argument("--arms", nargs="+", default=["honest", "attack"], choices=["honest", "attack"])
    ap.add_argument("--seeds", type=int, default=None, help="seeds per estimator and budget (default 5; quick 3)")
    ap.add_argument("--val-size", type=int, default=300, help="validation images (default 300)")
    ap.add_argument("--cap", type=float, default=None, help="seconds cap per evaluator in the scaling table (default 120; quick 30)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=str, default=None, help="write all results to this JSON file")
    args = ap.parse_args(argv)
    err_sizes = args.error_sizes if args.error_sizes is not None else ([8] if args.quick else [8, 10, 12])
    scale_sizes = args.scale_sizes if args.scale_sizes is not None else ([10, 20] if args.quick else [10, 20, 50, 100])
    rounds = args.rounds or (2 if args.quick else 3)
    seeds = list(range(args.seeds or (3 if args.quick else 5)))
    cap = args.cap or (30.0 if args.quick else 120.0)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    print(f"# fedattr scaling benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; small CNN, mnist5k, "
          f"{args.val_size} validation images, Dirichlet(0.5), 1 local epoch")
    results = {"args": vars(args), "errors": [], "scaling": []}
    if err_sizes:
        print("\n## error vs exact Shapley (relative L1; '5%' columns: real evaluations to reach 5%, "
              f"mean over {len(seeds)} seeds; '>grid' = not reached)")
        print(ACC_HEADER)
        for n in err_sizes:
            for arm in args.arms:
                results["errors"] += accuracy_study(n, arm, rounds, args.seed, args.val_size, seeds)
    if scale_sizes:
        print(f"\n## seconds per round (accuracy utility, fresh cache each; * = stopped by the {cap:.0f} s cap)")
        print(SCALE_HEADER)
        for n in scale_sizes:
            results["scaling"].append(scaling_study(n, args.seed, args.val_size, cap))
    results["seconds_total"] = time.perf_counter() - t_start
    print(f"\ntotal {results['seconds_total']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
