"""Compare the round records of two results directories, field by field, ignoring wall-clock time.

Usage: python scripts/compare_rounds.py RESULTS_A RESULTS_B

Every job of A must exist in B with as many rounds; every field of every round record must be
equal (JSON values, so floats compare bit for bit), except wall-clock timings (``timings`` and
any ``*_seconds``), cache hits (``*_cached``: whether a generator was trained or loaded), Flower's
node ids (random per run) and fields present in only one of the two (a newer schema's additions,
listed). Exit status 0 when equal, 1 when not, 2 on bad input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

IGNORED = {"timings", "node_ids"}


def _strip(obj):
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in IGNORED and not k.endswith(("_seconds", "_cached"))}
    return obj


def _rounds(job: Path) -> list[dict]:
    return [json.loads(line) for line in (job / "rounds.jsonl").read_text().splitlines() if line.strip()]


def compare(a: Path, b: Path) -> tuple[int, int, list[str], set[str]]:
    """(jobs, rounds, differences, fields in one side only) of two results directories."""
    diffs: list[str] = []
    one_side: set[str] = set()
    jobs = rounds = 0
    for job_a in sorted((a / "jobs").iterdir()):
        job_b = b / "jobs" / job_a.name
        if not job_b.is_dir():
            diffs.append(f"{job_a.name}: missing in {b}")
            continue
        ra, rb = _rounds(job_a), _rounds(job_b)
        if len(ra) != len(rb):
            diffs.append(f"{job_a.name}: {len(ra)} rounds against {len(rb)}")
            continue
        jobs += 1
        for x, y in zip(ra, rb):
            rounds += 1
            x, y = _strip(x), _strip(y)
            one_side |= set(x) ^ set(y)
            diffs += [f"{job_a.name} round {x.get('round')}: {k}" for k in sorted(set(x) & set(y)) if x[k] != y[k]]
    return jobs, rounds, diffs, one_side


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not all((Path(p) / "jobs").is_dir() for p in argv):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    jobs, rounds, diffs, one_side = compare(Path(argv[0]), Path(argv[1]))
    print(f"{jobs} jobs, {rounds} rounds compared; {len(diffs)} differing fields")
    if one_side:
        print("fields in one side only (not compared): " + ", ".join(sorted(one_side)))
    for d in diffs[:50]:
        print("  " + d)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
