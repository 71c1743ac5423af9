"""Tests of fedattr.report.stats and fedattr.report.claim_stats: intervals and paired statistics with
known answers, same-round effects, the claim, control and sweep tables, ``fedattr stats``."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedattr.cli.app import app
from fedattr.protocol import RoundRecord
from fedattr.report import load_results
from fedattr.report.claim_stats import claim_table, control_table, format_control_table, format_table, job_effects, \
    round_effects, sweep_table
from fedattr.report.stats import (bounded_ci, detectable_effect, fmt_ci, mean_ci, min_wilcoxon_p, paired_stats,
                                  ranks)

FIXTURE = Path(__file__).parent / "fixtures" / "results_small" / "run"


def test_paired_stats_known_answers():
    s = paired_stats([1, 2, 3, 4, 5])
    assert s.n == 5 and s.mean == 3 and s.positive == 5
    # t(0.975, 4) = 2.7764451; sd = sqrt(2.5)
    assert (s.t_high - s.t_low) / 2 == pytest.approx(2.7764451 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert s.wilcoxon_p == pytest.approx(2 / 32)  # exact: all 5 ranks positive, two-sided
    assert s.min_p == pytest.approx(2 / 32)  # ... which is the floor at 5 seeds
    assert 1 <= s.boot_low < 3 < s.boot_high <= 5
    assert paired_stats([1, 2, 3, 4, 5]).boot_low == s.boot_low  # seeded
    z = paired_stats([0, 0, 0])
    assert z.wilcoxon_p == 1.0 and z.t_low == z.t_high == 0 and z.positive == 0
    one = paired_stats([0.5, float("nan"), None])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.t_low) and one.min_p == 1.0
    assert paired_stats([]).n == 0
    mixed = paired_stats([-1, 2, 3, -0.5, 4, 5])
    assert mixed.positive == 4 and mixed.t_low < 0 < mixed.t_high
    d = s.as_dict()
    assert d["min_attainable_p"] == pytest.approx(1 / 16) and d["positive_seeds"] == 5
    assert d["t_ci"] == [s.t_low, s.t_high] and d["bootstrap_ci"] == [s.boot_low, s.boot_high]


def test_min_wilcoxon_p_is_two_over_two_to_the_n():
    assert [min_wilcoxon_p(n) for n in (1, 2, 4, 6)] == [1.0, 0.5, 0.125, 2 / 64]
    # scipy's exact test reaches the floor when every seed has the same sign
    from scipy import stats

    for n in (4, 6):
        assert stats.wilcoxon(np.arange(1, n + 1), alternative="two-sided").pvalue == pytest.approx(min_wilcoxon_p(n))


def test_detectable_effect_known_answer():
    # t(0.975, 9) = 2.262157, t(0.8, 9) = 0.883404
    assert detectable_effect(1.0, 10) == pytest.approx((2.262157 + 0.883404) / math.sqrt(10), rel=1e-5)
    assert math.isnan(detectable_effect(1.0, 1))
    assert paired_stats([1, 2, 3, 4, 5]).detectable == pytest.approx(detectable_effect(math.sqrt(2.5), 5))


def test_ranks_ties_share_the_mean_rank():
    assert ranks({0: 0.3, 1: 0.1, 2: 0.3}) == {"0": 1.5, "1": 3.0, "2": 1.5}
    assert ranks({0: float("nan"), 1: 0.1}) == {"0": 2.0, "1": 1.0}


def test_bounded_ci_stays_inside_the_range():
    # a t interval of these ranks (n = 4 of 1..4) runs outside 1..4; the bootstrap one cannot
    values = [1, 1, 4, 1]
    t = mean_ci(values)
    assert t.low < 1
    b = bounded_ci(values)
    assert b.mean == pytest.approx(1.75) and 1 <= b.low <= b.mean <= b.high <= 4
    taus = [1.0, 0.9, 1.0, -0.2]
    assert mean_ci(taus).high > 1
    bt = bounded_ci(taus)
    assert -1 <= bt.low <= bt.high <= 1 and fmt_ci(bt).startswith("+0.6750 [")
    assert bounded_ci([0.5, 0.5]).low == bounded_ci([0.5, 0.5]).high == 0.5
    assert math.isnan(bounded_ci([0.3]).low) and fmt_ci(bounded_ci([0.3]), signed=False) == "0.3000 (n=1)"


def _shapley(players, v):
    n = len(players)
    out = {}
    for i in players:
        others = [p for p in players if p != i]
        total = 0.0
        for k in range(n):
            for s in itertools.combinations(others, k):
                w = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
                total += w * (v(frozenset(s) | {i}) - v(frozenset(s)))
        out[i] = total
    return out


def test_round_effects_transfer_identity_on_exact_shapley():
    """Benign change = LOO inflation - attacker inflation, for exact Shapley (efficiency)."""
    rng = np.random.default_rng(0)
    players = [0, 1, 2, 3]
    table = {frozenset(s): float(rng.random()) for k in range(5) for s in itertools.combinations(players, k)}
    table[frozenset()] = 0.0
    boost = {frozenset(s): float(rng.random()) for k in range(5) for s in itertools.combinations(players, k)}

    def real(s):  # coalitions with the attacker (0) differ between games; the others are shared
        return table[s] + (boost[s] if 0 in s else 0.0)

    def cf(s):
        return table[s]

    sv_real, sv_cf = _shapley(players, real), _shapley(players, cf)
    full = frozenset(players)
    loo_real = {i: real(full) - real(full - {i}) for i in players}
    loo_cf = {i: cf(full) - cf(full - {i}) for i in players}
    eff = round_effects(sv_real, sv_cf, 0, loo_real, loo_cf)
    assert eff["inflation"] == pytest.approx(sv_real[0] - sv_cf[0])
    assert eff["loo_inflation"] == pytest.approx(real(full) - cf(full))
    assert eff["benign_change"] == pytest.approx(eff["loo_inflation"] - eff["inflation"])
    assert eff["cf_total"] == pytest.approx(cf(full) - cf(frozenset()))


def test_round_effects_rank_change_and_benign_tau():
    real = {"0": 0.5, "1": 0.2, "2": 0.1, "3": 0.05}
    cf = {"0": 0.0, "1": 0.3, "2": 0.2, "3": 0.1}
    eff = round_effects(real, cf, 0)
    assert eff["rank_change"] == 3.0  # from last (4) to first (1)
    assert eff["benign_tau"] == pytest.approx(1.0)  # benign order unchanged
    assert eff["benign_change"] == pytest.approx(-0.25)
    swapped = round_effects(real, {"0": 0.0, "1": 0.1, "2": 0.2, "3": 0.3}, 0)
    assert swapped["benign_tau"] == pytest.approx(-1.0)
    assert round_effects(real, {"1": 0.1}, 0) == {}


def _record(rnd: int, **fields) -> RoundRecord:
    return RoundRecord(arm="attack", seed=0, attacker_ids=[0], round=rnd, clients=[0, 1], **fields)


def test_job_effects_sums_rounds_and_falls_back_to_the_cf_value():
    rounds = [
        _record(1, values={"shapley": {0: 0.3, 1: 0.1}}, counterfactual_vectors={"shapley": {0: {0: 0.1, 1: 0.2}}}),
        _record(2, values={"shapley": {0: 0.2, 1: 0.1}}, counterfactual_values={"shapley": {0: 0.25}}),
    ]
    e = job_effects(rounds, "shapley", 0)
    assert e["inflation"] == pytest.approx(0.2 - 0.05) and e["rounds"] == 2
    assert e["benign_change"] == pytest.approx(-0.1) and e["cf_value"] == pytest.approx(0.35)
    assert e["rank_change"] == 1.0


def test_claim_table_on_stored_results():
    rows = claim_table(load_results(FIXTURE))
    assert rows and {r.arm for r in rows} == {"attack"}
    row = next(r for r in rows if r.evaluator == "shapley")
    expected, cf = [], []
    for seed in (0, 1):
        recs = [json.loads(line) for line in (FIXTURE / "jobs" / f"attack__s{seed}" / "rounds.jsonl").open()]
        expected.append(sum(r["values"]["shapley"]["0"] - r["counterfactual_values"]["shapley"]["0"] for r in recs))
        cf.append(sum(r["counterfactual_values"]["shapley"]["0"] for r in recs))
    assert row.inflation.n == 2 and row.inflation.mean == pytest.approx(np.mean(expected))
    # relative inflation is a ratio of sums over seeds, not a mean of per-seed ratios
    assert row.rel_cf == pytest.approx(sum(expected) / sum(abs(c) for c in cf))
    assert 0 < row.acc_attack < 1 and 0 < row.acc_honest < 1
    again = next(r for r in claim_table(load_results(FIXTURE), reference=load_results(FIXTURE))
                 if r.evaluator == "shapley")
    assert again.acc_honest == row.acc_honest and again.acc_delta.n == 2
    text = format_table(rows)
    assert text.count("\n") == len(rows) + 1 and "shapley" in text and "min p" in text
    assert row.as_dict()["counterfactual_inflation"]["min_attainable_p"] == 0.5


def test_stats_command_prints_the_table_and_the_machine(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["stats", str(FIXTURE)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("| arm | evaluator |") and "GFLOP/s" in result.output
    assert format_table(claim_table(load_results(FIXTURE))) in result.output
    bad = runner.invoke(app, ["stats", str(tmp_path)])
    assert bad.exit_code == 2 and "scenario.json" in bad.output and "Traceback" not in bad.output
    assert runner.invoke(app, ["stats"]).exit_code == 2


def test_matmul_rate_is_positive():
    from fedattr.report.machine import machine, matmul_rate

    assert matmul_rate(n=64, seconds=0.05) > 0
    assert "GFLOP/s" in machine().line()


def _control_copy(tmp_path, shift: float):
    """The fixture's attack arm renamed ``control``, the attacker's Shapley value lowered by
    ``shift`` in every round (its inflation lowered by ``shift`` per round)."""
    import shutil

    root = tmp_path / "controls"
    (root / "jobs").mkdir(parents=True)
    sc = json.loads((FIXTURE / "scenario.json").read_text())
    sc["arms"] = [dict(a, name="control") for a in sc["arms"] if a["name"] == "attack"]
    (root / "scenario.json").write_text(json.dumps(sc))
    rounds = 0
    for seed in (0, 1):
        src, dst = FIXTURE / "jobs" / f"attack__s{seed}", root / "jobs" / f"control__s{seed}"
        shutil.copytree(src, dst)
        recs = [json.loads(line) for line in (dst / "rounds.jsonl").open()]
        for r in recs:
            r["arm"] = "control"
            r["values"]["shapley"]["0"] -= shift
        rounds = len(recs)
        (dst / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        summ = json.loads((dst / "summary.json").read_text())
        summ["arm"] = "control"
        (dst / "summary.json").write_text(json.dumps(summ))
    return root, rounds


def test_control_table_pairs_attack_and_control_by_seed(tmp_path):
    ctl, rounds = _control_copy(tmp_path, shift=0.05)
    rows = control_table(load_results(FIXTURE), load_results(ctl))
    row = next(r for r in rows if r.evaluator == "shapley")
    assert (row.arm, row.control, row.n) == ("attack", "control", 2)
    assert row.diff.mean == pytest.approx(0.05 * rounds) and row.diff.positive == 2
    assert row.attack_mean - row.control_mean == pytest.approx(0.05 * rounds)
    loo = next(r for r in rows if r.evaluator == "loo")
    assert loo.diff.mean == pytest.approx(0.0, abs=1e-12)
    assert "attack - control" in format_control_table(rows)
    result = CliRunner().invoke(app, ["stats", str(FIXTURE), str(ctl), "--no-machine"])
    assert result.exit_code == 0, result.output
    assert "Attack against each control" in result.output and "| attack | control | shapley | 2 |" in result.output


def test_sweep_table_has_a_row_per_point_named_by_its_overrides():
    from fedattr.report import sweep_meta

    sweep = FIXTURE.parent / "sweep"
    points = sweep_meta(sweep).points
    rows = sweep_table(sweep, ["shapley"])
    finished = [p for p in points if claim_table(load_results(sweep / p.dir), ["shapley"])]
    assert finished and len(rows) == len(finished)
    for p, r in zip(finished, rows):
        assert r.point == ", ".join(f"{k}={v}" for k, v in p.overrides.items())
        direct = claim_table(load_results(sweep / p.dir), ["shapley"])[0]
        assert r.inflation.values == direct.inflation.values
    result = CliRunner().invoke(app, ["stats", str(sweep), "-e", "shapley", "--no-machine"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("| point | arm |") and rows[0].point in result.output
