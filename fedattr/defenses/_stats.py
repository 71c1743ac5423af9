"""Shared robust statistics and update geometry for the detectors."""

from __future__ import annotations

import numpy as np
import torch

#: Iglewicz-Hoaglin: 0.6745 = Phi^-1(0.75), so that 0.6745 (x - median) / MAD is a z-score under normality.
IH_CONST = 0.6745
#: 1 / E|Z| of a standard normal (sqrt(pi/2)): scales the mean absolute deviation when MAD is 0.
MEAN_AD_CONST = 1.253314


def robust_z(x) -> np.ndarray:
    """Modified z-score ``0.6745 (x - median) / MAD`` (Iglewicz and Hoaglin 1993).

    When more than half the values coincide the MAD is 0; the mean absolute deviation
    (``(x - median) / (1.253314 MeanAD)``) takes its place, and when that is 0 too every value
    equals the median and every z is 0.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    med = np.median(x)
    dev = x - med
    mad = np.median(np.abs(dev))
    if mad > 0:
        return IH_CONST * dev / mad
    mean_ad = np.mean(np.abs(dev))
    if mean_ad > 0:
        return dev / (MEAN_AD_CONST * mean_ad)
    return np.zeros_like(x)


def as_float64(updates: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(updates).detach().to(torch.float64)


def unit_rows(g: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm; zero rows stay zero (their cosine with anything is 0)."""
    norms = g.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, g / norms.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(g))


def cosine_matrix(g: torch.Tensor) -> np.ndarray:
    """``[n, n]`` pairwise cosine similarities of the rows of ``g`` (0 for a zero row)."""
    u = unit_rows(as_float64(g))
    return (u @ u.T).clamp(-1.0, 1.0).cpu().numpy()


def squared_distances(g: torch.Tensor) -> np.ndarray:
    """``[n, n]`` squared Euclidean distances between the rows of ``g`` (float64, diagonal 0)."""
    g = as_float64(g)
    sq = (g * g).sum(1)
    d = (sq[:, None] + sq[None, :] - 2.0 * (g @ g.T)).clamp_min(0.0)
    d.fill_diagonal_(0.0)
    return d.cpu().numpy()


def coordinate_median(g: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median of the rows (mean of the two middle values for an even count)."""
    g = as_float64(g)
    n = g.shape[0]
    s = g.sort(dim=0).values
    if n % 2:
        return s[n // 2]
    return 0.5 * (s[n // 2 - 1] + s[n // 2])
