"""The defences table (benchmarks.defenses) on stored results: mitigations and costs from Flower
round records, and a study read together with its honest arm from another directory."""

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.defenses import main, mitigation_table
from fedattr.report import load_results, merge_results

RUN = Path(__file__).parent / "fixtures" / "results_small" / "run"


def _only(src: Path, dst: Path, arm: str) -> Path:
    root = Path(shutil.copytree(src, dst))
    for job in (root / "jobs").iterdir():
        if not job.name.startswith(f"{arm}__"):
            shutil.rmtree(job)
    sc = json.loads((root / "scenario.json").read_text())
    sc["arms"] = [a for a in sc["arms"] if a["name"] == arm]
    (root / "scenario.json").write_text(json.dumps(sc))
    return root


def test_mitigation_table_reads_flower_records():
    res = load_results(RUN)
    table = mitigation_table(res)
    assert set(table) == {"loo", "shapley"}
    assert table["shapley"]["left"] == pytest.approx(1.0)
    # cost from the honest arm's Flower round records (timings.evaluators_s, utility_evaluations)
    recs = [json.loads(line) for s in (0, 1) for line in (RUN / "jobs" / f"honest__s{s}" / "rounds.jsonl").open()]
    assert table["shapley"]["evals"] == pytest.approx(sum(r["utility_evaluations"]["shapley"] for r in recs) / len(recs))
    assert table["loo"]["seconds"] == pytest.approx(sum(r["timings"]["evaluators_s"]["loo"] for r in recs) / len(recs))


def test_the_table_of_a_study_and_its_honest_arm_in_another_directory(tmp_path, capsys):
    attack, honest = _only(RUN, tmp_path / "a", "attack"), _only(RUN, tmp_path / "h", "honest")
    merged = mitigation_table(merge_results([load_results(attack), load_results(honest)]))
    whole = mitigation_table(load_results(RUN))
    for ev in whole:
        assert merged[ev]["left"] == pytest.approx(whole[ev]["left"], nan_ok=True)
        assert merged[ev]["tau"].mean == pytest.approx(whole[ev]["tau"].mean, nan_ok=True)
    assert main(["--results", str(attack), str(honest)]) == 0
    assert "Mitigations on the latent-attack arm" in capsys.readouterr().out
    assert main(["--results", str(attack), str(RUN)]) == 2  # the attack arm twice


def test_removed_share_is_one_minus_left_with_an_interval_around_it():
    from benchmarks.defenses import removed_ci

    res = load_results(RUN)
    table = mitigation_table(res)
    assert removed_ci(res, "shapley") == pytest.approx((0.0, 0.0, 0.0))
    point, lo, hi = removed_ci(res, "loo")
    assert point == pytest.approx(1.0 - table["loo"]["left"])
    assert lo <= point <= hi


def test_holder_table_is_the_holders_value_under_each_evaluator_over_plain_shapley(tmp_path, capsys):
    from benchmarks.defenses import holder_table

    root = Path(shutil.copytree(RUN, tmp_path / "holder"))
    with pytest.raises(ValueError, match="genuine_holder"):
        holder_table(load_results(root))
    sc = json.loads((root / "scenario.json").read_text())
    sc["partition"].update(genuine_holder=1, withhold_classes=[8, 9])
    (root / "scenario.json").write_text(json.dumps(sc))
    res = load_results(root)
    kept = holder_table(res)
    assert kept["shapley"].mean == pytest.approx(1.0)
    jobs = [j for arm in res.arms for j in res.runs(arm) if j.finished]
    ratios = [j.cumulative("loo")["1"] / j.cumulative("shapley")["1"] for j in jobs]
    assert kept["loo"].mean == pytest.approx(sum(ratios) / len(ratios))
    assert main(["--results", str(RUN), "--holder", str(root)]) == 0
    assert "Genuine holder (client 1" in capsys.readouterr().out


def test_the_bar_rows_and_table_render_the_report_mitigations(tmp_path):
    import benchmarks.defenses as bd
    from fedattr.report.defenses import mitigations

    root = Path(shutil.copytree(RUN, tmp_path / "holder"))
    sc = json.loads((root / "scenario.json").read_text())
    sc["partition"].update(genuine_holder=1, withhold_classes=[8, 9])
    (root / "scenario.json").write_text(json.dumps(sc))
    res, holder = load_results(RUN), load_results(root)
    rows = bd.bar_rows(res, holder)
    (loo,) = mitigations(res, holder)  # every evaluator but plain Shapley
    assert list(rows) == ["loo"]
    assert rows["loo"].pop("fails") == loo.fails and set(loo.fails) == {"removed", "tau"}
    assert rows["loo"] == pytest.approx({"removed": loo.removed.point, "tau": loo.benign_tau.mean,
                                         "kept": loo.kept.mean})
    out = bd.render_bar(res, holder)
    assert "| loo " in out and loo.verdict() in out
