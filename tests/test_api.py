"""The public API (fedattr/__init__.py) and docs/api.md, whose quick start runs here as written."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import fedattr
from fedattr.launch.processes import project_root

DOC = project_root() / "docs" / "api.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_import_fedattr_loads_neither_torch_nor_flower():
    code = ("import sys, fedattr; print(fedattr.__version__); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'flwr', 'numpy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == [fedattr.__version__, "[]"]


def test_every_public_name_resolves_and_is_documented():
    doc = DOC.read_text()
    for name in fedattr.__all__:
        assert getattr(fedattr, name) is not None
        if name != "__version__":
            assert f"`{name}" in doc, f"{name} is not in docs/api.md"
    assert set(fedattr.__all__) <= set(dir(fedattr))
    assert "shapley" in fedattr.EVALUATORS and "loo" in fedattr.EVALUATORS
    assert fedattr.make_evaluator("loo").__class__.__name__ == "LeaveOneOut"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        fedattr.Nope  # noqa: B018


def test_quick_start_code_defines_a_flower_app():
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    (code,) = _blocks("python")
    namespace: dict = {"__name__": "my_app"}
    exec(compile(code, str(DOC), "exec"), namespace)
    assert isinstance(namespace["server"], ServerApp) and isinstance(namespace["client"], ClientApp)
    x_val, y_val = namespace["load"]()
    parts = [namespace["load"](p, 3)[1] for p in range(3)]
    assert x_val.shape == (300, 64) and sum(len(p) for p in parts) == 1797 - 300


@pytest.mark.slow
def test_quick_start_runs_as_written(tmp_path):
    """The page's pyproject.toml and my_app.py in a directory, then its `flwr run` command there."""
    from fedattr.launch.simulation import simulation_superlink

    app = tmp_path / "my-app"
    app.mkdir()
    (toml,) = _blocks("toml")
    (code,) = _blocks("python")
    command = _blocks("bash")[0].strip()  # the quick start's command; later blocks are fedattr's own app
    assert command.startswith("flwr run .") and "\n" not in command
    (app / "pyproject.toml").write_text(toml)
    (app / "my_app.py").write_text(code)
    out = tmp_path / "results"
    argv = shlex.split(command)
    argv[0] = str(Path(sys.executable).parent / "flwr")
    with simulation_superlink(tmp_path / "flwr_home", tmp_path / "superlink.log") as (_, env):
        # the connection is the SuperLink's, made the default one; out-dir as the page says
        proc = subprocess.run([*argv, "--run-config", f"out-dir='{out}'"], cwd=app, env=env, capture_output=True,
                              text=True, timeout=500)
        ls = subprocess.run([argv[0], "ls", "--format", "json"], cwd=app, env=env, capture_output=True, text=True,
                            timeout=120)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert [r["status"] for r in json.loads(ls.stdout[ls.stdout.index("{"):])["runs"]] == ["finished:completed"], \
        text[-3000:]
    printed = re.findall(r"round (\d): shapley \{0: [-0-9.e]+, 1: [-0-9.e]+, 2: [-0-9.e]+\}", text)
    assert printed == ["1", "2", "3"], text[-3000:]
    assert "cumulative shapley: {0: " in text
    rounds = fedattr.read_rounds(out / "jobs" / "run__s0" / "rounds.jsonl")
    assert [r.round for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert set(r.values) == {"loo", "shapley"} and r.clients == [0, 1, 2]
    results = fedattr.load_results(out)
    assert results.evaluators == ["loo", "shapley"]
    report = fedattr.write_report(out)
    assert "shapley" in report.read_text()
