"""fedattr.launch.train_generator: the attacker's generator is trained once, cached, and forced anew."""

import pytest

from fedattr.core.errors import UserError
from fedattr.launch.train_generator import train_generator
from fedattr.scenario import scenario_from_dict


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
