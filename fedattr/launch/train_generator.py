"""Train (or reuse) the attacker's generator ahead of a run, as ``fedattr train-generator`` does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedattr.core.errors import UserError
from fedattr.protocol import default_cache_dir
from fedattr.scenario import Scenario


def train_generator(scenario: Scenario, source: str = "public", partition_id: int | None = None,
                    force: bool = False) -> dict[str, Any]:
    """Train (or load from the cache) the VAE the scenario's latent attacker uses in its first seed.

    The generator settings come from the first ``latent`` arm (defaults otherwise) and the seed is
    the scenario's first seed, so the file written here is the one that arm's attacker loads.
    """
    from fedattr.attacks import make_attack
    from fedattr.attacks import train_generator as _train
    from fedattr.learning.data import client_partition, load_splits

    if source not in ("public", "local"):
        raise UserError(f"source must be 'public' or 'local', got {source!r}")
    d, p = scenario.data, scenario.partition
    seed = scenario.seeds[0]
    splits = load_splits(d.dataset, d.data_dir, d.val_size, d.test_size, d.aux_size, d.pool_size, d.split_seed)
    if source == "public":
        if len(splits.y_aux) == 0:
            raise UserError("data.aux_size is 0: there is no public auxiliary split to train on")
        x = splits.x_aux
    else:
        pid = scenario.attacker_ids[0] if partition_id is None else partition_id
        if not 0 <= pid < scenario.num_clients:
            raise UserError(f"partition id {pid} is not in 0..{scenario.num_clients - 1}")
        x, _ = client_partition(splits, pid, p.kind, scenario.num_clients, alpha=p.alpha,
                                classes_per_client=p.classes_per_client, min_partition_size=p.min_partition_size,
                                seed=seed if p.seed is None else p.seed)
    arm = next((a for a in scenario.arms if a.attack == "latent"), None)
    attack = make_attack("latent", **(dict(arm.params) if arm is not None else {}))
    kwargs = dict(channels=splits.channels, side=splits.side, latent_dim=attack.latent_dim or None,
                  width=attack.generator_width, epochs=attack.generator_epochs,
                  batch_size=attack.generator_batch_size, lr=attack.generator_lr, beta=attack.generator_beta,
                  seed=seed, cache_dir=default_cache_dir(), source_tag=source)
    _, info = _train(x, **kwargs)
    if force and info.get("cached"):
        Path(info["path"]).unlink(missing_ok=True)
        _, info = _train(x, **kwargs)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in info.items() if k not in ("losses", "recon_losses")} | {
        "final_loss": info["losses"][-1] if info.get("losses") else None, "images": len(x)}
