"""The attacker's generative model: a small convolutional VAE, trained once and cached on disk.

The paper's setting trains it on the public auxiliary split; the "purely local" variant trains it
on the attacker's own partition. Labels never enter the VAE: the teacher assigns them later.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fedattr.attacks._util import atomic_save, config_key, seeded, tensor_fingerprint
from fedattr.core.errors import UserError

#: bump when the architecture or the training loop changes, so old cache files stop matching
FORMAT_VERSION = 1

#: training defaults (each one is a config key of the ``latent`` attack)
DEFAULT_EPOCHS = 30
DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = 2e-3
DEFAULT_BETA = 1.0
DEFAULT_WIDTH = 32


def default_latent_dim(channels: int) -> int:
    """16 latent dimensions for grey images, 64 for colour."""
    return 16 if channels == 1 else 64


class VAE(nn.Module):
    """Convolutional VAE for C x side x side images in [0, 1]; the decoder ends in a sigmoid.

    The encoder halves the side two or three times (three from 32 pixels up), so the same class
    serves 8x8 digits, 28x28 MNIST and 32x32 colour images.
    """

    def __init__(self, channels: int = 1, side: int = 28, latent_dim: int = 16, width: int = DEFAULT_WIDTH):
        super().__init__()
        # Stride-2 stages until the map is small but at least 4 wide where possible: 32 = 4 * 8
        # takes three, 28 = 7 * 4 two, 8 = 2 * 4 (digits) two; any side divisible by 4 works.
        if side % 4 != 0:
            raise UserError(f"the VAE needs an image side divisible by 4, got {side}")
        stages = 3 if side % 8 == 0 and side >= 32 else 2
        self.config = {"channels": channels, "side": side, "latent_dim": latent_dim, "width": width}
        self.latent_dim = latent_dim
        self.base = side // 2**stages
        widths = [width * 2**i for i in range(stages)]
        enc: list[nn.Module] = []
        cin = channels
        for w in widths:
            enc += [nn.Conv2d(cin, w, 4, 2, 1), nn.LeakyReLU(0.2)]
            cin = w
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self.top = widths[-1]
        flat = self.top * self.base * self.base
        self.fc_mu = nn.Linear(flat, latent_dim)
        self.fc_logvar = nn.Linear(flat, latent_dim)
        self.fc_dec = nn.Linear(latent_dim, flat)
        dec: list[nn.Module] = []
        for i in range(stages - 1, 0, -1):
            dec += [nn.ConvTranspose2d(widths[i], widths[i - 1], 4, 2, 1), nn.ReLU()]
        dec += [nn.ConvTranspose2d(widths[0], channels, 4, 2, 1), nn.Sigmoid()]
        self.decoder_net = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of q(z | x)."""
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h).clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] for latent codes ``z`` of shape (N, latent_dim)."""
        h = F.relu(self.fc_dec(z)).view(-1, self.top, self.base, self.base)
        return self.decoder_net(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decode(z), mu, logvar


def generator_config(
    *, channels: int, side: int, latent_dim: int | None, width: int, epochs: int, batch_size: int,
    lr: float, beta: float, seed: int,
) -> dict[str, Any]:
    """The JSON config that, with the data fingerprint, keys a cached generator."""
    return {
        "format": FORMAT_VERSION, "channels": channels, "side": side,
        "latent_dim": latent_dim or default_latent_dim(channels), "width": width, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "beta": beta, "seed": seed,
    }


def load_generator(path: str | Path, expected_key: str | None = None) -> tuple[VAE, dict[str, Any]]:
    """Load a cached VAE; a missing, unreadable or mismatching file is a ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"generator cache file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        config, state = payload["config"], payload["state_dict"]
    except Exception as exc:  # corrupt pickles raise many types
        raise UserError(f"generator cache file {path} is unreadable ({exc.__class__.__name__}); delete it") from None
    if config.get("format") != FORMAT_VERSION:
        raise UserError(
            f"generator cache file {path} has format {config.get('format')}, this code needs {FORMAT_VERSION}; delete it"
        )
    if expected_key is not None and payload.get("key") != expected_key:
        raise UserError(
            f"generator cache file {path} was trained for key {str(payload.get('key'))[:12]}…, not the requested "
            f"{expected_key[:12]}… (different generator config or training data); delete it or use another cache_dir"
        )
    vae = VAE(config["channels"], config["side"], config["latent_dim"], config["width"])
    vae.load_state_dict(state)
    return vae.eval(), payload


def train_generator(
    x: torch.Tensor,
    *,
    channels: int,
    side: int,
    latent_dim: int | None = None,
    width: int = DEFAULT_WIDTH,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    beta: float = DEFAULT_BETA,
    seed: int = 0,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    source_tag: str = "public",
) -> tuple[VAE, dict[str, Any]]:
    """Train a VAE on images ``x`` (N, C, H, W) in [0, 1], or load it from ``cache_dir``.

    The cache key hashes the config and the bytes of ``x``; ``source_tag`` only names the file.
    Returns the VAE (eval mode, on ``device``) and info: key, path, cached, losses and
    recon_losses per epoch (per image), seconds.
    """
    if x.ndim != 4 or tuple(x.shape[1:]) != (channels, side, side):
        raise UserError(f"generator training images must be (N, {channels}, {side}, {side}), got {tuple(x.shape)}")
    if len(x) == 0:
        raise UserError(f"cannot train a generator on no images (source {source_tag!r})")
    device = torch.device(device)
    config = generator_config(
        channels=channels, side=side, latent_dim=latent_dim, width=width, epochs=epochs,
        batch_size=batch_size, lr=lr, beta=beta, seed=seed,
    )
    key = config_key(config, tensor_fingerprint(x))
    path = None
    if cache_dir is not None:
        tag = re.sub(r"[^A-Za-z0-9_.-]", "_", source_tag) or "data"
        path = Path(cache_dir) / f"vae-{tag}-{key[:20]}.pt"
        if path.is_file():
            start = time.perf_counter()
            vae, payload = load_generator(path, key)
            return vae.to(device), {
                "key": key, "path": str(path), "cached": True, "losses": payload["losses"],
                "recon_losses": payload["recon_losses"], "seconds": time.perf_counter() - start,
                "train_seconds": payload["seconds"], "source": source_tag,
            }
    start = time.perf_counter()
    with seeded(seed, device):
        vae = VAE(channels, side, config["latent_dim"], width).to(device)
        opt = torch.optim.Adam(vae.parameters(), lr=lr)
        order_gen = torch.Generator().manual_seed(int(seed))
        losses, recons = [], []
        vae.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=order_gen)
            total = recon_total = 0.0
            for s in range(0, len(x), batch_size):
                xb = x[order[s : s + batch_size]].to(device)
                out, mu, logvar = vae(xb)
                # Per-image sums: the usual VAE ELBO scaling, independent of batch size.
                recon = F.binary_cross_entropy(out, xb, reduction="sum") / len(xb)
                kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(xb)
                loss = recon + beta * kl
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(xb)
                recon_total += float(recon.detach()) * len(xb)
            losses.append(total / len(x))
            recons.append(recon_total / len(x))
    vae.eval()
    seconds = time.perf_counter() - start
    if path is not None:
        state = {k: v.detach().cpu() for k, v in vae.state_dict().items()}
        atomic_save(
            {"key": key, "config": config, "state_dict": state, "losses": losses, "recon_losses": recons,
             "seconds": seconds, "source": source_tag},
            path,
        )
    return vae, {
        "key": key, "path": None if path is None else str(path), "cached": False, "losses": losses,
        "recon_losses": recons, "seconds": seconds, "train_seconds": seconds, "source": source_tag,
    }
