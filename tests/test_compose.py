"""docker-compose deployment: the committed files, their validation, and a real 2-round run.

`make test` sets Docker up (scripts/test_env.sh installs and starts it where it can). Where Docker
is unusable these tests skip, with the reason in pytest's summary (-rs); under CI=true they fail
with it instead. FEDATTR_SKIP_DOCKER=1 skips them on purpose.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from fedattr.launch.compose import compose_text, service_names, tls_text
from fedattr.launch.processes import FLWR_ENV, free_port, project_root
from fedattr.results.store import read_jsonl
from fedattr.scenario import load_scenario

REPO = project_root()
TEST_OVERRIDE = REPO / "tests" / "compose" / "docker-compose.test.yml"
TINY = REPO / "tests" / "compose" / "tiny.toml"
TEST_IMAGE = "fedattr-test-base:local"


def _problem(need_engine: bool) -> str | None:
    """Why Docker (compose; with ``need_engine`` also the engine) cannot be used here, else None."""
    if _compose_cmd() is None:
        return "neither `docker-compose` nor `docker compose` is installed"
    if need_engine:
        if shutil.which("docker") is None:
            return "the docker CLI is not installed"
        try:
            r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                               text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return "`docker info` did not answer within 60 s"
        if r.returncode != 0:
            return f"the Docker engine is not reachable: {(r.stderr or r.stdout).strip()[:300]}"
    return None


def _compose_cmd() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def require_docker(need_engine: bool = True) -> list[str]:
    """The compose command; when Docker is unusable, skip with the reason (fail under CI=true)."""
    problem = _problem(need_engine)
    if problem:
        setup = os.environ.get("FEDATTR_DOCKER_UNAVAILABLE")
        why = f"Docker is unusable: {problem}" + (f" ({setup})" if setup else "")
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; CI=true needs the compose tests to run (scripts/test_env.sh sets Docker up)",
                        pytrace=False)
        if os.environ.get("FEDATTR_SKIP_DOCKER") == "1":
            pytest.skip(f"FEDATTR_SKIP_DOCKER=1; {why}")
        pytest.skip(f"{why}; `make test` installs and starts it where it runs as root with apt-get")
    return _compose_cmd()


TEST_ENV = REPO / "scripts" / "test_env.sh"


def _bare_path(tmp_path: Path, *tools: str) -> str:
    """A PATH holding bash, this Python and ``tools`` only: no docker, dockerd, compose or apt-get."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("bash", *tools):
        (bin_dir / name).symlink_to(shutil.which(name))
    python = bin_dir / "python"  # a wrapper, not a link: the venv is found from the path run
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return str(bin_dir)


def _test_env(tmp_path: Path, uid: int, *command: str, ci: bool = False, tools: tuple = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "FEDATTR_SKIP_DOCKER", "FEDATTR_DOCKER_UNAVAILABLE")}
    env.update(PATH=_bare_path(tmp_path, *tools), FEDATTR_TEST_UID=str(uid), **({"CI": "true"} if ci else {}))
    return subprocess.run([str(TEST_ENV), *command], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_test_env_says_why_docker_cannot_be_had_and_keeps_the_exit_status(tmp_path):
    show = "import os, sys; print(os.environ.get('FEDATTR_DOCKER_UNAVAILABLE')); sys.exit(3)"
    not_root = _test_env(tmp_path / "a", 1000, "python", "-c", show)
    assert not_root.returncode == 3
    assert not_root.stdout.startswith("not root, so docker dockerd docker-compose busybox cannot be installed")
    assert "the compose tests will be skipped" in not_root.stderr
    no_apt = _test_env(tmp_path / "b", 0, "python", "-c", show)
    assert no_apt.stdout.startswith("docker dockerd docker-compose busybox missing and no apt-get")


def test_compose_tests_skip_with_the_reason_and_fail_under_ci(tmp_path):
    pytest_cmd = ("python", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                  f"{Path(__file__)}::test_compose_config_validates_plain_and_tls")
    skipped = _test_env(tmp_path / "a", 1000, *pytest_cmd)
    assert skipped.returncode == 0, skipped.stdout[-2000:]
    assert "1 skipped" in skipped.stdout and "passed" not in skipped.stdout
    assert "SKIPPED" in skipped.stdout and "not root, so docker dockerd docker-compose busybox" in skipped.stdout
    failed = _test_env(tmp_path / "b", 1000, *pytest_cmd, ci=True)
    assert failed.returncode == 1 and "1 failed" in failed.stdout
    assert "CI=true needs the compose tests to run" in failed.stdout


def test_committed_compose_files_are_the_generated_ones():
    # docker-compose.yml / .tls.yml are the generator's output for scenarios/demo.toml
    # (`fedattr deploy compose-file scenarios/demo.toml [--tls]`): one SuperNode per client.
    demo = load_scenario(REPO / "scenarios" / "demo.toml")
    assert (REPO / "docker-compose.yml").read_text() == compose_text(demo.num_clients, list(demo.attacker_ids))
    assert (REPO / "docker-compose.tls.yml").read_text() == tls_text(demo.num_clients, list(demo.attacker_ids))


def test_generated_topology():
    spec = yaml.safe_load(compose_text(3, [1]))
    services = spec["services"]
    assert set(services) == set(service_names(3)) | {"flwr"}
    configs = {name: s["command"][s["command"].index("--node-config") + 1]
               for name, s in services.items() if name.startswith("supernode-")}
    assert configs == {"supernode-0": 'partition-id=0 num-partitions=3 role="benign"',
                       "supernode-1": 'partition-id=1 num-partitions=3 role="attacker"',
                       "supernode-2": 'partition-id=2 num-partitions=3 role="benign"'}
    for i in range(3):
        assert services[f"superexec-{i}"]["command"][-1] == f"supernode-{i}:9094"
        assert "--isolation" in services[f"supernode-{i}"]["command"]
    assert services["serverapp"]["command"][-1] == "superlink:8000"
    assert "results:/results" in services["serverapp"]["volumes"]
    assert "results" in spec["volumes"]
    with pytest.raises(ValueError):
        compose_text(0, [])


def test_compose_config_validates_plain_and_tls(tmp_path):
    compose = require_docker(need_engine=False)
    base = [*compose, "--project-directory", str(REPO), "-f", str(REPO / "docker-compose.yml")]
    plain = subprocess.run([*base, "config"], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    tls = subprocess.run([*base, "-f", str(REPO / "docker-compose.tls.yml"), "config"], capture_output=True,
                         text=True, timeout=120)
    assert tls.returncode == 0, tls.stderr
    merged = yaml.safe_load(tls.stdout)["services"]
    link, node = merged["superlink"]["command"], merged["supernode-3"]["command"]
    assert "--insecure" not in link and "--enable-supernode-auth" in link and "/certs/superlink.crt" in link
    assert "--insecure" not in node and node[node.index("--auth-supernode-private-key") + 1] == "/certs/supernode-3"
    assert 'role="benign"' in node[node.index("--node-config") + 1]
    assert merged["supernode-0"]["command"][-1].endswith('role="attacker"')
    assert "--insecure" not in merged["serverapp"]["command"]
    # a broken file is refused: the validation is real
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  superlink:\n    command: 3\n    ports: 8000\n")
    assert subprocess.run([*compose, "-f", str(bad), "config"], capture_output=True, timeout=120).returncode != 0


def _runs(env: dict) -> list[dict] | None:
    """The runs ``flwr ls`` reports on the compose SuperLink (None while it does not answer)."""
    ls = subprocess.run([str(Path(sys.executable).parent / "flwr"), "ls", "compose", "--format", "json"],
                        env=env, capture_output=True, text=True, timeout=120)
    try:
        return json.loads(ls.stdout[ls.stdout.index("{"):]).get("runs")
    except ValueError:
        return None


def _wait_superlink(env: dict, timeout_s: float) -> None:
    # docker-proxy accepts on the published port before the SuperLink inside listens: ask Flower.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _runs(env) is not None:
            return
        time.sleep(2)
    raise AssertionError(f"the superlink container did not answer `flwr ls` within {timeout_s:.0f} s")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compose_deployment_two_rounds(tmp_path):
    compose = require_docker()
    if subprocess.run(["docker", "image", "inspect", TEST_IMAGE], capture_output=True).returncode != 0:
        subprocess.run([str(REPO / "scripts" / "docker_test_image.sh"), TEST_IMAGE], check=True, timeout=300)
    work = tmp_path
    for d in ("home", "cache", "flwr_home"):
        (work / d).mkdir()
    (work / "docker-compose.yml").write_text(compose_text(3, [0], source=str(TINY)))
    port = free_port()
    project = f"fedattrtest{uuid.uuid4().hex[:10]}"
    env = {**os.environ, **FLWR_ENV, "FEDATTR_REPO": str(REPO), "FEDATTR_PYTHON_HOME": sys.base_prefix,
           "FEDATTR_TEST_WORK": str(work), "FEDATTR_SUPERLINK_PORT": str(port), "FLWR_HOME": str(work / "flwr_home")}
    dc = [*compose, "-p", project, "--project-directory", str(REPO), "-f", str(work / "docker-compose.yml"),
          "-f", str(TEST_OVERRIDE)]
    (work / "flwr_home" / "config.toml").write_text(
        f'[superlink]\ndefault = "compose"\n\n[superlink.compose]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    out = work / "results"
    try:
        up = subprocess.run([*dc, "up", "-d", "--no-build", *service_names(3)], env=env, capture_output=True,
                            text=True, timeout=300)
        assert up.returncode == 0, up.stderr
        _wait_superlink(env, 300)
        t0 = time.perf_counter()
        run = subprocess.run([str(Path(sys.executable).parent / "flwr"), "run", str(REPO), "compose", "--stream",
                              "--run-config", f"scenario='{TINY}' out-dir='{out}'"],
                             env=env, capture_output=True, text=True, timeout=1200)
        (work / "flwr.log").write_text(run.stdout + run.stderr)
        wall = time.perf_counter() - t0
        runs = _runs(env) or []
        assert [r["status"] for r in runs] == ["finished:completed"], run.stdout[-3000:]
        job = out / "jobs" / "honest__s0"
        rounds = read_jsonl(job / "rounds.jsonl")
        assert [r["round"] for r in rounds] == [1, 2]
        for r in rounds:
            # roles came from each container's node_config; every node replied
            assert r["roles"] == {"0": "attacker", "1": "benign", "2": "benign"}
            assert r["clients"] == [0, 1, 2] and r["missing"] == 0
            assert set(r["values"]["loo"]) == {"0", "1", "2"}
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["rounds_recorded"] == 2
        print(f"compose run: flwr run to finished in {wall:.0f} s")
    finally:
        logs = subprocess.run([*dc, "logs", "--no-color"], env=env, capture_output=True, text=True, timeout=120)
        (work / "compose.log").write_text(logs.stdout + logs.stderr)
        down = subprocess.run([*dc, "down", "-v", "-t", "5"], env=env, capture_output=True, text=True, timeout=300)
        left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                              capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert left.stdout.strip() == "", f"containers left behind: {left.stdout}"
