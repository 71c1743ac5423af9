"""fedattr.core.io: JSON-safe values and atomic writes, including on a full disk."""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from fedattr.core.errors import NoSpaceError
from fedattr.core.io import atomic_write_text, json_safe


def test_json_safe_turns_arrays_scalars_and_non_finite_values_into_json():
    obj = {1: np.float32(0.5), "a": (np.int64(3), math.nan), "t": torch.tensor([1.5, math.inf]),
           "s": torch.tensor(2), "arr": np.array([[1, 2]]), "b": np.bool_(True), "x": "keep",
           "p": Path("/r/a b"), "o": object}
    safe = json_safe(obj)
    assert safe == {"1": 0.5, "a": [3, None], "t": [1.5, None], "s": 2, "arr": [[1, 2]], "b": True, "x": "keep",
                    "p": "/r/a b", "o": str(object)}
    assert json.loads(json.dumps(safe, allow_nan=False)) == safe


def test_atomic_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "f.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new ü")
    assert path.read_text(encoding="utf-8") == "new ü" and os.listdir(path.parent) == ["f.json"]


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_a_full_disk_names_the_file_keeps_the_old_one_and_leaves_no_temp_file(tmp_path, monkeypatch, where):
    path = tmp_path / "summary.json"
    atomic_write_text(path, "old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "write":
        real_fdopen = os.fdopen

        class Full:
            def __init__(self, fh):
                self.fh = fh

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.fh.close()

            def write(self, data):
                full()

        monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(os, where, full)
    with pytest.raises(NoSpaceError, match=f"no space left on {path}"):
        atomic_write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["summary.json"]
    atomic_write_text(path, "new")  # space freed: the write goes through
    assert path.read_text() == "new"


def test_atomic_write_gives_the_file_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644
