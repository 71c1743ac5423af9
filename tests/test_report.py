"""Reports: statistics helpers, and report.md/plots on the stored results_small fixture.

Expected numbers are recomputed here from the fixture's JSON files with numpy/scipy, not with
the report's own helpers.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fedattr.core.errors import UserError
from fedattr.report import (fmt_ci, fmt_num, kendall_between, load_results, markdown_to_html, mean_ci,
                            summarize, write_report)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SMALL = FIXTURES / "results_small"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVALUATORS = ["loo", "shapley"]
SEEDS = [0, 1]


@pytest.fixture()
def run_dir(tmp_path):
    """A writable copy of the stored scenario results."""
    return Path(shutil.copytree(SMALL / "run", tmp_path / "run"))


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A copy of the stored scenario results, reported once for the read-only table tests."""
    root = Path(shutil.copytree(SMALL / "run", tmp_path_factory.mktemp("reported") / "run"))
    write_report(root)
    return root


@pytest.fixture()
def sweep_dir(tmp_path):
    """A writable copy of the stored sweep results."""
    return Path(shutil.copytree(SMALL / "sweep", tmp_path / "sweep"))


def summary_of(root: Path, arm: str, seed: int) -> dict:
    """A job's summary.json."""
    return json.loads((root / "jobs" / f"{arm}__s{seed}" / "summary.json").read_text())


def expected(values, signed: bool = True) -> str:
    """mean ± t-CI half-width, formatted like the report (computed independently)."""
    x = np.asarray(list(values), dtype=float)
    if len(x) == 1:
        return (f"{x[0]:+.4f}" if signed else f"{x[0]:.4f}") + " (n=1)"
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return (f"{x.mean():+.4f}" if signed else f"{x.mean():.4f}") + f" ± {half:.4f}"


def table_rows(md: str, heading: str) -> list[list[str]]:
    """Rows (cells) of the first table after a '## heading' line of a markdown report."""
    lines = md.splitlines()
    i = lines.index(f"## {heading}")
    while not lines[i].startswith("|"):
        i += 1
    rows = []
    while i < len(lines) and lines[i].startswith("|"):
        rows.append([c.strip() for c in lines[i].strip("|").split("|")])
        i += 1
    return rows[2:]  # without header and separator


# --------------------------------------------------------------------------- statistics


def test_mean_ci_uses_the_t_distribution():
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.mean == pytest.approx(2.0)
    assert ci.half == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert ci.n == 3
    ci90 = mean_ci([1.0, 2.0, 3.0], confidence=0.9)
    assert ci90.half == pytest.approx(2.919985580355516 / math.sqrt(3))


def test_mean_ci_single_value_empty_and_non_finite():
    one = mean_ci([0.7])
    assert (one.mean, one.n) == (0.7, 1) and math.isnan(one.half)
    none = mean_ci([])
    assert none.n == 0 and math.isnan(none.mean)
    mixed = mean_ci([1.0, None, float("nan"), 3.0])
    assert (mixed.mean, mixed.n) == (2.0, 2)
    assert mean_ci([0.5, 0.5]).half == 0.0


def test_mean_ci_as_dict_is_json_ready():
    d = mean_ci([1.0]).as_dict()
    assert d == {"mean": 1.0, "ci95": None, "n": 1, "values": [1.0]}
    json.dumps(d, allow_nan=False)


def test_fmt_ci():
    assert fmt_ci(mean_ci([])) == "—"
    assert fmt_ci(mean_ci([0.123456])) == "+0.1235 (n=1)"
    assert fmt_ci(mean_ci([1.0, 2.0, 3.0])) == "+2.0000 ± 2.4841"
    assert fmt_ci(mean_ci([0.5, 0.7]), signed=False) == "0.6000 ± 1.2706"


def test_one_number_format_for_every_magnitude():
    # the three numbers issue 8 found side by side in one column
    assert [fmt_num(x) for x in (2.302e-05, -0.01667, 0.026)] == ["+0.0000", "-0.0167", "+0.0260"]
    assert fmt_num(None) == fmt_num(float("nan")) == "—"
    assert fmt_num(3, signed=False) == "3.0000"


def test_kendall_between_dicts():
    a = {"1": 0.1, "2": 0.2, "3": 0.3, "4": 0.4}
    assert kendall_between(a, dict(a)) == pytest.approx(1.0)
    assert kendall_between(a, {k: -v for k, v in a.items()}) == pytest.approx(-1.0)
    b = {"1": 0.1, "2": 0.3, "3": 0.2, "4": 0.4}
    assert kendall_between(a, b) == pytest.approx(stats.kendalltau([1, 2, 3, 4],
                                                                   [1, 3, 2, 4]).statistic)
    # restricted keys and integer/str keys mix
    assert kendall_between({1: 1.0, 2: 2.0, 3: 0.0}, {"1": 1.0, "2": 2.0, "3": 9.0},
                           keys=[1, 2]) == pytest.approx(1.0)
    assert math.isnan(kendall_between(a, {"1": 1.0}))
    assert math.isnan(kendall_between(a, {k: 1.0 for k in a}))


# --------------------------------------------------------------------------- fixture


def test_fixture_is_small_and_regenerates_identically(tmp_path):
    files = [p for p in SMALL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 100_000
    sys.path.insert(0, str(FIXTURES))
    try:
        import make_results_small
    finally:
        sys.path.remove(str(FIXTURES))
    fresh = make_results_small.make(tmp_path / "fresh")
    for p in files:
        assert (fresh / p.relative_to(SMALL)).read_bytes() == p.read_bytes(), p
    assert len([p for p in fresh.rglob("*") if p.is_file()]) == len(files)


def test_load_results_reads_arms_seeds_evaluators(run_dir):
    res = load_results(run_dir)
    assert res.arms == ["honest", "attack"] and res.seeds == SEEDS
    assert res.evaluators == EVALUATORS and res.attacker_ids == ["0"]
    assert res.honest_arm == "honest" and len(res.jobs) == 4
    assert res.clients() == ["0", "1", "2", "3"]
    assert res.runs("attack")[0].accuracy_curve()[0] == 0.1


# --------------------------------------------------------------------------- scenario report


def test_report_writes_markdown_html_and_plots(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.md"
    md = path.read_text()
    html = (run_dir / "report.html").read_text()
    plots = sorted((run_dir / "plots").glob("*.png"))
    names = {p.name for p in plots}
    assert {"accuracy.png", "cumulative_loo.png", "cumulative_shapley.png", "attacker_0.png",
            "attacker_0_rounds.png", "kendall_tau.png", "label_coverage.png"} <= names
    for p in plots:
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, p
        assert f"(plots/{p.name})" in md
        assert f'src="plots/{p.name}"' in html
    assert "<table>" in html and "<h2>Final test accuracy</h2>" in html
    assert "<code>" in html


def test_final_accuracy_table(reported):
    md = (reported / "report.md").read_text()
    rows = {r[0]: r for r in table_rows(md, "Final test accuracy")}
    honest = [summary_of(reported, "honest", s)["final_test"]["accuracy"] for s in SEEDS]
    for arm, attack in [("honest", "honest"), ("attack", "latent")]:
        accs = [summary_of(reported, arm, s)["final_test"]["accuracy"] for s in SEEDS]
        delta = "—" if arm == "honest" else expected([a - h for a, h in zip(accs, honest)])
        assert rows[arm] == [arm, attack, expected(accs, signed=False), delta, "2"]


def test_attacker_value_table(reported):
    md = (reported / "report.md").read_text()
    rows = {(r[1], r[2]): r for r in table_rows(md, "Attacker value")}
    for arm in ["honest", "attack"]:
        for ev in EVALUATORS:
            sums = [summary_of(reported, arm, s) for s in SEEDS]
            assert rows[(arm, ev)] == [
                "0", arm, ev, expected(s["cumulative"][ev]["0"] for s in sums),
                expected(s["cumulative_normalised"][ev]["0"] for s in sums),
                expected((s["ranks"][ev]["0"] for s in sums), signed=False)]


def test_inflation_table(reported):
    md = (reported / "report.md").read_text()
    rows = {(r[1], r[2]): r for r in table_rows(md, "Inflation")}
    assert set(rows) == {("attack", ev) for ev in EVALUATORS}
    for ev in EVALUATORS:
        cf = [summary_of(reported, "attack", s)["counterfactual_inflation"][ev]["0"] for s in SEEDS]
        paired = [summary_of(reported, "attack", s)["cumulative"][ev]["0"]
                  - summary_of(reported, "honest", s)["cumulative"][ev]["0"] for s in SEEDS]
        assert rows[("attack", ev)] == ["0", "attack", ev, expected(cf), expected(paired)]
        assert expected(cf) != expected(paired)  # the fixture keeps them apart


def test_kendall_table(reported):
    md = (reported / "report.md").read_text()
    rows = {(r[0], r[1]): r for r in table_rows(md, "Benign ranking change")}
    for ev in EVALUATORS:
        taus = []
        for s in SEEDS:
            h = summary_of(reported, "honest", s)["cumulative"][ev]
            a = summary_of(reported, "attack", s)["cumulative"][ev]
            benign = ["1", "2", "3"]
            taus.append(stats.kendalltau([h[k] for k in benign], [a[k] for k in benign])[0])
        assert rows[("attack", ev)][2] == expected(taus)


def test_hyperparameters_of_every_arm_are_listed(reported):
    md = (reported / "report.md").read_text()
    rows = {r[0]: r for r in table_rows(md, "Arms and hyper-parameters")}
    assert rows["attack"] == ["attack", "latent", "1", "True", '{"synthetic_fraction": 0.25}']
    assert rows["honest"][1] == "honest"
    assert "```toml" in md and 'params = {synthetic_fraction = 0.25}' in md
    assert "wall time 12.0 s (25% of it start-up)" in md


def test_summary_is_json_and_matches_the_tables(run_dir):
    summary = summarize(run_dir)
    json.dumps(summary, allow_nan=False)
    assert summary["kind"] == "scenario" and summary["jobs"] == {"found": 4, "finished": 4, "failed": 0,
                                                                 "expected": 4}
    st = summary["attacker"]["attack"]["shapley"]["0"]
    assert st["value"]["n"] == 2
    assert st["value"]["values"] == [summary_of(run_dir, "attack", s)["cumulative"]["shapley"]["0"]
                                     for s in SEEDS]
    assert summary["attacker"]["honest"]["loo"]["0"]["paired_inflation"]["n"] == 0


def test_report_is_rewritable_without_rerunning(run_dir):
    first = write_report(run_dir).read_text()
    assert write_report(run_dir).read_text() == first


def test_single_seed_shows_n_equals_1(run_dir):
    for arm in ["honest", "attack"]:
        shutil.rmtree(run_dir / "jobs" / f"{arm}__s1")
    md = write_report(run_dir).read_text()
    acc = summary_of(run_dir, "attack", 0)["final_test"]["accuracy"]
    rows = {r[0]: r for r in table_rows(md, "Final test accuracy")}
    assert rows["attack"][2] == f"{acc:.4f} (n=1)"
    assert "± " not in rows["attack"][2]


def test_unfinished_job_is_reported_from_its_last_round(run_dir):
    (run_dir / "jobs" / "attack__s1" / "summary.json").unlink()
    md = write_report(run_dir).read_text()
    assert "3 finished of 4 planned (1 unfinished" in md
    last = json.loads((run_dir / "jobs" / "attack__s1" / "rounds.jsonl").read_text()
                      .splitlines()[-1])
    accs = [summary_of(run_dir, "attack", 0)["final_test"]["accuracy"], last["test"]["accuracy"]]
    rows = {r[0]: r for r in table_rows(md, "Final test accuracy")}
    assert rows["attack"][2] == expected(accs, signed=False)
    # the counterfactual inflation is re-summed from the round records
    cf = [summary_of(run_dir, "attack", 0)["counterfactual_inflation"]["loo"]["0"],
          sum(r["values"]["loo"]["0"] - r["counterfactual_values"]["loo"]["0"]
              for r in map(json.loads, (run_dir / "jobs" / "attack__s1" / "rounds.jsonl")
                           .read_text().splitlines()))]
    rows = {(r[1], r[2]): r for r in table_rows(md, "Inflation")}
    assert rows[("attack", "loo")][3] == expected(cf)


def test_not_a_results_directory(tmp_path):
    with pytest.raises(UserError, match="not found"):
        write_report(tmp_path / "missing")
    with pytest.raises(UserError, match="scenario.json"):
        write_report(tmp_path)


def test_no_jobs_yet(tmp_path, run_dir):
    shutil.rmtree(run_dir / "jobs")
    with pytest.raises(UserError, match="nothing to report"):
        write_report(run_dir)


# --------------------------------------------------------------------------- sweep report


def test_sweep_report(sweep_dir):
    path = write_report(sweep_dir)
    md = path.read_text()
    assert path == sweep_dir / "report.md" and (sweep_dir / "report.html").exists()
    plot = sweep_dir / "plots" / "sweep_partition_alpha.png"
    assert plot.read_bytes().startswith(PNG_MAGIC) and plot.stat().st_size > 2000
    for p in ["p000", "p001"]:
        assert (sweep_dir / "points" / p / "report.md").exists()
        assert f"(points/{p}/report.md)" in md
    assert "wall time 30.0 s (20% of it start-up)" in md
    rows = table_rows(md, "loo")
    attack = {r[1]: r for r in rows if r[2] == "attack"}
    for alpha, p in [("0.1", "p000"), ("0.5", "p001")]:
        root = sweep_dir / "points" / p
        paired = [summary_of(root, "attack", s)["cumulative"]["loo"]["0"]
                  - summary_of(root, "honest", s)["cumulative"]["loo"]["0"] for s in SEEDS]
        cf = [summary_of(root, "attack", s)["counterfactual_inflation"]["loo"]["0"]
              for s in SEEDS]
        assert attack[alpha][6:8] == [expected(cf), expected(paired)]


def test_sweep_summary(sweep_dir):
    summary = summarize(sweep_dir)
    json.dumps(summary, allow_nan=False)
    assert summary["kind"] == "sweep" and summary["grid"] == {"partition.alpha": ["0.1", "0.5"]}
    assert [p["overrides"] for p in summary["points"]] == [{"partition.alpha": "0.1"},
                                                           {"partition.alpha": "0.5"}]
    assert all(p["summary"]["kind"] == "scenario" for p in summary["points"])


def test_sweep_with_a_missing_point_still_reports(sweep_dir):
    shutil.rmtree(sweep_dir / "points" / "p001")
    md = write_report(sweep_dir).read_text()
    assert "not a scenario results directory" in md


# --------------------------------------------------------------------------- html


def test_markdown_to_html_subset():
    page = markdown_to_html("# T\n\ntext with `code` & [link](x.md)\n\n- a\n- b\n\n"
                            "| h1 | h2 |\n|---|---|\n| 1 \\| 2 | ![p](p.png) |\n\n```\n<x>\n```\n")
    assert "<h1>T</h1>" in page and "<code>code</code>" in page and "&amp;" in page
    assert '<a href="x.md">link</a>' in page and "<li>a</li>" in page
    assert "<th>h1</th>" in page and "<td>1 | 2</td>" in page
    assert '<img alt="p" src="p.png">' in page and "&lt;x&gt;" in page


def _with_detector_records(tmp_path):
    """results_small/run with a `norm` detector that flags the attacker (0) in every attack-arm
    round and benign client 3 in round 1 of every job."""
    run = tmp_path / "run"
    shutil.copytree(SMALL / "run", run)
    for path in sorted((run / "jobs").glob("*/rounds.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for rec in records:
            attack = rec["arm"] == "attack"
            flags = {str(p): (p == 0 and attack) or (p == 3 and rec["round"] == 1) for p in rec["clients"]}
            scores = {str(p): (10.0 if p == 0 and attack else 1.0 + 0.1 * p) for p in rec["clients"]}
            rec["detectors"] = {"norm": {"scores": scores, "flags": flags,
                                         "ranks": {str(p): i + 1 for i, p in enumerate(rec["clients"])},
                                         "mode": "observe", "info": {}}}
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_detector_flag_rates_and_plot(tmp_path):
    from fedattr.report import write_report
    from fedattr.report.detectors import detector_rows

    run = _with_detector_records(tmp_path)
    headers, rows = detector_rows(load_results(run))
    by_arm = {r[1]: r for r in rows}
    assert headers[2] == "attacker flag rate" and set(by_arm) == {"attack", "honest"}
    # attack arm: attacker flagged in every round; benign: 1 of 3 benign clients in 1 of 3 rounds.
    assert by_arm["attack"][2].startswith("1.0000") and by_arm["honest"][2].startswith("0.0000")
    assert by_arm["attack"][3].startswith(fmt_num(1 / 9, signed=False))
    text = write_report(run).read_text()
    assert "## Detectors" in text and "detector_scores.png" in text
    assert (run / "plots" / "detector_scores.png").stat().st_size > 0


def _split_arm(src: Path, dst: Path, keep: str) -> Path:
    """A copy of results ``src`` that holds only arm ``keep`` (jobs and scenario.json)."""
    root = Path(shutil.copytree(src, dst))
    for job in (root / "jobs").iterdir():
        if not job.name.startswith(f"{keep}__"):
            shutil.rmtree(job)
    sc = json.loads((root / "scenario.json").read_text())
    sc["arms"] = [a for a in sc["arms"] if a["name"] == keep]
    (root / "scenario.json").write_text(json.dumps(sc))
    return root


def test_merge_results_pairs_the_arms_of_several_directories(run_dir, tmp_path):
    from fedattr.report import merge_results

    whole = load_results(run_dir)
    honest = _split_arm(run_dir, tmp_path / "h", "honest")
    attack = _split_arm(run_dir, tmp_path / "a", "attack")
    merged = merge_results([load_results(attack), load_results(honest)])
    assert merged.arms == ["attack", "honest"] and merged.honest_arm == "honest"
    assert merged.seeds == whole.seeds and set(merged.jobs) == set(whole.jobs)
    assert [a["name"] for a in merged.scenario["arms"]] == ["attack", "honest"]
    for key, job in whole.jobs.items():
        assert merged.jobs[key].cumulative("shapley") == job.cumulative("shapley")

    with pytest.raises(UserError, match="arm 'attack' is in both"):
        merge_results([load_results(attack), load_results(run_dir)])
    sc = json.loads((honest / "scenario.json").read_text())
    sc["rounds"] = sc["rounds"] + 1
    (honest / "scenario.json").write_text(json.dumps(sc))
    with pytest.raises(UserError, match="not comparable.*rounds"):
        merge_results([load_results(attack), load_results(honest)])
