"""The scaling page (fedattr.report.costs, fedattr.report.scaling, ``fedattr report --scaling``).

Synthetic results directories carry round records whose timings give known ratios: attribution
takes twice or three times the training time, round 1 (start-up) is left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedattr.cli.app import app
from fedattr.protocol import RoundRecord
from fedattr.report.costs import cost_ratios, round_costs
from fedattr.report.scaling import scale_run, scaling_markdown, write_scaling_page
from fedattr.scenario import dump_resolved, scenario_from_dict

#: per round: (train_s, surrogate_s, loo_s); round 1 is start-up-heavy
TIMINGS = {1: (10.0, 1.0, 1.0), 2: (2.0, 3.0, 1.0), 3: (1.0, 1.0, 1.0)}


def _results(tmp_path: Path, name: str = "scale", clients: int = 4) -> Path:
    out = tmp_path / name
    scenario = scenario_from_dict({
        "name": name, "seeds": [0], "num_clients": clients, "attacker_ids": [], "rounds": 3,
        "attribution": {"evaluators": [{"name": "logit_surrogate_shapley"}, {"name": "loo"}]},
        "arms": [{"name": "honest", "attack": "honest"}]})
    out.mkdir()
    (out / "scenario.json").write_text(json.dumps(dump_resolved(scenario)))
    (out / "environment.json").write_text(json.dumps({"wall_s": 30.0, "startup_s": 12.0, "commit": "abc",
                                                      "command": "fedattr run x", "cpu_count": 2,
                                                      "matmul_gflops": 300.0, "load_average": 0.5}))
    job = out / "jobs" / "honest__s0"
    job.mkdir(parents=True)
    lines = []
    for t, (train, surrogate, loo) in TIMINGS.items():
        rec = {"schema_version": 2, "arm": "honest", "seed": 0, "round": t, "attacker_ids": [],
               "clients": list(range(clients)), "test": {"accuracy": 0.5},
               "values": {"loo": {p: 0.0 for p in range(clients)}},
               "timings": {"train_s": train, "attribution_s": surrogate + loo,
                           "evaluators_s": {"logit_surrogate_shapley": surrogate, "loo": loo}}}
        lines.append(json.dumps(RoundRecord.model_validate(rec).model_dump(mode="json")))
    (job / "rounds.jsonl").write_text("\n".join(lines) + "\n")
    return out


def test_cost_ratios_leave_round_1_out_and_divide_by_training(tmp_path):
    costs = round_costs(_results(tmp_path))
    assert [(c.round, c.participants, c.ratio) for c in costs] == [(1, 4, 0.2), (2, 4, 2.0), (3, 4, 2.0)]
    ratios = cost_ratios(costs)
    assert ratios == {"logit_surrogate_shapley": [1.5, 1.0], "loo": [0.5, 1.0], "all evaluators": [2.0, 2.0]}
    assert cost_ratios(costs, first_round=1)["all evaluators"] == [0.2, 2.0, 2.0]


def test_scale_run_means_and_the_target_verdict(tmp_path):
    run = scale_run(_results(tmp_path))
    assert run.ratios == {"logit_surrogate_shapley": 1.25, "loo": 0.75, "all evaluators": 2.0}
    assert run.overall == 2.0 and run.num_clients == 4 and run.fraction_train == 1.0  # the schema default: everyone
    md = scaling_markdown([run], None, ["- header", ""])
    assert "| scale | 4 | all | 3 | 30.0 | 2.00x | yes |" in md  # 2.00 <= 2: met
    assert "matmul rate 300.0 GFLOP/s" in md and "target <= 2x: met" in md


def test_the_page_with_the_concurrency_benchmark(tmp_path):
    bench = {"scenario": "scenarios/demo.toml", "overrides": ["rounds=2"], "jobs": 4, "rounds": 8, "cpu_count": 2,
             "loadavg_before": [0.1, 0, 0], "loadavg_after": [1.5, 0, 0], "speedup": 1.25, "equal": True,
             "sequential": {"wall_s": 100.0, "startup_s": 20.0, "work_s": 60.0, "runs": 1},
             "concurrent": {"wall_s": 80.0, "startup_s": 22.0, "work_s": 70.0, "runs": 2, "jobs_at_once": 2}}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    page = write_scaling_page([_results(tmp_path)], tmp_path / "docs" / "scaling.md", tmp_path / "bench.json")
    text = page.read_text()
    assert "| --jobs 2 | 80.0 | 22.0 | 70.0 | 2 |" in text and "**1.25x**" in text and "**yes**" in text


def test_cli_scaling_bad_input_is_one_error_and_exit_2(tmp_path):
    runner = CliRunner()
    res = _results(tmp_path)
    missing = runner.invoke(app, ["report", "--scaling", str(res), str(tmp_path / "nope"), "--to", str(tmp_path / "p.md")])
    assert missing.exit_code == 2 and "results directory not found" in missing.output
    no_page = runner.invoke(app, ["report", "--scaling", str(res)])
    assert no_page.exit_code == 2 and "--to" in no_page.output
    (tmp_path / "bad.json").write_text("{}")
    bad = runner.invoke(app, ["report", "--scaling", str(res), "--bench", str(tmp_path / "bad.json"),
                              "--to", str(tmp_path / "p.md")])
    assert bad.exit_code == 2 and "not a benchmarks.concurrency JSON" in bad.output
    stray = runner.invoke(app, ["report", str(res), "--bench", str(tmp_path / "bad.json")])
    assert stray.exit_code == 2 and "only with --scaling" in stray.output
    ok = runner.invoke(app, ["report", "--scaling", str(res), "--to", str(tmp_path / "p.md")])
    assert ok.exit_code == 0, ok.output
    assert "attribution / training" in (tmp_path / "p.md").read_text()


@pytest.mark.parametrize("fraction", [0.1])
def test_sampled_runs_say_how_many_are_sampled(tmp_path, fraction):
    res = _results(tmp_path, clients=20)
    data = json.loads((res / "scenario.json").read_text())
    data["sampling"] = {"fraction_train": fraction}
    (res / "scenario.json").write_text(json.dumps(data))
    run = scale_run(res)
    assert run.fraction_train == fraction
    assert "0.1 of them sampled each round" in scaling_markdown([run], None, [])
