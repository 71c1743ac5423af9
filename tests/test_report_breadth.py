"""The breadth page (fedattr.report.breadth_stats, fedattr.report.breadth, ``fedattr report --breadth``).

Synthetic cell directories are built here in the results format the server writes (as
tests/fixtures/make_results_small.py builds its fixture), with numbers chosen so that every
statistic has a known answer: the detector separates the attacker perfectly (AUC 1), its flag
rate rises by a known share of rounds per seed, TMC is exact Shapley scaled by a known factor
(relative L1 error known), and the inflation and accuracy difference per seed are set.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedattr.cli.app import app
from fedattr.core.errors import UserError
from fedattr.protocol import RoundRecord
from fedattr.report.breadth import load_cells, write_breadth_page
from fedattr.report.breadth_stats import (FAILS, HOLDS, OPEN, accuracy_verdict, combine, detector_verdict,
                                          equivalent, factor_of, inflation_verdict, load_cell, pairwise_auc,
                                          relative_l1, reshape_verdict, round_games, significant)
from fedattr.report.stats import MeanCI, paired_stats
from fedattr.scenario import dump_resolved, scenario_from_dict

ROUNDS, CLIENTS, SEEDS = 4, 4, [0, 1, 2, 3, 4, 5]
#: the attacker's inflation per round, by seed (all positive: exact Shapley inflates)
INFL = {s: 0.01 + 0.002 * s for s in SEEDS}
#: rounds (out of ROUNDS) in which the detector flags the attacker in the attack arm, by seed
FLAGGED = {s: 1 + s % 4 for s in SEEDS}
#: TMC = exact Shapley x this factor, per arm: relative L1 error 0.03 (honest) and 0.10 (attack)
TMC_SCALE = {"honest": 1.03, "attack": 1.10}


def _scenario(name: str, **over) -> dict:
    data = {
        "name": name, "seeds": SEEDS, "num_clients": CLIENTS, "attacker_ids": [0], "rounds": ROUNDS,
        "attribution": {"evaluators": [{"name": "loo"}, {"name": "shapley"}, {"name": "tmc"}]},
        "arms": [{"name": "honest", "attack": "honest"}, {"name": "attack", "attack": "latent"}],
        "detectors": [{"name": "norm"}],
    }
    data.update(over)
    return data


def _job(arm: str, seed: int, finished: bool = True) -> tuple[list[dict], dict]:
    pids = list(range(CLIENTS))
    records, cum = [], {ev: {p: 0.0 for p in pids} for ev in ("loo", "shapley", "tmc")}
    for t in range(1, ROUNDS + 1):
        base = {p: 0.02 + 0.01 * p + 0.001 * t for p in pids}  # benign order fixed: 3 > 2 > 1
        real = dict(base)
        cf_vec = None
        if arm == "attack":
            real[0] = base[0] + INFL[seed]
            real[1] = base[1] - 0.005  # value taken from client 1
            cf_vec = dict(base)
        values = {"shapley": real, "loo": {p: v / 2 for p, v in real.items()},
                  "tmc": {p: v * TMC_SCALE[arm] for p, v in real.items()}}
        rec = {"schema_version": 2, "arm": arm, "seed": seed, "round": t, "attacker_ids": [0], "clients": pids,
               "test": {"accuracy": 0.9 - (0.001 * seed if arm == "attack" else 0.0)}, "values": values}
        if cf_vec is not None:
            vecs = {"shapley": cf_vec, "loo": {p: v / 2 for p, v in cf_vec.items()},
                    "tmc": {p: v * TMC_SCALE[arm] for p, v in cf_vec.items()}}
            rec["counterfactual_values"] = {ev: {0: v[0]} for ev, v in vecs.items()}
            rec["counterfactual_vectors"] = {ev: {0: v} for ev, v in vecs.items()}
        if arm == "attack":
            # round 1 warms up (no injection): its numbers must not count; then known alignments
            rec["attack_metrics"] = {0: {"active": True, "warming_up": t == 1, "target_precision": 1.0,
                                         "alignment_after": 99.0 if t == 1 else 0.1 * seed + 0.01 * t,
                                         "cosine_to_honest": 0.5}}
        # norm: higher = more suspicious; the attacker's score is the highest in every round
        scores = {0: 10.0, 1: 1.0, 2: 2.0, 3: 3.0}
        flag0 = arm == "attack" and t <= FLAGGED[seed]
        rec["detectors"] = {"norm": {"scores": scores, "ranks": {0: 1, 1: 4, 2: 3, 3: 2},
                                     "flags": {0: flag0, 1: False, 2: False, 3: False}}}
        for ev in cum:
            for p in pids:
                cum[ev][p] += values[ev][p]
        rec["cumulative"] = {ev: dict(v) for ev, v in cum.items()}
        records.append(RoundRecord.model_validate(rec).model_dump(mode="json"))
    summary = {"schema_version": 2, "status": "finished", "arm": arm, "seed": seed, "rounds": ROUNDS,
               "rounds_recorded": ROUNDS, "attacker_ids": [0], "final_test": records[-1]["test"],
               "cumulative": records[-1]["cumulative"]}
    return (records if finished else records[:2]), (summary if finished else None)


def make_cell(root: Path, name: str, unfinished: tuple[str, int] | None = None, **over) -> Path:
    """A cell results directory: scenario.json, environment.json, every (arm, seed) job."""
    path = root / name
    scenario = scenario_from_dict(_scenario(name, **over))
    path.mkdir(parents=True)
    (path / "scenario.json").write_text(json.dumps(dump_resolved(scenario)), encoding="utf-8")
    (path / "environment.json").write_text(json.dumps({"command": f"fedattr run {name}.toml", "commit": "abc",
                                                       "wall_s": 60.0}), encoding="utf-8")
    for seed in SEEDS:
        for arm in ("honest", "attack"):
            records, summary = _job(arm, seed, finished=(arm, seed) != unfinished)
            job = path / "jobs" / f"{arm}__s{seed}"
            job.mkdir(parents=True)
            (job / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
            if summary is not None:
                (job / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    root = tmp_path_factory.mktemp("breadth")
    return {"claim": make_cell(root, "breadth_claim"),
            "mlp": make_cell(root, "breadth_model_mlp", model="mlp"),
            "short": make_cell(root, "breadth_aggregator_fedmedian", unfinished=("attack", 5),
                               aggregation={"strategy": "fedmedian"})}


# --- the statistics ------------------------------------------------------------------------------

def test_a_perfectly_separating_detector_has_auc_1_and_the_flag_rate_difference_is_known(cells):
    cell = load_cell(cells["claim"])
    det = cell.detectors["norm"]
    assert det.auc_attack.values == (1.0,) * len(SEEDS)
    assert det.auc_honest.values == (1.0,) * len(SEEDS)  # the same scores in the honest arm
    assert det.difference.values == pytest.approx([FLAGGED[s] / ROUNDS for s in SEEDS])
    assert det.rate_honest.values == (0.0,) * len(SEEDS)
    # every seed positive, t interval above 0 and Wilcoxon p = 2/2^6 < 0.05: triggered
    assert det.verdict == "triggered"
    assert cell.verdict("evades") == FAILS


def _round(scores, ranks):
    return RoundRecord.model_validate({"arm": "a", "seed": 0, "round": 1, "attacker_ids": [0], "clients": [0, 1, 2],
                                       "detectors": {"d": {"scores": scores, "ranks": ranks,
                                                           "flags": {p: False for p in scores}}}})


def test_auc_reads_the_direction_from_the_ranks_and_counts_ties_as_half():
    high = _round({0: 5.0, 1: 1.0, 2: 2.0}, {0: 1, 1: 3, 2: 2})       # higher = more suspicious
    low = _round({0: -5.0, 1: 1.0, 2: 2.0}, {0: 1, 1: 2, 2: 3})       # lower = more suspicious
    benign_top = _round({0: 1.0, 1: 5.0, 2: 2.0}, {0: 3, 1: 1, 2: 2})
    tied = _round({0: 1.0, 1: 1.0, 2: 1.0}, {0: 1, 1: 2, 2: 3})
    middle = _round({0: 2.0, 1: 1.0, 2: 3.0}, {0: 2, 1: 3, 2: 1})
    assert pairwise_auc([high], "d", {"0"}) == 1.0
    assert pairwise_auc([low], "d", {"0"}) == 1.0
    assert pairwise_auc([benign_top], "d", {"0"}) == 0.0
    assert pairwise_auc([tied], "d", {"0"}) == 0.5
    assert pairwise_auc([middle], "d", {"0"}) == 0.5
    # pairs pooled over rounds: (1 + 1 + 0 + 0) / 4
    assert pairwise_auc([high, benign_top], "d", {"0"}) == 0.5
    assert math.isnan(pairwise_auc([high], "other", {"0"}))


def test_relative_l1_and_the_estimators_table_are_known(cells):
    assert relative_l1({"0": 1.1, "1": -0.9}, {"0": 1.0, "1": -1.0}) == pytest.approx(0.1)
    assert math.isnan(relative_l1({"0": 1.0}, {"0": 1.0, "1": 2.0}))  # a client missing
    assert math.isnan(relative_l1({"0": 0.0}, {"0": 0.0}))  # ||v|| = 0
    est = load_cell(cells["claim"]).estimators["tmc"]
    # per seed: 4 honest games (0.03) + 4 real and 4 counterfactual attack games (0.10)
    assert est.games == len(SEEDS) * 3 * ROUNDS
    assert est.median == pytest.approx(0.10)
    assert est.within == pytest.approx(1 / 3)
    assert est.worst == pytest.approx(0.10)
    # TMC's inflation is exact Shapley's x 1.1: same sign, both significant
    assert est.inflation.mean == pytest.approx(1.1 * est.exact_inflation.mean)
    assert est.agrees is True


def test_a_counterfactual_game_equal_to_the_real_one_is_counted_once():
    rec = RoundRecord.model_validate({
        "arm": "attack", "seed": 0, "round": 1, "attacker_ids": [0], "clients": [0, 1],
        "values": {"shapley": {0: 1.0, 1: 2.0}}, "counterfactual_vectors": {"shapley": {0: {0: 1.0, 1: 2.0}}}})
    assert len(round_games(rec, ["0"])) == 1
    rec.counterfactual_vectors["shapley"][0] = {0: 0.5, 1: 2.0}
    assert len(round_games(rec, ["0"])) == 2


def test_cell_inflation_accuracy_and_benign_effects_are_known(cells):
    cell = load_cell(cells["claim"])
    shap = cell.evaluators["shapley"]
    assert shap.counterfactual.values == pytest.approx([ROUNDS * INFL[s] for s in SEEDS])
    assert shap.paired.values == pytest.approx([ROUNDS * INFL[s] for s in SEEDS])
    assert shap.verdict == HOLDS and cell.verdict("inflates") == HOLDS
    assert shap.benign_change.values == pytest.approx([-0.005 * ROUNDS] * len(SEEDS))
    # the benign order 3 > 2 > 1 never changes: tau 1 in every seed, so no reshaping
    assert shap.benign_tau.values == (1.0,) * len(SEEDS)
    assert cell.verdict("reshapes") == FAILS
    assert cell.accuracy.values == pytest.approx([-0.001 * s for s in SEEDS])
    assert equivalent(cell.accuracy) and cell.verdict("accuracy") == HOLDS


def test_a_cell_whose_exact_inflation_interval_includes_zero_needs_12_seeds(cells):
    import dataclasses

    cell = load_cell(cells["claim"])
    assert cell.required == len(SEEDS) and not cell.short  # its interval lies above 0
    exact = cell.evaluators["shapley"]
    crossing = paired_stats([0.02, -0.01, 0.03, -0.02, 0.01, 0.0])
    assert crossing.t_low < 0 < crossing.t_high
    cell.evaluators["shapley"] = dataclasses.replace(exact, counterfactual=crossing)
    assert cell.required == 12 and cell.short
    below = paired_stats([-0.02, -0.03, -0.025, -0.02, -0.03, -0.028])
    cell.evaluators["shapley"] = dataclasses.replace(exact, counterfactual=below)
    assert cell.required == len(SEEDS) and not cell.short  # settled below 0 at 6 seeds


def test_an_unfinished_job_is_not_a_seed_and_the_cell_is_marked_short(cells):
    cell = load_cell(cells["short"])
    assert cell.seeds == SEEDS[:-1] and cell.planned == len(SEEDS) and cell.short
    assert not load_cell(cells["claim"]).short


# --- verdict rules on constructed statistics -----------------------------------------------------

def test_inflation_rule():
    assert inflation_verdict(paired_stats([0.05, 0.06, 0.04, 0.05, 0.07, 0.05])) == HOLDS
    # positive mean but 4 seeds: Wilcoxon p >= 0.125, not significant
    assert inflation_verdict(paired_stats([0.05, 0.06, 0.04, 0.05])) == OPEN
    assert inflation_verdict(paired_stats([-0.05, -0.06, -0.04, -0.05, -0.07, -0.05])) == FAILS
    # centred on 0 and tight: no inflation of 0.01 or more
    assert inflation_verdict(paired_stats([0.001, -0.001, 0.002, -0.002, 0.0005, -0.0005])) == FAILS
    # centred on 0 but wide: not settled
    assert inflation_verdict(paired_stats([0.1, -0.1, 0.2, -0.2, 0.05, -0.05])) == OPEN
    assert not significant(paired_stats([0.1]))


def test_accuracy_rule_and_equivalence():
    small = paired_stats([-0.005, 0.004, -0.002, 0.001, 0.0, -0.003])
    assert accuracy_verdict(small) == HOLDS and equivalent(small)
    better = paired_stats([0.05, 0.04, 0.06, 0.05, 0.03, 0.05])  # improves: preserved, not equivalent
    assert accuracy_verdict(better) == HOLDS and not equivalent(better)
    worse = paired_stats([-0.05, -0.04, -0.06, -0.05, -0.05, -0.045])
    assert accuracy_verdict(worse) == FAILS
    assert accuracy_verdict(paired_stats([0.05, -0.08, 0.02, -0.06])) == OPEN
    assert accuracy_verdict(paired_stats([0.0])) == OPEN


def test_reshape_detector_and_combine_rules():
    def taus(*v):
        return MeanCI(float(np.mean(v)), math.nan, math.nan, len(v), tuple(v), "bootstrap")

    assert reshape_verdict(taus(1.0, 1.0, 1.0)) == FAILS
    assert reshape_verdict(taus(0.8, 0.85, 0.9, 0.8, 0.75, 0.82)) == HOLDS
    assert reshape_verdict(taus(0.8, 1.0, 0.9, 1.0)) == OPEN
    assert detector_verdict(paired_stats([0.5, 0.25, 0.5, 0.75, 0.5, 0.25])) == "triggered"
    assert detector_verdict(paired_stats([0.0, 0.0, 0.05, -0.05, 0.0, 0.0])) == "not triggered"
    assert detector_verdict(paired_stats([0.5, -0.25, 0.5, -0.5])) == OPEN
    assert combine([HOLDS, HOLDS]) == HOLDS
    assert combine([HOLDS, OPEN]) == OPEN
    assert combine([HOLDS, OPEN, FAILS]) == FAILS
    assert combine([]) == OPEN


def test_the_factor_is_named_and_other_differences_listed():
    ref = {"model": "cnn", "data.dataset": "mnist5k", "aggregation.strategy": "fedavg", "train.batch_size": 32,
           "name": "claim"}
    assert factor_of({**ref, "name": "x"}, ref) == ("reference", "", [])
    assert factor_of({**ref, "model": "mlp"}, ref) == ("model", "mlp", [])
    assert factor_of({**ref, "data.dataset": "digits", "train.batch_size": 8}, ref) == \
        ("dataset", "digits", ["train.batch_size: 8 (32)"])
    label, value, _ = factor_of({**ref, "aggregation.strategy": "fedtrimmedavg", "aggregation.params.beta": 0.2}, ref)
    assert (label, value) == ("aggregator", "fedtrimmedavg (beta=0.2)")


# --- the page and the command --------------------------------------------------------------------

def test_the_page_names_factors_and_holds_the_verdicts(cells, tmp_path):
    found, reference = load_cells([cells["claim"], cells["mlp"], cells["short"]])
    assert reference is found[0]
    assert [(c.factor, c.value) for c in found] == [("reference", "the claim regime"), ("model", "mlp"),
                                                    ("aggregator", "fedmedian")]
    page = write_breadth_page([cells["claim"], cells["mlp"], cells["short"]], tmp_path / "breadth.md")
    md = page.read_text()
    assert "## Verdicts" in md and "## Cheap estimators against exact Shapley" in md
    assert "| inflates (reference cell) | **holds** |" in md
    assert "| across models | **holds** |" in md
    assert "| accuracy preserved | **holds** |" in md
    assert "| evades geometry-based detection | **does not hold** |" in md
    assert "| reshapes benign attribution | **does not hold** |" in md
    assert "5 of 6 **short**" in md
    assert "equivalent within 2 points" in md


def test_cli_breadth_writes_the_page_and_a_missing_dir_is_one_error(cells, tmp_path):
    runner = CliRunner()
    page = tmp_path / "b.md"
    ok = runner.invoke(app, ["report", "--breadth", str(cells["claim"]), str(cells["mlp"]), "--to", str(page)])
    assert ok.exit_code == 0, ok.output
    assert page.is_file() and "breadth_model_mlp" in page.read_text()
    bad = runner.invoke(app, ["report", "--breadth", str(cells["claim"]), str(tmp_path / "nope"), "--to", str(page)])
    assert bad.exit_code == 2
    assert "results directory not found" in bad.output and "Traceback" not in bad.output
    no_to = runner.invoke(app, ["report", "--breadth", str(cells["claim"])])
    assert no_to.exit_code == 2 and "--to" in no_to.output
    several = runner.invoke(app, ["report", str(cells["claim"]), str(cells["mlp"])])
    assert several.exit_code == 2 and "--breadth" in several.output
    with pytest.raises(UserError):
        load_cells([])


def test_without_a_reference_cell_factors_are_named_against_the_claim_regime(cells, tmp_path):
    found, reference = load_cells([cells["mlp"], cells["short"]])
    assert reference is None
    assert [(c.factor, c.value, c.other) for c in found] == [("model", "mlp", []), ("aggregator", "fedmedian", [])]
    md = write_breadth_page([cells["mlp"]], tmp_path / "p.md").read_text()
    # the mlp cell inflates, but "across models" needs the claim regime itself too
    assert "| across models | **not settled** |" in md and "**No reference cell**" in md


def test_the_attack_metrics_are_means_over_injecting_rounds_then_over_seeds(cells, tmp_path):
    from fedattr.report.breadth_stats import ATTACK_METRICS

    cell = load_cell(cells["claim"])
    # per seed the mean of 0.1 s + 0.01 t over rounds 2-4 (round 1 warms up): 0.1 s + 0.03
    assert cell.attack["alignment_after"].mean == pytest.approx(np.mean([0.1 * s + 0.03 for s in SEEDS]))
    assert cell.attack["alignment_after"].n == len(SEEDS)
    assert cell.attack["target_precision"].mean == pytest.approx(1.0)
    assert cell.attack["teacher_prob_after"].n == 0  # never recorded
    page = write_breadth_page([cells["claim"]], tmp_path / "breadth.md").read_text(encoding="utf-8")
    row = next(line for line in page.split("## The attack in each cell")[1].splitlines()
               if line.startswith("| breadth_claim"))
    assert list(ATTACK_METRICS.values())[2] in page and "| 1.0000 ± 0.0000 | — | 0.2800 ± " in row
