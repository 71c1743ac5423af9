"""benchmarks.scaling in a tiny form: real FedAvg rounds, exact tables, every logit anchoring."""

import pytest

from benchmarks.scaling import main


def test_scaling_benchmark_tiny(tmp_path, capsys):
    out = tmp_path / "scaling.json"
    res = main(["--error-sizes", "4", "--scale-sizes", "4", "--rounds", "1", "--seeds", "2", "--arms", "honest",
                "--reach", "--no-taylor", "--val-size", "60", "--pairs-grid", "0", "6", "--ridge-grid", "0.01", "--cap", "5", "--threads", "1",
                "--scale-evaluators", "logit_surrogate_shapley", "logit_pairs", "--json", str(out)])
    assert out.exists()
    rows = res["errors"]
    assert [r["metric"] for r in rows] == ["accuracy", "neg_ce"]
    for r in rows:
        # At n = 4 the 2n + 2 = 10 loo anchors and the min(6, 3n - 1) = 6 pairs are all 16 coalitions:
        # the pairs surrogate returns the real values everywhere, so its Shapley values are exact.
        assert r["logit_pairs_evals"] == 16 and r["logit_pairs_err"] == 0.0 and r["logit_pairs_worst"] == 0.0
        assert r["logit_loo_evals"] == 10
        assert r["logit_grand_err"] > 0.0  # the game is not logit-linear
        assert r["cv_default_evals"] >= 10
        grid = {g["n_pairs"]: g for g in r["pairs_grid"]}
        assert grid[6]["evals"] == 16 and grid[6]["mean"] == 0.0  # every coalition an anchor
        assert grid[0]["evals"] == 10 and grid[0]["mean"] > 0.0
    scale = res["scaling"][0]
    assert scale["n"] == 4 and scale["logit_pairs"]["evals"] == 16 and scale["logit_surrogate_shapley"]["evals"] == 10
    assert scale["gtg"] is None and scale["train_s"] > 0
    printed = capsys.readouterr().out
    assert "L-pairs" in printed and "L-pair/tr" in printed


def test_scaling_benchmark_surrogate_table(capsys):
    res = main(["--error-sizes", "--scale-sizes", "--surrogate-sizes", "12", "--surrogate-permutations", "48",
                "--reference-factor", "3", "--val-size", "40", "--threads", "1", "--surrogate-metrics", "neg_ce",
                "accuracy"])
    rows = res["surrogate"]
    assert [(r["n"], r["metric"]) for r in rows] == [(12, "neg_ce"), (12, "accuracy")]
    for r in rows:
        assert r["old_s"] > 0 and r["new_s"] > 0 and r["speedup"] == r["old_s"] / r["new_s"]
        assert 0 < r["new_err"] < 1 and 0 < r["old_err"] < 2 and r["reference_permutations"] == 144
    assert "old/new" in capsys.readouterr().out
