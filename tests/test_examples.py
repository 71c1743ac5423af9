"""examples/quickstart-attribution: a stock Flower PyTorch app whose ServerApp adds attribution.

The slow test runs it as a user does, with a real `flwr run` (simulation, 3 SuperNodes, 2 rounds),
and checks the values it wrote as fedattr results.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import fedattr
from fedattr.launch.processes import project_root

EXAMPLE = project_root() / "examples" / "quickstart-attribution"
PACKAGE = EXAMPLE / "quickstart_attribution"
FLWR = str(Path(sys.executable).parent / "flwr")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_the_client_side_knows_nothing_of_fedattr():
    for path in (PACKAGE / "client_app.py", PACKAGE / "task.py"):
        assert not any(m == "fedattr" or m.startswith("fedattr.") for m in _imports(path)), path
    assert "fedattr" in _imports(PACKAGE / "server_app.py")


def test_the_quickstart_model_is_the_one_attribution_is_verified_on():
    """`x.view(-1, 16 * 4 * 4)` after convolutions: the model as Flower's quickstart writes it."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        from quickstart_attribution.task import Net, load_data, load_server_data
    finally:
        sys.path.remove(str(EXAMPLE))
    assert "x.view(-1, 16 * 4 * 4)" in (PACKAGE / "task.py").read_text()
    x_val, y_val, x_test, y_test = load_server_data()
    assert x_val.shape == (500, 1, 28, 28) and len(y_test) == 500
    sizes = [len(load_data(p, 3).dataset) for p in range(3)]
    assert sum(sizes) == 4000 and max(sizes) - min(sizes) <= 1  # IID over the images the server does not keep
    # the wrapper accepts this model as the ServerApp builds it (its engine is checked on it)
    from flwr.serverapp.strategy import FedAvg

    strategy = fedattr.AttributedStrategy(FedAvg(), model=Net(), x_val=x_val, y_val=y_val,
                                          evaluators=["loo", "shapley"])
    assert [name for name, _ in strategy.scorer.evaluators] == ["loo", "shapley"]


@pytest.mark.slow
def test_example_app_runs_with_flwr_run_and_writes_attribution(tmp_path):
    from fedattr.launch.simulation import simulation_superlink

    out = tmp_path / "out"
    with simulation_superlink(tmp_path / "flwr_home", tmp_path / "superlink.log") as (conn, env):
        proc = subprocess.run([FLWR, "run", str(EXAMPLE), conn, "--run-config", f"num-server-rounds=2 out-dir='{out}'",
                               "--federation-config", "num-supernodes=3", "--stream"],
                              env=env, capture_output=True, text=True, timeout=500)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    job = out / "jobs" / "run__s0"
    rounds = fedattr.read_rounds(job / "rounds.jsonl")
    summary = fedattr.read_summary(job / "summary.json")
    assert [r.round for r in rounds] == [1, 2] and summary.status == "finished", text[-3000:]
    nodes = set()
    for r in rounds:
        assert r.clients == [0, 1, 2] and r.rejected == [] and r.missing == 0
        assert set(r.values) == {"loo", "shapley"}
        assert all(set(v) == {0, 1, 2} for v in r.values.values())
        nodes.add(tuple(sorted(r.node_ids.items())))
        assert sorted(r.num_examples.values()) == [1333.0, 1333.0, 1334.0]
    # a stock ClientApp's node keeps its player index across rounds
    assert len(nodes) == 1 and len({n for _, n in next(iter(nodes))}) == 3
    for ev in ("loo", "shapley"):
        for p in (0, 1, 2):
            assert summary.cumulative[ev][p] == pytest.approx(sum(r.values[ev][p] for r in rounds))
    assert summary.final_test["accuracy"] > summary.initial_test["accuracy"] + 0.1  # the model trained
    assert "cumulative shapley: client 0:" in text  # the ServerApp's own print of the totals
    results = fedattr.load_results(out)
    assert results.evaluators == ["loo", "shapley"] and list(results.jobs) == [("run", 0)]
