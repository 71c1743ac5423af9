"""This machine's float32 matmul rate (torch, CPU), the figure results pages quote for their machine.

    python -m benchmarks.matmul [N ...]

prints the rate for each matrix size N (default 256 512 1024).
"""

from __future__ import annotations

import sys

from fedattr.report.machine import machine, matmul_rate


def main(argv: list[str] | None = None) -> int:
    """Print the machine line and the matmul rate at each size."""
    sizes = [int(a) for a in (sys.argv[1:] if argv is None else argv)] or [256, 512, 1024]
    print(machine().line())
    for n in sizes:
        print(f"n={n}: {matmul_rate(n=n):.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
