"""The defences page (fedattr.report.defenses and ``fedattr report --defenses``).

Synthetic results directories are built in the format the server writes, with numbers chosen so
that every figure has a known answer. Per round, seed s, the attacker's plain-Shapley
counterfactual inflation is I_s = 0.01 (s + 1) in the attack arm and I_s / 2 in the adaptive arm;
LOO's is I_s / 4 (attack) and I_s / 10 (adaptive); Banzhaf's is f_s I_s with f_s = 0.6 + 0.1 s in
the attack arm (so sum_s f_s I_s / sum_s I_s = 8/10) and I_s / 2 in the adaptive arm. LOO keeps
every order of plain Shapley; Banzhaf swaps clients 2 and 3. In the holder run LOO keeps 0.9 of
the holder's value, Banzhaf 0.5. Costs per round: Shapley 16 evaluations and 2 s, LOO 5 and
0.5 s, Banzhaf 16 and 0.01 s.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedattr.cli.app import app
from fedattr.core.errors import UserError
from fedattr.protocol import RoundRecord
from fedattr.report.defenses import (BAR, Mitigation, Removed, adaptive_against, best_mitigation, mitigations,
                                     removed_ci, write_defenses_page)
from fedattr.report.reader import load_results
from fedattr.report.stats import mean_ci
from fedattr.scenario import dump_resolved, scenario_from_dict

SEEDS, ROUNDS, CLIENTS = [0, 1, 2, 3], 2, 4
EVS = ("shapley", "loo", "banzhaf")
BASE = {0: 0.05, 1: 0.02, 2: 0.03, 3: 0.04}  # plain Shapley's honest values: 0 > 3 > 2 > 1
SWAPPED = {**BASE, 2: 0.04, 3: 0.03}          # Banzhaf: 2 and 3 swapped
EVALS = {"shapley": 16, "loo": 5, "banzhaf": 16}
SECONDS = {"shapley": 2.0, "loo": 0.5, "banzhaf": 0.01}


def infl(seed: int) -> float:
    return 0.01 * (seed + 1)


#: the attacker's counterfactual inflation per round, as a multiple of I_s, per (arm, evaluator)
FACTOR = {("attack", "shapley"): lambda s: 1.0, ("attack", "loo"): lambda s: 0.25,
          ("attack", "banzhaf"): lambda s: 0.6 + 0.1 * s,
          ("adaptive", "shapley"): lambda s: 0.5, ("adaptive", "loo"): lambda s: 0.1,
          ("adaptive", "banzhaf"): lambda s: 0.5}


def _scenario(name: str, arms: list[dict], **over) -> dict:
    data = {"name": name, "seeds": SEEDS, "num_clients": CLIENTS, "attacker_ids": [0], "rounds": ROUNDS,
            "attribution": {"evaluators": [{"name": ev} for ev in EVS]}, "arms": arms}
    return {**data, **over}


def _values(arm: str, seed: int, sign: int = 1) -> tuple[dict, dict]:
    """One round's values and the attacker's counterfactual values, per evaluator (inflation x ``sign``)."""
    if arm == "holder":
        shap = {**BASE, 1: 0.06}
        return {"shapley": shap, "loo": {p: 0.9 * v for p, v in shap.items()},
                "banzhaf": {**shap, 1: 0.03}}, {}
    honest = {"shapley": dict(BASE), "loo": {p: 0.5 * v for p, v in BASE.items()}, "banzhaf": dict(SWAPPED)}
    if arm == "honest":
        return honest, {}
    values, cf = {}, {}
    for ev, v in honest.items():
        cf[ev] = {0: v[0]}
        values[ev] = {**v, 0: v[0] + sign * FACTOR[(arm, ev)](seed) * infl(seed)}
    return values, cf


def _job(arm: str, seed: int, sign: int = 1) -> tuple[list[dict], dict]:
    records, cum = [], {ev: {p: 0.0 for p in range(CLIENTS)} for ev in EVS}
    for t in range(1, ROUNDS + 1):
        values, cf = _values(arm, seed, sign)
        for ev in EVS:
            for p in range(CLIENTS):
                cum[ev][p] += values[ev][p]
        rec = {"arm": arm, "seed": seed, "round": t, "attacker_ids": [0], "clients": list(range(CLIENTS)),
               "values": values, "counterfactual_values": cf, "cumulative": {ev: dict(v) for ev, v in cum.items()},
               "utility_evaluations": {**EVALS, "unique": 16},
               "timings": {"evaluators_s": dict(SECONDS)}, "test": {"accuracy": 0.9}}
        records.append(RoundRecord.model_validate(rec).model_dump(mode="json"))
    summary = {"status": "finished", "arm": arm, "seed": seed, "rounds": ROUNDS, "rounds_recorded": ROUNDS,
               "wall_s": 10.0 + seed,
               "attacker_ids": [0], "final_test": {"accuracy": 0.9}, "cumulative": records[-1]["cumulative"]}
    return records, summary


def make_dir(root: Path, name: str, arms: list[dict], unfinished: tuple[str, int] | None = None,
             signs: bool = False, **over) -> Path:
    """A results directory; ``signs``: the attacker's inflation negated on odd seeds."""
    path = root / name
    path.mkdir(parents=True)
    scenario = scenario_from_dict(_scenario(name, arms, **over))
    (path / "scenario.json").write_text(json.dumps(dump_resolved(scenario)), encoding="utf-8")
    (path / "environment.json").write_text(json.dumps({"command": f"fedattr run scenarios/{name}.toml",
                                                       "commit": "abc123", "wall_s": 42.0, "cpu_count": 2}))
    for arm in (a["name"] for a in arms):
        for seed in SEEDS:
            records, summary = _job(arm, seed, -1 if signs and seed % 2 else 1)
            job = path / "jobs" / f"{arm}__s{seed}"
            job.mkdir(parents=True)
            (job / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
            if (arm, seed) != unfinished:
                (job / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return path


ARMS = [{"name": "honest", "attack": "honest"}, {"name": "attack", "attack": "latent"},
        {"name": "adaptive", "attack": "latent_mixed"}]
HOLDER = {"partition": {"genuine_holder": 1, "withhold_classes": [8, 9]}}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("defenses")
    return {"new": make_dir(root, "defenses_new", ARMS),
            "holder": make_dir(root, "defenses_holder", [{"name": "holder", "attack": "honest"}], **HOLDER),
            "short": make_dir(root, "defenses_short", ARMS, unfinished=("attack", 3)),
            "no_latent": make_dir(root, "no_latent", [ARMS[0]])}


@pytest.fixture(scope="module")
def rows(dirs):
    return {m.evaluator: m for m in mitigations(load_results(dirs["new"]), load_results(dirs["holder"]))}


def test_every_evaluator_but_plain_shapley_is_a_mitigation(rows):
    assert list(rows) == ["loo", "banzhaf"]


def test_removed_share_in_both_arms_and_the_inflation_left(rows):
    loo, bz = rows["loo"], rows["banzhaf"]
    # a constant ratio per seed: the bootstrap interval collapses onto the point
    assert (loo.removed.point, loo.removed.low, loo.removed.high) == pytest.approx((0.75, 0.75, 0.75))
    assert loo.removed.n == len(SEEDS)
    assert loo.removed_adaptive.point == pytest.approx(1 - 0.1 / 0.5)
    assert bz.removed_adaptive.point == pytest.approx(0.0, abs=1e-12)
    assert loo.left.values == pytest.approx([ROUNDS * 0.25 * infl(s) for s in SEEDS])
    assert loo.left_adaptive.values == pytest.approx([ROUNDS * 0.1 * infl(s) for s in SEEDS])


def test_the_bootstrap_interval_of_a_varying_ratio(dirs, rows):
    bz = rows["banzhaf"].removed
    # 1 - sum_s f_s I_s / sum_s I_s = 1 - 8/10; every resample's ratio of sums lies between the
    # smallest and the largest per-seed ratio (0.6 and 0.9)
    assert bz.point == pytest.approx(0.2)
    assert 0.1 - 1e-12 <= bz.low < bz.point < bz.high <= 0.4 + 1e-12
    res = load_results(dirs["new"])
    assert removed_ci(res, "banzhaf") == pytest.approx((bz.point, bz.low, bz.high))
    assert removed_ci(res, "banzhaf", attack="latent_mixed")[0] == pytest.approx(0.0, abs=1e-12)


def test_taus_rank_shift_holder_and_cost(rows):
    loo, bz = rows["loo"], rows["banzhaf"]
    assert loo.benign_tau.values == pytest.approx([1.0] * len(SEEDS))
    # benign 1, 2, 3: Banzhaf's 2 > 3 against Shapley's 3 > 2, one discordant pair of three
    assert bz.benign_tau.values == pytest.approx([1 / 3] * len(SEEDS))
    assert loo.honest_tau.mean == pytest.approx(1.0)
    assert bz.honest_tau.mean == pytest.approx(2 / 3)  # one discordant pair of six
    assert loo.rank_shift.mean == pytest.approx(0.0)
    assert bz.rank_shift.mean == pytest.approx(0.5)    # clients 2 and 3 move one place
    assert loo.kept.values == pytest.approx([0.9] * len(SEEDS))
    assert bz.kept.values == pytest.approx([0.5] * len(SEEDS))
    assert loo.evals_ratio == pytest.approx(5 / 16) and loo.seconds_ratio == pytest.approx(0.25)
    assert bz.evals_ratio == pytest.approx(1.0) and bz.seconds_ratio == pytest.approx(0.005)


def test_bar_verdict_passes_or_names_each_shortfall(rows):
    loo, bz = rows["loo"], rows["banzhaf"]
    assert loo.fails == {} and loo.verdict() == "passes" and loo.lower_clears is True
    assert bz.fails == pytest.approx({"removed": 0.3, "tau": BAR["tau"] - 1 / 3, "kept": 0.3})
    assert bz.verdict() == "removed short by 0.300; tau short by 0.467; kept short by 0.300"
    assert bz.lower_clears is False


def test_a_figure_on_the_bar_up_to_rounding_meets_it():
    from fedattr.report.defenses import _fails

    # a Kendall tau of exactly 0.8 can come out as 0.7999999999999999
    assert _fails({"removed": 0.5, "tau": 0.8 - 1e-16, "kept": 0.8}) == {}
    assert _fails({"removed": 0.2, "tau": 0.7, "kept": math.nan}) == pytest.approx(
        {"removed": 0.3, "tau": 0.1, "kept": math.nan}, nan_ok=True)


def test_without_a_holder_run_the_kept_condition_is_missing(dirs):
    loo = {m.evaluator: m for m in mitigations(load_results(dirs["new"]))}["loo"]
    assert list(loo.fails) == ["kept"] and math.isnan(loo.fails["kept"])
    assert loo.verdict() == "kept missing"


def _mit(ev: str, met: int, removed: float) -> Mitigation:
    empty = mean_ci([])
    fails = dict(list({"removed": 0.1, "tau": 0.1, "kept": 0.1}.items())[:3 - met])
    r = Removed(removed, math.nan, math.nan, 4)
    return Mitigation(ev, r, empty, r, empty, empty, empty, empty, empty, 1.0, 1.0, fails)


def test_the_best_mitigation_meets_most_conditions_then_removes_most():
    rows = [_mit("a", 2, 0.3), _mit("b", 2, 0.6), _mit("c", 1, 0.9), _mit("d", 2, math.nan)]
    assert best_mitigation(rows).evaluator == "b"
    assert best_mitigation([_mit("c", 1, 0.9), _mit("e", 1, -0.5)]).evaluator == "c"
    assert best_mitigation([]) is None


def test_the_adaptive_attacker_against_a_mitigation(dirs):
    ad = adaptive_against(load_results(dirs["new"]), "loo")
    assert ad.inflation.values == pytest.approx([ROUNDS * 0.1 * infl(s) for s in SEEDS])
    assert ad.share.point == pytest.approx(0.1)       # against plain Shapley in the attack arm
    assert ad.plain_share.point == pytest.approx(0.5)
    assert adaptive_against(load_results(dirs["no_latent"]), "loo") is None


def test_the_page_has_its_header_table_and_adaptive_section(dirs, tmp_path):
    page = write_defenses_page(dirs["new"], dirs["holder"], tmp_path / "out" / "defenses.md", command="CMD")
    text = page.read_text(encoding="utf-8")
    assert text.startswith("# Defences")
    assert "- generated " in text and "by `CMD`" in text and "page written at commit" in text
    # environment.json's wall time is the last invocation's; the jobs' own times count every one
    assert "results produced at commit abc123 by `fedattr run scenarios/defenses_new.toml` on 2 CPUs, " \
           "wall time 42 s (that invocation), 12 finished jobs, 138 s of job time in all" in text
    assert "`fedattr run scenarios/defenses_holder.toml`" in text
    row = next(line for line in text.splitlines() if line.startswith("| `banzhaf`"))
    assert "+0.2000 [" in row and "0.5000 ± 0.0000" in row and "1.00x" in row and "0.005x" in row
    assert "removed short by 0.300; tau short by 0.467; kept short by 0.300" in row and row.endswith("| no |")
    loo_row = next(line for line in text.splitlines() if line.startswith("| `loo`"))
    assert "+0.7500 [+0.7500, +0.7500]" in loo_row and "| passes | yes |" in loo_row and "0.31x" in loo_row
    assert "**passed by `loo`**" in text
    assert "does not lie above 0" not in text  # plain Shapley's inflation is positive on every seed
    assert "Best mitigation" in text and "`loo` (3 of 3 conditions; passes)" in text
    assert "10% of what the latent attack gets under plain shapley" in text
    assert f"| `{dirs['new']}` | honest | honest | 4 of 4 | 0, 1, 2, 3 | 0 | 0 |" in text
    assert f"| `{dirs['holder']}` | holder | honest | 4 of 4 |" in text


def test_a_short_run_marks_its_cells_and_its_arm(dirs, tmp_path):
    text = write_defenses_page(dirs["short"], dirs["holder"], tmp_path / "short.md").read_text(encoding="utf-8")
    assert "| attack | latent | 3 of 4 **short** | 0, 1, 2 | 1 | 0 |" in text
    loo_row = next(line for line in text.splitlines() if line.startswith("| `loo`"))
    assert "+0.7500 [+0.7500, +0.7500] *(n=3)*" in loo_row
    assert f"fedattr report --defenses {dirs['short']} --holder {dirs['holder']}" in text


def test_an_inflation_not_above_zero_is_flagged(tmp_path):
    # plain Shapley's inflation flips sign with the seed: its interval straddles 0 in both arms
    path = make_dir(tmp_path, "defenses_signs", ARMS, signs=True)
    text = write_defenses_page(path, None, tmp_path / "signs.md").read_text(encoding="utf-8")
    assert "**Its 95% interval does not lie above 0 in the attack and adaptive arms**" in text


def test_bad_directories_are_user_errors(dirs, tmp_path):
    with pytest.raises(UserError, match="genuine_holder"):
        write_defenses_page(dirs["new"], dirs["new"], tmp_path / "x.md")
    with pytest.raises(UserError, match="no arm with attack 'latent'"):
        write_defenses_page(dirs["no_latent"], None, tmp_path / "x.md")
    with pytest.raises(UserError, match="markdown"):
        write_defenses_page(dirs["new"], None, tmp_path / "x.txt")
    with pytest.raises(UserError, match="not found"):
        write_defenses_page(tmp_path / "absent", None, tmp_path / "x.md")


def test_cli_writes_the_page_and_bad_combinations_exit_2(dirs, tmp_path):
    runner = CliRunner()
    page = tmp_path / "defenses.md"
    ok = runner.invoke(app, ["report", "--defenses", str(dirs["new"]), "--holder", str(dirs["holder"]),
                             "--to", str(page)])
    assert ok.exit_code == 0, ok.output
    assert f"by `fedattr report --defenses {dirs['new']} --holder {dirs['holder']} --to {page}`" in \
        page.read_text(encoding="utf-8")
    cases = {
        "--holder is read only with --defenses": ["report", str(dirs["new"]), "--holder", str(dirs["holder"]),
                                                  "--to", str(tmp_path / "a.md")],
        "name it with --to": ["report", "--defenses", str(dirs["new"]), "--holder", str(dirs["holder"])],
        "genuine_holder": ["report", "--defenses", str(dirs["new"]), "--holder", str(dirs["new"]),
                           "--to", str(tmp_path / "b.md")],
        "no arm with attack": ["report", "--defenses", str(dirs["no_latent"]), "--to", str(tmp_path / "c.md")],
        "one results directory": ["report", "--defenses", str(dirs["new"]), str(dirs["short"]),
                                  "--to", str(tmp_path / "d.md")],
    }
    for message, argv in cases.items():
        result = runner.invoke(app, argv)
        assert result.exit_code == 2, (argv, result.output)
        assert message in result.output and "Traceback" not in result.output
