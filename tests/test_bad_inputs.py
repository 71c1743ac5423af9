"""Bad inputs, table-driven: each is one clear message on stderr and exit status 2, before any
Flower process starts (the real launcher runs; every case fails in its pre-flight checks).

Cases: scenario values (through --set), CLI options, output paths, resuming a directory of
other settings or with damaged files, and reporting damaged files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedattr.cli.app import app

SMALL = Path(__file__).resolve().parent / "fixtures" / "results_small"

TINY = """
name = "bad"
seeds = [0]
num_clients = 3
attacker_ids = [0]
rounds = 1
[data]
dataset = "mnist5k"
val_size = 200
test_size = 200
aux_size = 0
pool_size = 600
[partition]
kind = "iid"
[[attribution.evaluators]]
name = "loo"
[[arms]]
name = "honest"
attack = "honest"
"""


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# (id, --set overrides, needle in the message)
SCENARIO_VALUES = [
    ("one client", ["num_clients=1"], "num_clients"),
    ("scenario name that leaves output_dir", ['name="../esc"'], "name = '../esc'"),
    ("scenario name with a separator", ['name="a/b"'], "name = 'a/b'"),
    ("zero rounds", ["rounds=0"], "rounds"),
    ("no seeds", ["seeds=[]"], "seeds"),
    ("negative lr", ["train.lr=-1"], "train.lr"),
    ("attacker outside the clients", ["attacker_ids=[7]"], "attacker_ids"),
    ("unknown model", ['model="alexnet"'], "alexnet"),
    ("unknown dataset", ['data.dataset="imagenet"'], "imagenet"),
    ("unknown evaluator", ['attribution.evaluators=[{name="oracle"}]'], "oracle"),
    ("bad stopping rule", ['attribution.evaluators=[{name="tmc",params={stop="x"}}]'], "stop must be a table"),
    ("unknown attack parameter", ['arms=[{name="a",attack="latent",params={bogus=1}}]'], "bogus"),
    ("unknown attack", ['arms=[{name="a",attack="teleport"}]'], "teleport"),
    ("splits larger than the dataset", ["data.val_size=4500"], "does not fit"),
    ("partitions below their minimum", ["num_clients=40", "attacker_ids=[0]", 'partition.kind="dirichlet"',
                                        "partition.min_partition_size=100"], "pool has 600"),
    ("exact Shapley with too many clients", ["num_clients=16", "data.pool_size=1600",
                                             'attribution.evaluators=[{name="shapley"}]'], "at most 14 clients"),
    ("more CPUs per client than the machine has", ["runtime.client_cpus=4096"], "runtime.client_cpus"),
    ("min_clients above num_clients", ["runtime.min_clients=9"], "min_clients"),
    ("unknown key", ["train.learning_rate=0.1"], "learning_rate"),
    ("override without a value", ["rounds"], "rounds"),
    ("override that is not TOML", ["rounds=[1,"], "rounds"),
]

GPU_VALUES = [
    ("a GPU share without CUDA", ["runtime.client_gpus=1"], "no CUDA GPU"),
    ("device cuda without CUDA", ['runtime.device="cuda"'], "no CUDA GPU"),
]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "tiny.toml"
    path.write_text(TINY)
    return path


def _assert_user_error(result, needle: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "error:" in result.stderr and needle in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def _run(args: list[str]):
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("overrides,needle", [c[1:] for c in SCENARIO_VALUES], ids=[c[0] for c in SCENARIO_VALUES])
def test_bad_scenario_values(scenario, tmp_path, overrides, needle):
    out = tmp_path / "out"
    args = ["run", str(scenario), "--out", str(out)]
    for o in overrides:
        args += ["--set", o]
    _assert_user_error(_run(args), needle)
    assert not (out / "jobs").exists() and not (out / "logs").exists()  # nothing started


@pytest.mark.skipif("_cuda()")
@pytest.mark.parametrize("overrides,needle", [c[1:] for c in GPU_VALUES], ids=[c[0] for c in GPU_VALUES])
def test_gpus_asked_for_on_a_machine_without_cuda(scenario, tmp_path, overrides, needle):
    args = ["run", str(scenario), "--out", str(tmp_path / "out")]
    for o in overrides:
        args += ["--set", o]
    _assert_user_error(_run(args), needle)


def _file(tmp: Path) -> Path:
    f = tmp / "a-file"
    f.write_text("x")
    return f


# (id, how to build the --out path from tmp_path, needle)
OUT_PATHS = [
    ("a file", lambda tmp: _file(tmp), "is a file, not a directory"),
    ("under a file", lambda tmp: _file(tmp) / "results", "is a file, not a directory"),
    ("cannot be created", lambda tmp: Path("/proc/fedattr-results"), "cannot create or write"),
]


@pytest.mark.parametrize("make,needle", [c[1:] for c in OUT_PATHS], ids=[c[0] for c in OUT_PATHS])
def test_bad_out_paths(scenario, tmp_path, make, needle):
    _assert_user_error(_run(["run", str(scenario), "--out", str(make(tmp_path))]), needle)


# (id, CLI arguments with {scenario} and {tmp} placeholders, needle)
CLI_OPTIONS = [
    ("missing scenario file", ["run", "{tmp}/absent.toml"], "absent.toml"),
    ("scenario file is not TOML", ["run", "{tmp}/broken.toml"], "broken.toml"),
    ("sweep grid without values", ["sweep", "{scenario}", "--grid", "partition.alpha"], "partition.alpha"),
    ("sweep grid over an unknown key", ["sweep", "{scenario}", "--grid", "nope.key=1,2"], "nope"),
    ("report of a missing directory", ["report", "{tmp}/absent"], "not found"),
    ("report of a directory that is not a results directory", ["report", "{tmp}"], "scenario.json"),
    ("train-generator with a bad source", ["train-generator", "{scenario}", "--source", "cloud"], "cloud"),
]


@pytest.mark.parametrize("args,needle", [c[1:] for c in CLI_OPTIONS], ids=[c[0] for c in CLI_OPTIONS])
def test_bad_cli_options(scenario, tmp_path, args, needle):
    (tmp_path / "broken.toml").write_text("name = [unclosed\n")
    args = [a.format(scenario=scenario, tmp=tmp_path) for a in args]
    result = _run(args)
    if args[0] == "train-generator":  # typer's own usage error for a bad choice: exit 2 as well
        assert result.exit_code == 2 and needle in result.output
        return
    _assert_user_error(result, needle)


# (id, how to change a copy of the stored results, command, needle)
def _truncate(run: Path) -> None:
    p = run / "jobs" / "attack__s1" / "rounds.jsonl"
    p.write_text(p.read_text()[:-40])


def _garbage_summary(run: Path) -> None:
    (run / "jobs" / "honest__s0" / "summary.json").write_text("{garbage")


STORED = [
    ("report: truncated rounds.jsonl", _truncate, ["report"], "attack__s1/rounds.jsonl:3: not valid JSON"),
    ("report: garbage summary.json", _garbage_summary, ["report"], "honest__s0/summary.json: not valid JSON"),
]


@pytest.mark.parametrize("damage,command,needle", [c[1:] for c in STORED], ids=[c[0] for c in STORED])
def test_damaged_results_files(tmp_path, damage, command, needle):
    run = Path(shutil.copytree(SMALL / "run", tmp_path / "run"))
    damage(run)
    result = _run(command + [str(run)])
    _assert_user_error(result, needle)
    assert "delete" in result.stderr  # says what to do


def test_resume_of_a_directory_of_other_settings_is_refused(scenario, tmp_path):
    out = tmp_path / "out"
    (out / "jobs" / "honest__s0").mkdir(parents=True)
    from fedattr.scenario import load_scenario

    stored = load_scenario(scenario, ["rounds=2", "train.lr=0.5"]).model_dump(mode="json")
    (out / "scenario.json").write_text(json.dumps(stored))
    result = _run(["run", str(scenario), "--out", str(out)])
    _assert_user_error(result, "differing keys: rounds, train.lr")
    assert "--force" in result.stderr and (out / "jobs" / "honest__s0").is_dir()


def test_resume_over_a_damaged_job_is_refused_naming_the_file(scenario, tmp_path):
    from fedattr.scenario import load_scenario

    out = tmp_path / "out"
    job = out / "jobs" / "honest__s0"
    job.mkdir(parents=True)
    (job / "rounds.jsonl").write_text('{"schema_version": 2, "arm": "honest", "seed": 0, "rou')
    (out / "scenario.json").write_text(json.dumps(load_scenario(scenario, []).model_dump(mode="json")))
    result = _run(["run", str(scenario), "--out", str(out)])
    _assert_user_error(result, "cannot resume: damaged results file")
    assert "honest__s0/rounds.jsonl:1" in result.stderr and "delete" in result.stderr
    assert not (out / "logs").exists()  # refused before Flower started
