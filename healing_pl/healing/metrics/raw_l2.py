"""Euclidean distance between flattened pixels."""

from __future__ import annotations

from healing_pl.healing.metric import TWIN_METRICS, Metric


@TWIN_METRICS.register
class RawL2(Metric):
    """Euclidean distance between flattened pixels (no knobs)."""

    name, label = "raw_l2", "T-raw_l2"
    needs_features, search_metric, larger_is_better = False, "l2", False
