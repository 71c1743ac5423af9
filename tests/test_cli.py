"""The fedattr CLI, with a fake launcher (no Flower, no torch) and the real report on the fixture."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import tomllib
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedattr.cli.app import app
from fedattr.core.errors import NoSpaceError, RunFailedError, UserError
from fedattr.scenario import Scenario, load_scenario, to_toml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "scenarios" / "demo.toml"
SMALL = Path(__file__).resolve().parent / "fixtures" / "results_small"
REGISTRIES = {"datasets": ["mnist5k", "cifar10"], "models": ["cnn", "vgg11"],
              "evaluators": ["individual", "loo", "shapley", "gtg"],
              "attacks": ["honest", "latent"], "aggregators": ["fedavg"]}


@pytest.fixture()
def cli():
    """A CliRunner (stdout and stderr kept apart)."""
    return CliRunner()


@pytest.fixture()
def fake_runner(monkeypatch, tmp_path):
    """A stand-in ``fedattr.launch.execute`` that records calls and returns copies of the fixture."""
    fake = types.ModuleType("fedattr.launch.execute")
    fake.calls = []

    def run_scenario(scenario, out_dir=None, progress=None, scenario_path=None, force=False, concurrency=1):
        fake.calls.append(("run_scenario", scenario, out_dir, scenario_path))
        progress({"event": "log", "message": "starting [fake]"})
        for r in range(1, 4):
            progress({"event": "round", "arm": "attack", "seed": 0, "round": r, "rounds": 3,
                      "jobs_done": 1, "jobs_total": 4})
        progress({"event": "jobs", "jobs_done": 4, "jobs_total": 4})
        progress({"event": "something-new"})
        dest = Path(out_dir) if out_dir else tmp_path / "results" / "small"
        return shutil.copytree(SMALL / "run", dest)

    def run_sweep(scenario, points, out_dir=None, progress=None, grid=None, force=False, concurrency=1):
        fake.calls.append(("run_sweep", scenario, points, out_dir, grid))
        progress({"event": "round", "arm": "attack", "seed": 1, "round": 2, "rounds": 2,
                  "jobs_done": 3, "jobs_total": 8, "point": 1, "points": 2})
        return shutil.copytree(SMALL / "sweep", Path(out_dir) if out_dir else tmp_path / "sweep")

    def train_generator(scenario, source="public", partition_id=None, force=False):
        fake.calls.append(("train_generator", scenario, source, partition_id, force))
        return {"path": "/cache/vae.pt", "cached": not force, "source": source}

    def registries():
        return REGISTRIES

    fake.run_scenario, fake.run_sweep = run_scenario, run_sweep
    fake.train_generator, fake.registries = train_generator, registries
    monkeypatch.setitem(sys.modules, "fedattr.launch.execute", fake)
    import fedattr.launch
    monkeypatch.setattr(fedattr.launch, "execute", fake, raising=False)
    return fake


def assert_user_error(result, *needles):
    """Exit status 2, the message on stderr, no traceback."""
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("args", [[], ["run"], ["sweep"], ["report"], ["train-generator"],
                                  ["list"], ["scenario"], ["scenario", "schema"],
                                  ["scenario", "check"]], ids=" ".join)
def test_help(cli, args):
    result = cli.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.stdout
    if args and args != ["scenario"]:
        assert "Example" in result.stdout and "fedattr" in result.stdout


def test_no_arguments_shows_help(cli):
    result = cli.invoke(app, [])
    assert "run" in result.output and "sweep" in result.output


# --------------------------------------------------------------------------- scenario


def test_scenario_schema(cli):
    result = cli.invoke(app, ["scenario", "schema"])
    assert result.exit_code == 0
    assert "partition.alpha: float = 0.5" in result.stdout and "[[arms]]" in result.stdout


def test_scenario_schema_json(cli):
    result = cli.invoke(app, ["scenario", "schema", "--json"])
    assert result.exit_code == 0
    assert "partition" in json.loads(result.stdout)["properties"]


def test_scenario_check_prints_the_resolved_scenario(cli, fake_runner):
    result = cli.invoke(app, ["scenario", "check", str(DEMO), "--set", "partition.alpha=0.1"])
    assert result.exit_code == 0, result.output
    resolved = tomllib.loads(result.stdout)
    assert resolved["partition"]["alpha"] == 0.1
    assert resolved == tomllib.loads(to_toml(load_scenario(DEMO, ["partition.alpha=0.1"])))
    sc = load_scenario(DEMO, [])
    assert "ok" in result.stderr and f"{len(sc.arms)} arms x {len(sc.seeds)} seeds" in result.stderr


def test_scenario_check_json(cli, fake_runner):
    result = cli.invoke(app, ["scenario", "check", str(DEMO), "--json"])
    assert result.exit_code == 0
    assert Scenario.model_validate(json.loads(result.stdout)) == load_scenario(DEMO)


def test_scenario_check_bad_value(cli, fake_runner):
    result = cli.invoke(app, ["scenario", "check", str(DEMO), "--set", "partition.alpha=-1"])
    assert_user_error(result, "partition.alpha = -1", "greater than 0")


def test_scenario_check_bad_file(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[partition]\nalpah = 0.1\n")
    result = cli.invoke(app, ["scenario", "check", str(bad), "--no-registry"])
    assert_user_error(result, "partition.alpah", "did you mean 'alpha'")


def test_scenario_check_missing_file(cli, tmp_path):
    result = cli.invoke(app, ["scenario", "check", str(tmp_path / "nope.toml")])
    assert_user_error(result, "scenario file not found", "nope.toml")


def test_scenario_check_unknown_registry_name(cli, fake_runner):
    result = cli.invoke(app, ["scenario", "check", str(DEMO), "--set", "model=resnet9000"])
    assert_user_error(result, "model = 'resnet9000'", "unknown model")


def test_scenario_check_survives_a_broken_registry(cli, monkeypatch):
    import fedattr.scenario.checks

    def broken(scenario):
        raise ImportError("fedattr.attacks is not ready")
    monkeypatch.setattr(fedattr.scenario.checks, "check_components", broken)
    result = cli.invoke(app, ["scenario", "check", str(DEMO)])
    assert result.exit_code == 0
    assert "names not checked" in result.stderr


# --------------------------------------------------------------------------- run


def test_run_with_fake_runner(cli, fake_runner, tmp_path):
    out = tmp_path / "out"
    result = cli.invoke(app, ["run", str(DEMO), "--set", "seeds=[0,1]", "--out", str(out)])
    assert result.exit_code == 0, result.output
    name, scenario, out_dir, scenario_path = fake_runner.calls[0]
    assert name == "run_scenario" and scenario.seeds == [0, 1] and Path(out_dir) == out
    assert Path(scenario_path) == DEMO
    assert (out / "report.md").exists() and (out / "plots" / "accuracy.png").exists()
    assert "starting [fake]" in result.stderr  # log events go through the progress console
    for needle in ["honest", "attack", "shapley", "paired infl.", "report:", "start-up"]:
        assert needle in result.stdout, needle


def test_run_json_and_no_report(cli, fake_runner, tmp_path):
    out = tmp_path / "out"
    result = cli.invoke(app, ["run", str(DEMO), "--out", str(out), "--json", "--no-report"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["results_dir"] == str(out) and data["report"] is None
    assert data["summary"]["arms"] == ["honest", "attack"]
    assert data["summary"]["attacker"]["attack"]["loo"]["0"]["paired_inflation"]["n"] == 2
    assert not (out / "report.md").exists()


def test_run_bad_override_exits_2_before_running(cli, fake_runner):
    result = cli.invoke(app, ["run", str(DEMO), "--set", "num_clients=1"])
    assert_user_error(result, "num_clients = 1")
    assert fake_runner.calls == []


def test_run_user_error_from_the_runner(cli, fake_runner):
    def failing(*args, **kwargs):
        raise UserError("dataset svhn is not downloaded; set data.data_dir")
    fake_runner.run_scenario = failing
    result = cli.invoke(app, ["run", str(DEMO)])
    assert_user_error(result, "dataset svhn is not downloaded")


def test_run_message_with_rich_markup_is_printed_verbatim(cli, fake_runner):
    def failing(*args, **kwargs):
        raise UserError("bad value [red] in arms[0]")
    fake_runner.run_scenario = failing
    result = cli.invoke(app, ["run", str(DEMO)])
    assert_user_error(result, "bad value [red] in arms[0]")


# --------------------------------------------------------------------------- sweep


def test_sweep_with_fake_runner(cli, fake_runner, tmp_path):
    out = tmp_path / "sw"
    result = cli.invoke(app, ["sweep", str(DEMO), "--grid", "partition.alpha=0.1,0.5",
                              "--grid", "attack.synthetic_fraction=0.1,0.25", "--out", str(out)])
    assert result.exit_code == 0, result.output
    name, scenario, points, out_dir, grid = fake_runner.calls[0]
    assert name == "run_sweep" and Path(out_dir) == out
    assert grid == {"partition.alpha": ["0.1", "0.5"],
                    "attack.synthetic_fraction": ["0.1", "0.25"]}
    assert len(points) == 4
    assert points[3][0] == {"partition.alpha": "0.5", "attack.synthetic_fraction": "0.25"}
    assert points[3][1].partition.alpha == 0.5
    assert points[3][1].arms[1].params["synthetic_fraction"] == 0.25
    assert (out / "report.md").exists() and (out / "points" / "p000" / "report.md").exists()
    assert "wall time 30.0 s, start-up 6.0 s (20% of it)" in result.stdout
    assert "partition.alpha=0.1" in result.stdout


def test_sweep_json(cli, fake_runner, tmp_path):
    result = cli.invoke(app, ["sweep", str(DEMO), "-g", "partition.alpha=0.1,0.5", "--json",
                              "--out", str(tmp_path / "sw")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["wall_s"] == 30.0 and data["startup_s"] == 6.0
    assert data["summary"]["kind"] == "sweep" and len(data["summary"]["points"]) == 2


def test_sweep_bad_grid_key(cli, fake_runner):
    result = cli.invoke(app, ["sweep", str(DEMO), "--grid", "partition.alpah=0.1,0.5"])
    assert_user_error(result, "partition.alpah", "unknown key")
    assert fake_runner.calls == []


def test_sweep_bad_grid_syntax(cli, fake_runner):
    result = cli.invoke(app, ["sweep", str(DEMO), "--grid", "partition.alpha"])
    assert_user_error(result, "expected key=v1,v2")


def test_sweep_needs_a_grid(cli, fake_runner):
    result = cli.invoke(app, ["sweep", str(DEMO)])
    assert result.exit_code == 2 and "--grid" in result.output


# --------------------------------------------------------------------------- report, list, generator


def test_report_command(cli, tmp_path):
    root = shutil.copytree(SMALL / "run", tmp_path / "run")
    result = cli.invoke(app, ["report", str(root)])
    assert result.exit_code == 0, result.output
    assert (root / "report.md").exists() and (root / "report.html").exists()
    assert "report:" in result.stdout and "attack" in result.stdout


def test_report_command_json_on_a_sweep(cli, tmp_path):
    root = shutil.copytree(SMALL / "sweep", tmp_path / "sweep")
    result = cli.invoke(app, ["report", str(root), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["summary"]["kind"] == "sweep" and data["report"].endswith("report.md")


def test_report_on_a_missing_directory(cli, tmp_path):
    assert_user_error(cli.invoke(app, ["report", str(tmp_path / "nothing")]), "not found")


def test_report_on_a_directory_without_results(cli, tmp_path):
    assert_user_error(cli.invoke(app, ["report", str(tmp_path)]), "scenario.json")


def test_list_json(cli, fake_runner):
    result = cli.invoke(app, ["list", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == REGISTRIES


def test_list_table(cli, fake_runner):
    result = cli.invoke(app, ["list"])
    assert result.exit_code == 0 and "vgg11" in result.stdout and "aggregators" in result.stdout


def test_train_generator(cli, fake_runner):
    result = cli.invoke(app, ["train-generator", str(DEMO), "--source", "local",
                              "--partition-id", "3", "--force", "--json"])
    assert result.exit_code == 0, result.output
    name, scenario, source, pid, force = fake_runner.calls[0]
    assert (name, source, pid, force) == ("train_generator", "local", 3, True)
    assert scenario == load_scenario(DEMO)
    assert json.loads(result.stdout)["source"] == "local"


def test_train_generator_defaults_and_table(cli, fake_runner):
    result = cli.invoke(app, ["train-generator", str(DEMO)])
    assert result.exit_code == 0, result.output
    assert fake_runner.calls[0][2:] == ("public", None, False)
    assert "/cache/vae.pt" in result.stdout


def test_train_generator_bad_source(cli, fake_runner):
    result = cli.invoke(app, ["train-generator", str(DEMO), "--source", "web"])
    assert result.exit_code == 2 and fake_runner.calls == []


# --------------------------------------------------------------------------- exit codes, one finish_run


def _failed_copy(dest: Path) -> Path:
    """A copy of the fixture run whose attack__s1 job failed."""
    root = shutil.copytree(SMALL / "run", dest)
    summary_path = root / "jobs" / "attack__s1" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary.update(status="failed", failure_reason="rounds [2] had fewer than min_clients valid replies")
    summary_path.write_text(json.dumps(summary))
    return root


@pytest.fixture()
def fake_deploy(monkeypatch, tmp_path):
    """``fedattr.launch.local.deploy_scenario`` replaced: returns a copy of the fixture with a failed job."""
    import fedattr.launch.local as local

    calls = []

    def deploy_scenario(scenario, out_dir=None, progress=None, scenario_path=None, node_extra=None, force=False):
        calls.append((out_dir, node_extra, force))
        return _failed_copy(Path(out_dir))

    monkeypatch.setattr(local, "deploy_scenario", deploy_scenario)
    return calls


def test_deploy_local_exits_1_on_a_failed_job_like_run(cli, fake_runner, fake_deploy, tmp_path):
    deployed = cli.invoke(app, ["deploy", "local", str(DEMO), "--out", str(tmp_path / "d"), "--no-report"])
    assert deployed.exit_code == 1, deployed.output
    assert "1 job(s) failed" in deployed.stderr and "Traceback" not in deployed.output
    fake_runner.run_scenario = lambda scenario, out_dir=None, **kw: _failed_copy(Path(out_dir))
    ran = cli.invoke(app, ["run", str(DEMO), "--out", str(tmp_path / "r"), "--no-report"])
    assert ran.exit_code == 1 and "1 job(s) failed" in ran.stderr
    # the same summary table from both commands: one finish_run
    assert deployed.stdout.replace(str(tmp_path / "d"), "R") == ran.stdout.replace(str(tmp_path / "r"), "R")


def test_deploy_local_json_exits_1_on_a_failed_job(cli, fake_runner, fake_deploy, tmp_path):
    result = cli.invoke(app, ["deploy", "local", str(DEMO), "--out", str(tmp_path / "d"), "--json", "--no-report"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["summary"]["jobs"]["failed"] == 1


@pytest.mark.parametrize("exc, code, needle", [
    (RunFailedError("the Flower run ended without finishing 2 job(s)"), 1, "without finishing"),
    (NoSpaceError("no space left on /r/jobs/a__s0/rounds.jsonl"), 1, "no space left on /r/jobs"),
    (OSError(28, "No space left on device", "/r/report.md"), 1, "no space left on /r/report.md"),
    (UserError("--out /x is a file"), 2, "is a file"),
    (FileNotFoundError(2, "No such file", "/x/y.toml"), 2, "file not found: /x/y.toml"),
    (KeyboardInterrupt(), 130, "interrupted"),
], ids=["run-failed", "no-space", "enospc", "bad-input", "missing-file", "interrupted"])
def test_exit_codes(cli, fake_runner, exc, code, needle):
    """0 finished (the other tests), 1 a run or job failed, 2 bad input, 130 interrupted."""
    def failing(*args, **kwargs):
        raise exc

    fake_runner.run_scenario = failing
    result = cli.invoke(app, ["run", str(DEMO)])
    assert result.exit_code == code, result.output
    assert needle in result.stderr and "Traceback" not in result.output


def test_report_on_a_full_disk_exits_1_and_leaves_no_temp_file(cli, monkeypatch, tmp_path):
    import errno
    import os as _os

    root = shutil.copytree(SMALL / "run", tmp_path / "run")
    real_fsync = _os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_os, "fsync", full)
    result = cli.invoke(app, ["report", str(root)])
    assert result.exit_code == 1, result.output
    assert "no space left on" in result.stderr and str(root) in result.stderr
    assert "Traceback" not in result.output
    assert not list(root.rglob("*.tmp")) and not (root / "report.md").exists()
    monkeypatch.setattr(_os, "fsync", real_fsync)  # space freed: the same command completes
    again = cli.invoke(app, ["report", str(root)])
    assert again.exit_code == 0, again.output
    assert (root / "report.md").stat().st_size > 0


def test_version(cli):
    from importlib.metadata import version

    result = cli.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"fedattr {version('fedattr')}"


def test_shell_completion_is_offered(cli):
    result = cli.invoke(app, ["--help"])
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


# --------------------------------------------------------------------------- live progress


def _round(r, rounds=3, **kw):
    return {"event": "round", "job": "attack__s0", "arm": "attack", "seed": 0, "round": r, "rounds": rounds,
            "accuracy": 0.5 + r / 10, "attacker": 0, "evaluator": "loo", "attacker_value": 0.25 * r,
            "attacker_rank": 1, "clients": 4, "seconds": 2.0, "jobs_done": 0, "jobs_total": 2, **kw}


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_progress_plain_lines_come_as_rounds_finish():
    import io

    from rich.console import Console

    from fedattr.cli.progress import ProgressView

    buf = io.StringIO()
    clock = _Clock()
    view = ProgressView(Console(file=buf), clock=clock)
    assert view.plain  # a StringIO is not a terminal
    with view:
        view({"event": "start", "jobs_total": 2, "rounds_total": 6, "log": "/r/logs/flwr.log"})
        assert buf.getvalue() == "log: /r/logs/flwr.log\n"
        clock.t += 30  # start-up: not part of the ETA
        view(_round(1))
        first = buf.getvalue().splitlines()[-1]
        assert first.startswith("attack__s0 round 1/3  acc 0.6000  attacker 0 loo +0.2500 rank 1/4  2.0 s")
        assert "jobs 0/2" in first and first.endswith("ETA 10s")  # 5 rounds left x 2.0 s (the round's own time)
        clock.t += 4
        view(_round(2))
        assert buf.getvalue().splitlines()[-1].endswith("ETA 16s")  # 4 rounds left x 4 s measured per round
        view({"event": "job", "job": "attack__s0", "status": "failed", "reason": "too few replies",
              "jobs_done": 1, "jobs_total": 2})
        assert buf.getvalue().splitlines()[-1] == "attack__s0 failed: too few replies"
    assert view.rounds_done_ == 2 and view.eta_s_ == 16


def test_progress_lines_reach_a_pipe_before_the_run_ends(tmp_path):
    """Piped output: each round line is readable while the command still runs (not buffered to the end)."""
    script = tmp_path / "emit.py"
    script.write_text(
        "import sys, time\n"
        "from rich.console import Console\n"
        "from fedattr.cli.progress import ProgressView\n"
        "with ProgressView(Console(file=sys.stderr)) as view:\n"
        "    for r in (1, 2):\n"
        "        view({'event': 'round', 'job': 'a__s0', 'arm': 'a', 'seed': 0, 'round': r, 'rounds': 2,\n"
        "              'accuracy': 0.9, 'seconds': 1.0})\n"
        "        time.sleep(30 if r == 1 else 0)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        line = proc.stderr.readline()
        assert line.startswith("a__s0 round 1/2  acc 0.9000  1.0 s") and time.monotonic() - t0 < 25
    finally:
        proc.kill()
        proc.wait()


def test_run_shows_the_log_and_one_line_per_round(cli, fake_runner, tmp_path):
    def run_scenario(scenario, out_dir=None, progress=None, **kw):
        progress({"event": "start", "jobs_total": 1, "rounds_total": 2, "log": "/r/logs/flwr.log"})
        for r in (1, 2):
            progress(_round(r, rounds=2))
        return shutil.copytree(SMALL / "run", Path(out_dir))

    fake_runner.run_scenario = run_scenario
    result = cli.invoke(app, ["run", str(DEMO), "--out", str(tmp_path / "o"), "--no-report"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(("log:", "attack__s0 round"))]
    assert lines[0] == "log: /r/logs/flwr.log"
    assert [ln.split("  ")[0] for ln in lines[1:]] == ["attack__s0 round 1/2", "attack__s0 round 2/2"]


def test_progress_on_a_terminal_prints_the_same_lines_above_the_bars():
    import io
    import re

    from rich.console import Console

    from fedattr.cli.progress import ProgressView

    buf = io.StringIO()
    with ProgressView(Console(file=buf, force_terminal=True, width=160), clock=_Clock()) as view:
        assert not view.plain
        view({"event": "start", "jobs_total": 2, "rounds_total": 6, "log": "/r/[x]/flwr.log"})
        view(_round(1))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    assert "log: /r/[x]/flwr.log\n" in text  # markup-like text printed verbatim
    assert "attack__s0 round 1/3  acc 0.6000  attacker 0 loo +0.2500 rank 1/4  2.0 s  jobs 0/2  ETA 10s\n" in text
    assert "attack seed 0 rounds" in text  # the bars are there too
