"""Checks on a client's train reply before it may be aggregated."""

from __future__ import annotations

import math

import numpy as np
from flwr.app import RecordDict


def check_train_reply(content: RecordDict, reference: dict[str, np.ndarray], weighted_by_key: str = "num-examples") -> str | None:
    """Why this reply must be rejected, or None if it may be aggregated.

    ``reference`` is the global model's arrays: a reply must carry exactly the same keys, shapes
    and dtypes, only finite values, and a positive finite example count.
    """
    arrays = [r for k, r in content.array_records.items() if not k.startswith("testbed.")]
    if len(arrays) != 1:
        return f"expected one ArrayRecord, got {len(arrays)}"
    if len(content.metric_records) != 1:
        return f"expected one MetricRecord, got {len(content.metric_records)}"
    metrics = next(iter(content.metric_records.values()))
    n = metrics.get(weighted_by_key)
    if not isinstance(n, (int, float)) or isinstance(n, bool) or not math.isfinite(n) or n <= 0:
        return f"{weighted_by_key} must be a positive finite number, got {n!r}"
    record = arrays[0]
    if set(record.keys()) != set(reference):
        missing, extra = set(reference) - set(record.keys()), set(record.keys()) - set(reference)
        return f"array keys differ from the global model (missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]})"
    for key, ref in reference.items():
        arr = record[key].numpy()
        if arr.shape != ref.shape:
            return f"array {key!r} has shape {arr.shape}, expected {ref.shape}"
        if arr.dtype != ref.dtype:
            return f"array {key!r} has dtype {arr.dtype}, expected {ref.dtype}"
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            return f"array {key!r} has non-finite values"
    return None
