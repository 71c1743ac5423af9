"""Launch pieces that need no Flower start-up: registry checks, generator training, process cleanup."""

import os
import subprocess
import sys
import time

import pytest

from fedattr.core.errors import UserError
from fedattr.launch.train_generator import train_generator
from fedattr.launch.processes import RUN_TAG, end_tagged_processes, tagged_pids
from fedattr.scenario.preflight import check_registries, registries
from fedattr.scenario.schema import scenario_from_dict


def test_registries_list_every_kind():
    reg = registries()
    assert {"shapley", "gtg", "tmc", "loo"} <= set(reg["evaluators"])
    assert {"latent", "pixel", "noise_floor", "targeted_real"} <= set(reg["attacks"])
    assert "fedavg" in reg["aggregators"] and "mnist5k" in reg["datasets"]


@pytest.mark.parametrize("patch,needle", [
    ({"model": "alexnet"}, "model = 'alexnet'"),
    ({"attribution": {"evaluators": [{"name": "shapley", "params": {"budget": 3}}]}}, "attribution.evaluators.0 (shapley)"),
    ({"arms": [{"name": "a", "attack": "latent", "params": {"bogus": 1}}]}, "arms.0 (a)"),
    ({"arms": [{"name": "a", "attack": "teleport"}]}, "teleport"),
])
def test_registry_errors_name_the_field(patch, needle):
    with pytest.raises(UserError) as err:
        check_registries(scenario_from_dict(patch))
    assert needle in str(err.value)


def test_train_generator_caches_and_forces(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDATTR_CACHE_DIR", str(tmp_path))
    sc = scenario_from_dict({"data": {"val_size": 200, "test_size": 200, "aux_size": 100},
                             "arms": [{"name": "attack", "attack": "latent", "params": {"generator_epochs": 2}}]})
    first = train_generator(sc, source="public")
    assert first["cached"] is False and first["images"] == 100 and str(tmp_path) in first["path"]
    again = train_generator(sc, source="public")
    assert again["cached"] is True and again["key"] == first["key"]
    forced = train_generator(sc, source="public", force=True)
    assert forced["cached"] is False and forced["key"] == first["key"]
    local = train_generator(sc, source="local", partition_id=3)
    assert local["key"] != first["key"]
    with pytest.raises(UserError):
        train_generator(sc, source="local", partition_id=99)


def test_tagged_processes_and_their_children_are_ended():
    tag = "test-" + str(os.getpid())
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], env={}); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, RUN_TAG: tag}, start_new_session=True)
    deadline = time.monotonic() + 10
    while len(tagged_pids(tag)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    found = end_tagged_processes(tag)
    assert parent.pid in found and len(found) == 2  # the child has no tag in its environment
    parent.wait(timeout=5)
    assert tagged_pids(tag) == []
