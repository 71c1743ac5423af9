"""Attribution that scales: the surrogate and control-variate Shapley against exact Shapley, GTG and TMC.

Run ``python -m benchmarks.scaling`` (full) or ``--quick``. Everything comes from real FedAvg
rounds of the small CNN on mnist5k (Dirichlet(0.5) partitions, one local epoch, plain torch):

1. accuracy: per n in --error-sizes, arm (honest; ``attack``: client 0 trains on extra public
   images on top of its own) and round, the relative L1 error against exact Shapley of the
   Taylor surrogate alone, of the logit surrogate alone (each anchoring: grand, clients, both,
   loo, and pairs: mean and worst over the seeds, which draw its pair coalitions)
   and of control-variate (CV) Shapley on the logit surrogate at its default stopping rule, and
   the real utility evaluations CV (logit and Taylor surrogate), GTG and TMC need to reach 5%
   error (mean over seeds, budget grid; --reach picks which); for the accuracy utility and for
   neg_ce. The exact table is evaluated once per round
   with ``ModelUtility.evaluate_all`` (both metrics from one forward pass) and prefilled into
   each game's cache, so these estimators cost no model evaluations here.
2. scaling: per n in --scale-sizes, one round's local training time (all n clients, one after
   the other) next to the attribution seconds of GTG, TMC, the Taylor surrogate, CV Shapley and
   the logit surrogate (--scale-evaluators picks which), each on a fresh cache, capped at --cap
   seconds.
3. surrogate Shapley (--surrogate-sizes, e.g. ``--error-sizes --scale-sizes --surrogate-sizes 100
   500``): per n, seconds of the logit surrogate's sampled Shapley values (anchor both, synthetic
   logits of the scale100 shape) through the baseline walk with independent antithetic
   permutations (old) and through the class-major walk with the cyclic design (new), their ratio,
   and each one's relative L1 error against a long run.
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
from fedattr.learning.data import client_partition, load_splits  # noqa: E402
from fedattr.evaluators import (  # noqa: E402
    MaxPermutations,
    MaxTime,
    ModelUtility,
    RoundGame,
    make_evaluator,
    semivalue_from_table,
    shapley_weights,
)
from fedattr.evaluators.logit_surrogate import LogitSurrogateGame  # noqa: E402
from fedattr.evaluators.surrogate import surrogate_shapley_values  # noqa: E402
from fedattr.learning.models import build_model  # noqa: E402
from fedattr.learning.training import train_local  # noqa: E402

BUDGETS = [12, 16, 24, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096]
METRICS = ("accuracy", "neg_ce")
ANCHORS = ("grand", "clients", "both", "loo", "pairs")
REACH = ("cv_logit", "cv_taylor", "gtg", "tmc")
SCALE_EVALUATORS = ("gtg", "tmc", "surrogate_shapley", "cv_shapley", "logit_surrogate_shapley", "logit_both",
                    "logit_pairs")


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
    floor = 2 * n + 2 if name == "cv_logit" else 2  # real coalitions the surrogate itself is built from
    for b in [b for b in BUDGETS if floor <= b <= (1 << n)]:
        errs, used = [], []
        for s in seeds:
            if name == "tmc":
                ev = make_evaluator("tmc", stop=_SpendBudget(b) | MaxPermutations(1000))
            elif name == "gtg":
                ev = make_evaluator("gtg", tolerance=0.0, max_permutations=1000, stop=_SpendBudget(b))
            else:
                kind = "logit" if name == "cv_logit" else "taylor"
                ev = make_evaluator("cv_shapley", surrogate_kind=kind, stop=_SpendBudget(b) | MaxPermutations(1000))
            ev.fit(game, seed=s)
            errs.append(rel_l1(ev.values_, exact))
            used.append(ev.n_evaluations_)
        curve.append((float(np.mean(used)), float(np.mean(errs))))
        if curve[-1][1] <= target:
            return curve[-1][0], curve
    return None, curve


def accuracy_study(n, arm, rounds, seed, val_size, seeds, reach=REACH, taylor=True, pairs_grid=()):
    rows = []
    x_val, y_val = splits_val(seed, val_size)
    for r, model, gstate, states, weights, train_s in fedavg_rounds(n, rounds, seed, val_size, attack=arm == "attack"):
        tables, table_s = exact_tables(model, x_val, y_val, gstate, states, weights)
        for metric in METRICS:
            util = ModelUtility(model, x_val, y_val, metric=metric)
            game = RoundGame.from_state_dicts(util, gstate, states, weights=weights)
            game.cache.prefill(enumerate(tables[metric].tolist()))
            exact = semivalue_from_table(tables[metric], shapley_weights(n))
            row = {
                "n": n, "arm": arm, "round": r, "metric": metric, "train_s": train_s, "table_s": table_s,
                "gain": float(tables[metric][-1] - tables[metric][0]),
                "update_norm": float(game.updates.norm(dim=1).mean()),
                "surrogate_err": None, "taylor_s": None,
            }
            if taylor:
                sur = make_evaluator("surrogate_shapley").fit(game)
                row["surrogate_err"], row["taylor_s"] = rel_l1(sur.values_, exact), sur.taylor_seconds_
            for anchor in ANCHORS:
                errs = []
                for s in (seeds if anchor == "pairs" else seeds[:1]):  # only "pairs" is random
                    lsur = make_evaluator("logit_surrogate_shapley", anchor=anchor).fit(game, seed=s)
                    errs.append(rel_l1(lsur.values_, exact))
                    row["logit_s"] = max(row.get("logit_s", 0.0), lsur.seconds_)
                row[f"logit_{anchor}_err"], row[f"logit_{anchor}_worst"] = float(np.mean(errs)), float(np.max(errs))
                row[f"logit_{anchor}_evals"] = lsur.n_evaluations_
            # The pairs anchoring's two settings: pairs drawn x ridge (mean and worst over seeds).
            row["pairs_grid"] = []
            for k, ridge in pairs_grid:
                fits = [make_evaluator("logit_surrogate_shapley", anchor="pairs", n_pairs=k, pair_ridge=ridge)
                        .fit(game, seed=s) for s in seeds]
                errs = [rel_l1(f.values_, exact) for f in fits]
                row["pairs_grid"].append({"n_pairs": k, "ridge": ridge, "evals": fits[-1].n_evaluations_,
                                          "mean": float(np.mean(errs)), "worst": float(np.max(errs))})
            cv_errs, cv_evals = [], []
            for s in seeds:
                cv = make_evaluator("cv_shapley", surrogate_kind="logit").fit(game, seed=s)
                cv_errs.append(rel_l1(cv.values_, exact))
                cv_evals.append(cv.n_evaluations_)
            row["cv_default_err"], row["cv_default_evals"] = float(np.mean(cv_errs)), float(np.mean(cv_evals))
            for name in REACH:
                row[f"{name}_evals_5pct"], row[f"{name}_curve"] = (
                    evals_to_reach(game, exact, name, n, seeds) if name in reach else (None, None))
            row["reach"] = list(reach)
            rows.append(row)
            print(_fmt_row(row), flush=True)
            for g in row["pairs_grid"]:
                print(f"      pairs n_pairs={g['n_pairs']:<3} ridge={g['ridge']:<6g} ({g['evals']} evals): "
                      f"mean {100 * g['mean']:.1f}%, worst {100 * g['worst']:.1f}%", flush=True)
    return rows


def _fmt_row(r):
    def ev(name):
        if name not in r["reach"]:
            return f"{'-':>8}"
        x = r[f"{name}_evals_5pct"]
        return "   >grid" if x is None else f"{x:8.0f}"

    def pct(x, w=8):
        return f"{'-':>{w}} " if x is None else f"{100 * x:>{w}.1f}%"
    return (f"{r['n']:>3} {r['arm']:<7}{r['round']:>3} {r['metric']:<9}{r['gain']:>+8.4f}{r['update_norm']:>7.2f}"
            f"{pct(r['surrogate_err'])}" + "".join(pct(r[f"logit_{a}_err"], 7) for a in ANCHORS)
            + f"{pct(r['logit_pairs_worst'], 7)}{r['logit_pairs_evals']:>5}"
            + f"{pct(r['cv_default_err'], 7)}{r['cv_default_evals']:>6.0f}"
            + "".join(ev(name) for name in REACH) + f"{1 << r['n']:>7}"
            + ("       -" if r["taylor_s"] is None else f"{r['taylor_s']:>8.2f}") + f"{r['logit_s']:>8.2f}{r['table_s']:>8.1f}")


ACC_HEADER = (f"{'n':>3} {'arm':<7}{'rnd':>3} {'metric':<9}{'gain':>8}{'|g|':>7}{'taylor':>9}"
              + "".join(f"{'L-' + a[:5]:>8}" for a in ANCHORS) + f"{'L-p max':>8}{'ev':>5}" + f"{'cvL err':>8}{'cvL ev':>6}"
              + f"{'cvL 5%':>8}{'cvT 5%':>8}{'gtg 5%':>8}{'tmc 5%':>8}{'exact':>7}{'taylor s':>8}{'logit s':>8}"
              f"{'exact s':>8}")


# ------------------------------------------------------------------------------- scaling


def scaling_study(n, seed, val_size, cap, evaluators=SCALE_EVALUATORS):
    x_val, y_val = splits_val(seed, val_size)
    _, model, gstate, states, weights, train_s = next(fedavg_rounds(n, 1, seed, val_size))
    row = {"n": n, "train_s": train_s}
    specs = {
        "gtg": {"stop": MaxTime(cap)},
        "tmc": {"stop": make_evaluator("tmc")._default_stop() | MaxTime(cap)},
        "surrogate_shapley": {},
        "cv_shapley": {"stop": make_evaluator("cv_shapley")._default_stop() | MaxTime(cap)},
        "logit_surrogate_shapley": {},  # default anchor "loo": 2n + 2 forwards
        "logit_both": {"anchor": "both"},  # n + 2 forwards
        "logit_pairs": {"anchor": "pairs"},  # 2n + 2 + (3n - 1) forwards
    }
    for name in SCALE_EVALUATORS:
        if name not in evaluators:
            row[name] = None
            continue
        params = specs[name]
        util = ModelUtility(model, x_val, y_val, metric="accuracy")
        game = RoundGame.from_state_dicts(util, gstate, states, weights=weights)
        ev = make_evaluator("logit_surrogate_shapley" if name.startswith("logit_") else name, **params).fit(game, seed=seed)
        row[name] = {"s": ev.seconds_, "evals": ev.n_evaluations_, "capped": "stop" in params and ev.seconds_ >= cap}
        if name == "surrogate_shapley":
            row[name]["taylor_s"] = ev.taylor_seconds_
            row[name]["exact"] = ev.exact_
        if name in ("logit_surrogate_shapley", "logit_both", "logit_pairs"):
            row[name]["forward_s"] = ev.forward_seconds_
            row[name]["exact"] = ev.exact_

    def cell(k):
        c = row[k]
        return f"{'-':>10}{'-':>6}" if c is None else f"{c['s']:>9.1f}{'*' if c['capped'] else ' '}{c['evals']:>6}"

    def ratio(k):
        return f"{'-':>10}" if row[k] is None else f"{row[k]['s'] / train_s:>10.2f}"
    lg = row["logit_surrogate_shapley"]
    extra = f"{'-':>9}{'-':>6}" if lg is None else f"{lg['forward_s']:>9.1f}{'exact' if lg['exact'] else 'perm':>6}"
    print(f"{n:>4}{train_s:>9.1f}" + "".join(cell(k) for k in SCALE_EVALUATORS) + extra
          + ratio("surrogate_shapley") + ratio("logit_surrogate_shapley") + ratio("logit_both") + ratio("logit_pairs"),
          flush=True)
    return row


SCALE_HEADER = (f"{'n':>4}{'train s':>9}" + "".join(f"{k + ' s':>10}{'evals':>6}" for k in ("gtg", "tmc", "sur", "cv", "L-loo", "L-both", "L-pairs"))
                + f"{'fwd s':>9}{'enum':>6}{'sur/train':>10}{'L-loo/tr':>10}{'L-both/tr':>10}{'L-pair/tr':>10}")


# ------------------------------------------------------------------------------- surrogate Shapley: baseline


def baseline_walk(game, perms):
    """Marginals ``[B, n]`` of the logit surrogate along ``perms`` as the incremental walk of
    ``LogitSurrogateGame`` computed them before the class-major walk (kept here as the benchmark's
    baseline): ``[B, V, C]`` sums, every step scored through ``game.scores`` (torch's
    cross-entropy or argmax over the last axis)."""
    b, n = perms.shape
    rows = np.arange(b)
    marg = np.zeros((b, n))
    dt, dev = game.d.dtype, game.d.device
    zero = bool(np.any(game.weights == 0))
    s_w = torch.zeros((b,) + tuple(game.z0.shape), dtype=dt, device=dev)
    s_1 = torch.zeros_like(s_w) if zero else None
    curv = game.u is not None
    s_u = torch.zeros_like(s_w) if curv else None
    s_uu = torch.zeros_like(s_w) if curv else None
    s_1u = torch.zeros_like(s_w) if curv and zero else None
    w_sum, w_sq, k = np.zeros(b), np.zeros(b), np.zeros(b)
    prev = np.full(b, game.v_empty)
    with torch.no_grad():
        for j in range(n):
            i = perms[:, j]
            wi = game.weights[i]
            it = torch.as_tensor(i, device=dev)
            di = game.d[it]
            wt = torch.as_tensor(wi, dtype=dt, device=dev)[:, None, None]
            s_w += wt * di
            if curv:
                ui = game.u[it]
                s_u += wt * ui
                s_uu += wt * wt * ui
                if zero:
                    s_1u += ui
            w_sum += wi
            w_sq += wi * wi
            k += 1
            pos = w_sum > 0
            safe = np.where(pos, w_sum, 1.0)
            mean = s_w / torch.as_tensor(safe, dtype=dt, device=dev)[:, None, None]
            c2 = np.where(pos, w_sq / safe ** 2, 1.0 / k)
            if curv:
                sw = torch.as_tensor(safe, dtype=dt, device=dev)[:, None, None]
                mean = mean + s_u / sw - s_uu / sw ** 2
            pos_t = torch.as_tensor(pos, device=dev)[:, None, None]
            if zero:
                s_1 += di
                if not pos.all():
                    kk = float(k[0])
                    alt = s_1 / kk + ((1 / kk - 1 / kk ** 2) * s_1u if curv else 0.0)
                    mean = torch.where(pos_t, mean, alt)
            alpha = torch.as_tensor(game._alpha(c2), dtype=dt, device=dev)[:, None, None]
            v = game.scores(game.z0 + mean + alpha * game.r)
            if j == 0 and game.anchor in ("clients", "both", "loo"):
                v = game.v_clients[i]
            if j == n - 2 and game.anchor == "loo" and n > 1:
                v = game.v_loo[perms[:, n - 1]]
            if j == n - 1 and game.anchor in ("grand", "both", "loo"):
                v = np.full(b, game.v_full)
            marg[rows, i] = v - prev
            prev = v
    return marg


def baseline_shapley(game, n_permutations=1000, seed=0, batch=200):
    """The baseline's Shapley values: ``n_permutations`` independent permutations in antithetic
    pairs, each walked by :func:`baseline_walk`."""
    return surrogate_shapley_values(game, lambda p: baseline_walk(game, p), 0, n_permutations, seed, batch)[0]


def synthetic_surrogate(n, n_val=500, classes=10, anchor="both", metric="neg_ce", seed=0, device="cpu"):
    """A logit surrogate of the scale100 shape (``n`` clients, ``n_val`` validation images, 10
    classes) on synthetic logits: a shared drift plus each client's own, no model forward; its
    tensors on ``device``."""
    g = torch.Generator().manual_seed(seed)
    z0 = 2 * torch.randn(n_val, classes, generator=g)
    d = 0.5 * torch.randn(1, n_val, classes, generator=g) + 0.7 * torch.randn(n, n_val, classes, generator=g)
    z_full = z0 + d.mean(0) + 0.2 * torch.randn(n_val, classes, generator=g)
    y = torch.randint(0, classes, (n_val,), generator=g)
    z_loo = None
    if anchor == "loo":
        z_loo = (z0 + (d.sum(0, keepdim=True) - d) / max(1, n - 1)
                 + 0.1 * torch.randn(n, n_val, classes, generator=g)).to(device)
    return LogitSurrogateGame(z0.to(device), (z0 + d).to(device), z_full.to(device), y.to(device), metric,
                              anchor=anchor, z_loo=z_loo)


def surrogate_study(n, n_permutations, reference_factor, seed, n_val, metric="neg_ce", anchor="both"):
    """Seconds of the surrogate's Shapley values at ``n`` players: the baseline walk (independent
    antithetic permutations) against the class-major walk with the cyclic design, the same
    ``n_permutations``; relative L1 error of each against a long run of the cyclic design
    (``reference_factor`` times the permutations, other seeds)."""
    game = synthetic_surrogate(n, n_val, anchor=anchor, metric=metric, seed=seed)
    t0 = time.perf_counter()
    old = baseline_shapley(game, n_permutations, seed)
    old_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    new, _ = game.shapley(0, n_permutations, seed)
    new_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = np.mean([game.shapley(0, n_permutations, 1000 + k)[0] for k in range(reference_factor)], axis=0)
    ref_s = time.perf_counter() - t0
    row = {"n": n, "metric": metric, "anchor": anchor, "n_permutations": n_permutations, "old_s": old_s,
           "new_s": new_s, "speedup": old_s / new_s, "old_err": rel_l1(old, ref), "new_err": rel_l1(new, ref),
           "reference_permutations": n_permutations * reference_factor, "reference_s": ref_s}
    print(f"{n:>5}{metric:>9}{anchor:>7}{n_permutations:>7}{old_s:>9.2f}{new_s:>9.2f}{row['speedup']:>9.1f}x"
          f"{100 * row['old_err']:>9.2f}%{100 * row['new_err']:>9.2f}%{row['reference_permutations']:>10}", flush=True)
    return row


SURROGATE_HEADER = (f"{'n':>5}{'metric':>9}{'anchor':>7}{'perms':>7}{'old s':>9}{'new s':>9}{'old/new':>10}"
                    f"{'old err':>10}{'new err':>10}{'ref perms':>10}")


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
    ap.add_argument("--reach", nargs="*", default=list(REACH), choices=REACH,
                    help="estimators whose evaluations to 5%% are searched on the budget grid (default all)")
    ap.add_argument("--no-taylor", action="store_true", help="skip the Taylor surrogate in the error study")
    ap.add_argument("--pairs-grid", type=int, nargs="*", default=[],
                    help="n_pairs values for the pairs anchoring's grid in the error study (with --ridge-grid)")
    ap.add_argument("--ridge-grid", type=float, nargs="*", default=[0.01], help="pair_ridge values (default 0.01)")
    ap.add_argument("--scale-evaluators", nargs="+", default=list(SCALE_EVALUATORS), choices=SCALE_EVALUATORS,
                    help="evaluators timed in the scaling table (default all)")
    ap.add_argument("--surrogate-sizes", type=int, nargs="*", default=[],
                    help="n for the surrogate-Shapley table: baseline walk vs class-major walk with the cyclic "
                         "design, seconds and error vs a long run (synthetic logits, 10 classes; e.g. 100 500)")
    ap.add_argument("--surrogate-permutations", type=int, default=1000, help="permutations per estimate (default 1000)")
    ap.add_argument("--reference-factor", type=int, default=8,
                    help="the reference is the mean of this many cyclic runs of --surrogate-permutations (default 8)")
    ap.add_argument("--surrogate-metrics", nargs="+", default=["neg_ce"], choices=["neg_ce", "accuracy"],
                    help="metrics of the surrogate-Shapley table (default neg_ce, as scale100)")
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
    results = {"args": vars(args), "errors": [], "scaling": [], "surrogate": []}
    if args.surrogate_sizes:
        print(f"\n## surrogate Shapley at n players (anchor both, {args.val_size} synthetic validation "
              f"logits, 10 classes): baseline walk + antithetic permutations (old) vs class-major walk + cyclic "
              f"design (new); errors: relative L1 vs the mean of {args.reference_factor} cyclic runs")
        print(SURROGATE_HEADER)
        for n in args.surrogate_sizes:
            for metric in args.surrogate_metrics:
                results["surrogate"].append(surrogate_study(n, args.surrogate_permutations, args.reference_factor,
                                                            args.seed, args.val_size, metric))
    if err_sizes:
        print("\n## error vs exact Shapley (relative L1; '5%' columns: real evaluations to reach 5%, "
              f"mean over {len(seeds)} seeds; '>grid' = not reached)")
        print(ACC_HEADER)
        for n in err_sizes:
            for arm in args.arms:
                grid = [(k, r) for k in args.pairs_grid for r in args.ridge_grid]
                results["errors"] += accuracy_study(n, arm, rounds, args.seed, args.val_size, seeds, args.reach,
                                                    not args.no_taylor, grid)
    if scale_sizes:
        print(f"\n## seconds per round (accuracy utility, fresh cache each; * = stopped by the {cap:.0f} s cap)")
        print(SCALE_HEADER)
        for n in scale_sizes:
            results["scaling"].append(scaling_study(n, args.seed, args.val_size, cap, args.scale_evaluators))
    results["seconds_total"] = time.perf_counter() - t_start
    print(f"\ntotal {results['seconds_total']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
