"""fedattr.core.env: FEDATTR_DATA_DIR / FEDATTR_CACHE_DIR, read in one place and used by every reader."""

from __future__ import annotations

from pathlib import Path

from fedattr.core import env
from fedattr.learning.data import default_data_dir
from fedattr.protocol import NodeSettings, default_cache_dir


def test_defaults_and_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv(env.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(env.CACHE_DIR_ENV, "")  # empty counts as unset
    assert env.default_data_dir() == Path.home() / ".cache" / "fedattr" / "data" == default_data_dir()
    assert env.default_cache_dir() == (Path.home() / ".cache" / "fedattr" / "generators").resolve()
    monkeypatch.setenv(env.DATA_DIR_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(env.CACHE_DIR_ENV, str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "data" and default_cache_dir() == tmp_path / "cache"


def test_a_node_config_wins_over_the_environment(tmp_path):
    environ = {env.DATA_DIR_ENV: "/env/data", env.CACHE_DIR_ENV: "/env/cache"}
    ctx = NodeSettings.from_node_config({"partition-id": 0, "cache-dir": str(tmp_path)}, environ)
    assert ctx.data_dir == "/env/data" and ctx.cache_dir == str(tmp_path)
