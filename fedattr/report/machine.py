"""The machine a report or results page is written on: CPU count, platform, float32 matmul rate."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

__all__ = ["Machine", "machine", "matmul_rate"]


def matmul_rate(n: int = 512, seconds: float = 0.5) -> float:
    """This machine's float32 matmul rate in GFLOP/s (torch, CPU, current thread count)."""
    import torch

    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b  # warm-up
    reps, start = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * n**3 * reps / elapsed / 1e9


@dataclass(frozen=True)
class Machine:
    """CPU count, platform and matmul rate (GFLOP/s, float32 512x512) of this machine."""

    cpu_count: int | None
    platform: str
    matmul_gflops: float

    def line(self) -> str:
        """One line for the terminal and the results page."""
        return (f"machine: {self.cpu_count or '?'} CPUs, {self.platform}; matmul rate "
                f"{self.matmul_gflops:.1f} GFLOP/s (float32, 512x512, torch CPU)")


def machine() -> Machine:
    """Measure this machine (about half a second)."""
    return Machine(os.cpu_count(), platform.platform(), matmul_rate())
