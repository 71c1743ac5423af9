import os
from contextlib import contextmanager

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


@contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module's tests, restored after: small models run faster so than
    on two contended cores."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="session")
def digits_round():
    """A small CNN after one epoch on 200 digits and five clients' one-epoch updates on 40 each:
    ``(model, x_val, y_val, base [P], updates [5, P])``, built on one thread."""
    from fedattr.evaluators.layout import StateLayout
    from fedattr.learning.data import load_splits
    from fedattr.learning.models import build_model
    from fedattr.learning.training import train_local

    with _torch_threads(1):
        d = load_splits("digits")
        torch.manual_seed(0)
        model = build_model("cnn", side=8)
        train_local(model, d.x_aux[:200], d.y_aux[:200], epochs=1, lr=0.05, seed=0)
        layout = StateLayout.from_module(model)
        base = layout.flatten(model.state_dict())
        updates = []
        for i in range(5):
            client = build_model("cnn", side=8)
            client.load_state_dict(model.state_dict())
            part = slice(40 * i, 40 * (i + 1))
            train_local(client, d.x_pool[part], d.y_pool[part], epochs=1, lr=0.05, seed=i)
            updates.append(layout.flatten(client.state_dict()) - base)
    return model, d.x_val, d.y_val, base, torch.stack(updates)
