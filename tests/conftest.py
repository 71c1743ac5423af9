import os

import pytest
import torch

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def splits():
    from fedattr.learning.data import load_splits

    return load_splits("mnist5k", None, 500, 500, 300)
