"""Reports: statistics helpers, report.md/report.html/stats.json/plots on the stored results_small
fixture, the ``fedattr report`` command and results pages.

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
from typer.testing import CliRunner

from fedattr.cli.app import app
from fedattr.core.errors import UserError
from fedattr.report import (fmt_ci, fmt_num, kendall_between, load_results, markdown_to_html, mean_ci,
                            summarize, write_page, write_report)

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


def expected_boot(values, signed: bool = True) -> str:
    """mean [lo, hi], the 95% percentile bootstrap interval of the mean (scipy, seeded as the report)."""
    x = np.asarray(list(values), dtype=float)
    fmt = (lambda v: f"{v:+.4f}") if signed else (lambda v: f"{v:.4f}")
    if np.ptp(x) == 0:
        lo = hi = x.mean()
    else:
        ci = stats.bootstrap((x,), np.mean, confidence_level=0.95, n_resamples=9999, method="percentile",
                             random_state=np.random.default_rng(0)).confidence_interval
        lo, hi = ci.low, ci.high
    return f"{fmt(x.mean())} [{fmt(lo)}, {fmt(hi)}]"


def strict_json(path: Path):
    """A JSON file parsed with NaN and Infinity refused."""
    def refuse(name):
        raise ValueError(f"{name} in {path}")
    return json.loads(path.read_text(), parse_constant=refuse)


def table_rows(md: str, heading: str) -> list[list[str]]:
    """Rows (cells) of the first table after a '## heading' line of a markdown report."""
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line in (f"## {heading}", f"### {heading}"))
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


def test_mean_ci_as_dict():
    d = mean_ci([1.0, 3.0]).as_dict()
    assert d["mean"] == 2.0 and d["n"] == 2 and d["method"] == "t" and d["values"] == [1.0, 3.0]
    assert d["low"] == pytest.approx(2.0 - stats.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2))


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
    # the per-seed inflation plot heads the plots
    assert md.split("## Plots", 1)[1].split("![", 2)[1].split("](")[1].startswith("plots/per_seed_inflation.png")
    assert "<table>" in html and "<h2>Final test accuracy</h2>" in html
    assert "<code>" in html


def test_report_html_is_self_contained(run_dir):
    import re

    write_report(run_dir)
    html = (run_dir / "report.html").read_text()
    srcs = re.findall(r'<img[^>]*src="([^"]*)"', html)
    assert len(srcs) == len(list((run_dir / "plots").glob("*.png")))
    assert all(src.startswith("data:image/png;base64,") for src in srcs)
    import base64

    first = base64.b64decode(srcs[0].split(",", 1)[1])
    assert first == (run_dir / "plots" / "per_seed_inflation.png").read_bytes()
    assert "href=\"plots/" not in html and "<link" not in html and "<script" not in html


def test_stats_json_carries_the_claim_statistics(run_dir):
    write_report(run_dir)
    data = strict_json(run_dir / "stats.json")
    st = data["attacker"]["attack"]["shapley"]["0"]
    cf = [summary_of(run_dir, "attack", s)["counterfactual_inflation"]["shapley"]["0"] for s in SEEDS]
    infl = st["counterfactual_inflation"]
    assert infl["n"] == 2 and infl["mean"] == pytest.approx(np.mean(cf))
    half = stats.t.ppf(0.975, 1) * np.std(cf, ddof=1) / math.sqrt(2)
    assert infl["t_ci"] == pytest.approx([np.mean(cf) - half, np.mean(cf) + half])
    assert infl["min_attainable_p"] == 0.5 and infl["wilcoxon_p"] == pytest.approx(
        stats.wilcoxon(cf).pvalue)
    assert infl["positive_seeds"] == sum(c > 0 for c in cf)
    assert infl["bootstrap_ci"][0] <= infl["mean"] <= infl["bootstrap_ci"][1]
    assert infl["detectable_effect"] > 0
    paired = [summary_of(run_dir, "attack", s)["cumulative"]["shapley"]["0"]
              - summary_of(run_dir, "honest", s)["cumulative"]["shapley"]["0"] for s in SEEDS]
    assert st["paired_inflation"]["values"] == pytest.approx(paired)
    assert {r["evaluator"] for r in data["claim"]} == set(EVALUATORS)
    assert data["jobs"] == {"expected": 4, "found": 4, "finished": 4, "unfinished": 0, "failed": 0}
    assert data["in_progress"] is False and data["unfinished"] == []
    # honest-arm statistics that do not exist are null, never NaN
    assert data["attacker"]["honest"]["loo"]["0"]["paired_inflation"]["mean"] is None


def test_bounded_quantities_have_intervals_inside_their_range(run_dir):
    summary = summarize(run_dir)
    for arm in summary.arms:
        acc = summary.final_accuracy[arm]
        assert acc.method == "bootstrap" and 0 <= acc.low <= acc.high <= 1
        for ev in summary.evaluators:
            rank = summary.attacker[arm][ev]["0"].rank
            assert rank.method == "bootstrap" and 1 <= rank.low <= rank.high <= 4
            if arm != summary.honest_arm:
                tau = summary.kendall_tau[arm][ev]
                assert -1 <= tau.low <= tau.high <= 1


def test_final_accuracy_table(reported):
    md = (reported / "report.md").read_text()
    rows = {r[0]: r for r in table_rows(md, "Final test accuracy")}
    honest = [summary_of(reported, "honest", s)["final_test"]["accuracy"] for s in SEEDS]
    for arm, attack in [("honest", "honest"), ("attack", "latent")]:
        accs = [summary_of(reported, arm, s)["final_test"]["accuracy"] for s in SEEDS]
        delta = "—" if arm == "honest" else expected([a - h for a, h in zip(accs, honest)])
        assert rows[arm] == [arm, attack, expected_boot(accs, signed=False), delta, "2"]


def test_attacker_value_table(reported):
    md = (reported / "report.md").read_text()
    rows = {(r[1], r[2]): r for r in table_rows(md, "Attacker value")}
    for arm in ["honest", "attack"]:
        for ev in EVALUATORS:
            sums = [summary_of(reported, arm, s) for s in SEEDS]
            assert rows[(arm, ev)] == [
                "0", arm, ev, expected(s["cumulative"][ev]["0"] for s in sums),
                expected(s["cumulative_normalised"][ev]["0"] for s in sums),
                expected_boot((s["ranks"][ev]["0"] for s in sums), signed=False)]


def t_interval(values) -> str:
    x = np.asarray(list(values), dtype=float)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return f"[{x.mean() - half:+.4f}, {x.mean() + half:+.4f}]"


def test_result_table_states_the_claim_statistics(reported):
    md = (reported / "report.md").read_text()
    assert md.index("## Result: attacker inflation") < md.index("## Final test accuracy")
    rows = {(r[1], r[3]): r for r in table_rows(md, "Result: attacker inflation")}
    assert set(rows) == {(ev, kind) for ev in EVALUATORS for kind in ("counterfactual", "paired")}
    for ev in EVALUATORS:
        cf = [summary_of(reported, "attack", s)["counterfactual_inflation"][ev]["0"] for s in SEEDS]
        paired = [summary_of(reported, "attack", s)["cumulative"][ev]["0"]
                  - summary_of(reported, "honest", s)["cumulative"][ev]["0"] for s in SEEDS]
        for kind, xs in (("counterfactual", cf), ("paired", paired)):
            row = rows[(ev, kind)]
            assert row[:6] == ["attack", ev, "0", kind, f"{np.mean(xs):+.4f}", t_interval(xs)]
            assert row[7:10] == [f"{stats.wilcoxon(xs).pvalue:.4f}", "0.5000", f"{sum(x > 0 for x in xs)}/2"]
        assert t_interval(cf) != t_interval(paired)  # the fixture keeps them apart
    assert "smallest attainable two-sided Wilcoxon p is 2/2^2 = 0.5" in md


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
        assert rows[("attack", ev)][2] == expected_boot(taus)


def test_hyperparameters_of_every_arm_are_listed(reported):
    md = (reported / "report.md").read_text()
    rows = {r[0]: r for r in table_rows(md, "Arms and hyper-parameters")}
    assert rows["attack"] == ["attack", "latent", "1", "True", "synthetic_fraction = 0.25"]
    assert rows["honest"][1] == "honest"
    section = md.split("## Arms and hyper-parameters", 1)[1].split("### Resolved scenario", 1)[0]
    settings = {c[0]: c[1] for c in ([x.strip() for x in line.strip("|").split("|")]
                                     for line in section.splitlines() if line.startswith("|")) if len(c) == 2}
    assert settings["train.lr"] == "0.05" and settings["partition.kind"] == "dirichlet"
    assert "{" not in "".join(settings.values())  # no raw JSON
    assert "```toml" in md and "synthetic_fraction = 0.25" in md.split("```toml")[1]
    assert "wall time 12.0 s (25% of it start-up)" in md


def test_summary_is_typed_and_matches_the_tables(run_dir):
    summary = summarize(run_dir)
    assert summary.kind == "scenario" and (summary.jobs.found, summary.jobs.finished, summary.jobs.failed,
                                           summary.jobs.expected) == (4, 4, 0, 4)
    st = summary.attacker["attack"]["shapley"]["0"]
    assert st.value.n == 2
    assert list(st.value.values) == [summary_of(run_dir, "attack", s)["cumulative"]["shapley"]["0"] for s in SEEDS]
    assert summary.attacker["honest"]["loo"]["0"].paired_inflation.n == 0
    json.dumps(summary.as_dict(), allow_nan=False)


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
    assert "smallest attainable two-sided Wilcoxon p is 2/2^1 = 1" in md
    assert "± " not in rows["attack"][2]


def _stop_after_round_1(run_dir: Path, job: str = "attack__s1") -> dict:
    """Make ``job`` a job that stopped after round 1 of 3 (no summary, one round record); return that record."""
    rounds = run_dir / "jobs" / job / "rounds.jsonl"
    first = rounds.read_text().splitlines()[0]
    rounds.write_text(first + "\n")
    (run_dir / "jobs" / job / "summary.json").unlink()
    return json.loads(first)


def test_unfinished_job_is_flagged_and_labelled_with_the_last_round_reached(run_dir):
    first = _stop_after_round_1(run_dir)
    md = write_report(run_dir).read_text()
    assert "3 finished of 4 planned; 1 unfinished" in md
    assert "> **Unfinished:** 1 job(s) stopped before their last round" in md
    accs = [summary_of(run_dir, "attack", 0)["final_test"]["accuracy"], first["test"]["accuracy"]]
    rows = {r[0]: r for r in table_rows(md, "Final test accuracy")}
    assert rows["attack"][2] == expected_boot(accs, signed=False) + ", last round reached (1 of 3)"
    assert rows["honest"][2] == expected_boot([summary_of(run_dir, "honest", s)["final_test"]["accuracy"]
                                               for s in SEEDS], signed=False)
    assert table_rows(md, "Jobs") == [["attack", "1", "last round reached (1 of 3)"]]
    # the counterfactual inflation of the unfinished job is summed over the rounds it reached
    cf = [summary_of(run_dir, "attack", 0)["counterfactual_inflation"]["loo"]["0"],
          first["values"]["loo"]["0"] - first["counterfactual_values"]["loo"]["0"]]
    rows = {(r[1], r[3]): r for r in table_rows(md, "Result: attacker inflation")}
    assert rows[("loo", "counterfactual")][0] == "attack (last round reached (1 of 3))"
    assert rows[("loo", "counterfactual")][4] == f"{np.mean(cf):+.4f}"
    unfinished = strict_json(run_dir / "stats.json")["unfinished"]
    assert unfinished == [{"arm": "attack", "seed": 1, "last_round": 1, "planned_rounds": 3}]


def test_report_command_flags_an_unfinished_job_in_the_terminal(run_dir):
    _stop_after_round_1(run_dir)
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "unfinished jobs" in text and "last round reached (1 of 3)" in text
    assert "statistics:" in text and (run_dir / "stats.json").is_file()


def test_report_of_a_directory_held_by_a_live_run_says_in_progress(run_dir):
    import fcntl
    import os

    fd = os.open(run_dir / ".fedattr.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a live run holds (fedattr.launch.ownership)
        assert summarize(run_dir).in_progress
        md = write_report(run_dir).read_text()
        assert "> **In progress:** a live run holds this directory" in md
        result = CliRunner().invoke(app, ["report", str(run_dir)])
        assert result.exit_code == 0 and "in progress" in " ".join(result.output.split())
    finally:
        os.close(fd)
    assert not summarize(run_dir).in_progress
    assert "In progress" not in write_report(run_dir).read_text()


def test_results_page_has_its_provenance_and_relative_plots(run_dir, tmp_path):
    page = tmp_path / "docs" / "results" / "small.md"
    result = CliRunner().invoke(app, ["report", str(run_dir), "--to", str(page)])
    assert result.exit_code == 0, result.output
    md = page.read_text()
    head = md.split("## Result", 1)[0]
    assert "- generated 20" in head and "UTC" not in head or "+00:00" in head
    assert "- page written at commit " in head
    assert "- results produced at commit not recorded by: `fedattr run small.toml`" in head  # environment.json
    assert "- machine: " in head and "CPUs" in head and "GFLOP/s" in head
    plots = sorted((tmp_path / "docs" / "results" / "small").glob("*.png"))
    assert plots and all(f"(small/{p.name})" in md for p in plots)
    assert not (run_dir / "report.md").exists()  # the page only
    bad = CliRunner().invoke(app, ["report", str(run_dir), "--to", str(tmp_path / "x.txt")])
    assert bad.exit_code == 2 and "markdown" in bad.output


def test_results_page_of_a_run_without_a_stored_command_names_the_report_command(run_dir, tmp_path):
    env = json.loads((run_dir / "environment.json").read_text())
    del env["command"]
    (run_dir / "environment.json").write_text(json.dumps(env))
    page = write_page(run_dir, tmp_path / "p.md", command="fedattr report R --to p.md")
    assert "- results produced at commit not recorded by: `fedattr report R --to p.md`" in page.read_text()


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
        assert attack[alpha][6] == expected(cf) and attack[alpha][8] == expected(paired)


def test_sweep_summary(sweep_dir):
    summary = summarize(sweep_dir)
    assert summary.kind == "sweep" and summary.grid == {"partition.alpha": ["0.1", "0.5"]}
    assert [p.overrides for p in summary.points] == [{"partition.alpha": "0.1"}, {"partition.alpha": "0.5"}]
    assert all(p.summary.kind == "scenario" for p in summary.points)
    write_report(sweep_dir)
    assert strict_json(sweep_dir / "stats.json")["points"][0]["summary"]["name"] == "small"


def test_sweep_with_a_missing_point_still_reports(sweep_dir):
    shutil.rmtree(sweep_dir / "points" / "p001")
    md = write_report(sweep_dir).read_text()
    assert "results directory not found" in md and "p001" in md


# --------------------------------------------------------------------------- html


def test_markdown_to_html_renders_commonmark_and_embeds_images(tmp_path):
    (tmp_path / "p.png").write_bytes(PNG_MAGIC + b"data")
    page = markdown_to_html("# T\n\ntext with `code` & [link](x.md)\n\n- a\n- b\n\n"
                            "| h1 | h2 |\n|---|---|\n| 1 \\| 2 | ![p](p.png) |\n\n```\n<x>\n```\n"
                            "\n> **note** <script>\n", base=tmp_path)
    assert "<h1>T</h1>" in page and "<code>code</code>" in page and "&amp;" in page
    assert '<a href="x.md">link</a>' in page and "<li>a</li>" in page
    assert "<th>h1</th>" in page and "<td>1 | 2</td>" in page
    assert 'src="data:image/png;base64,iVBORw0KGgpkYXRh"' in page and "&lt;x&gt;" in page
    assert "<blockquote>" in page and "<strong>note</strong>" in page and "<script>" not in page


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
    assert [a.name for a in merged.scenario.arms] == ["attack", "honest"]
    for key, job in whole.jobs.items():
        assert merged.jobs[key].cumulative("shapley") == job.cumulative("shapley")

    with pytest.raises(UserError, match="arm 'attack' is in both"):
        merge_results([load_results(attack), load_results(run_dir)])
    sc = json.loads((honest / "scenario.json").read_text())
    sc["rounds"] = sc["rounds"] + 1
    (honest / "scenario.json").write_text(json.dumps(sc))
    with pytest.raises(UserError, match="not comparable.*rounds"):
        merge_results([load_results(attack), load_results(honest)])


def test_capped_weights_missing_partitions_and_claimed_identities_are_reported(run_dir):
    path = run_dir / "jobs" / "attack__s0" / "rounds.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for rec in recs:
        rec["claimed_num_examples"] = dict(rec["num_examples"], **{"0": 1e12})
        rec["num_examples"]["0"] = 600
    recs[1].update(missing=1, missing_partitions=[3], rejected=[
        {"partition_id": 2, "node_id": 5, "claimed_partition_id": 1, "reason": "claims another node's partition"}])
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    md = write_report(run_dir).read_text()
    assert table_rows(md, "Claimed and used weights") == [["attack", "0", "0", "1, 2, 3", "1e+12", "600"]]
    assert table_rows(md, "Failures") == [
        ["attack", "0", "finished", "2", "2", "claims another node's partition (the reply claimed partition 1)"],
        ["attack", "0", "finished", "3", "2", "sent no reply"]]
    capped = strict_json(run_dir / "stats.json")["capped_weights"]
    assert capped == [{"arm": "attack", "seed": 0, "partition_id": "0", "rounds": [1, 2, 3],
                       "claimed": 1e12, "used": 600.0}]
