"""Values handed to ``flwr run --run-config``, passed as a TOML file.

``flwr run`` reads ``--run-config 'key=value ...'`` with a regular expression, so a value with a
space or a quote breaks it and a crafted one adds keys. A TOML file written with ``tomli_w``
carries every value whole (spaces, quotes, unicode), and its keys are exactly the ones given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import tomli_w

from fedattr.results.store import atomic_write_text

__all__ = ["run_config_args"]


def run_config_args(path: Path, values: Mapping[str, str | int | float | bool]) -> list[str]:
    """Write ``values`` to the TOML file ``path`` (its name ends in ``.toml``, as ``flwr`` requires);
    return the ``flwr run`` arguments that pass it."""
    path = Path(path).resolve()
    if path.suffix != ".toml":
        raise ValueError(f"flwr reads a run config file only when its name ends in .toml: {path}")
    atomic_write_text(path, tomli_w.dumps({str(k): v for k, v in values.items()}))
    return ["--run-config", str(path)]
