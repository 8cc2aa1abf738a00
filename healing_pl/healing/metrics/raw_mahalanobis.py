"""Mahalanobis distance between flattened pixels."""

from __future__ import annotations

from healing_pl.healing.metric import TWIN_METRICS
from healing_pl.healing.metrics._mahalanobis import _Mahalanobis


@TWIN_METRICS.register
class RawMahalanobis(_Mahalanobis):
    """Mahalanobis distance between flattened pixels, with the shrunk covariance of the spares.

    Args:
        shrinkage: None for Ledoit-Wolf, else a fixed shrinkage towards the scaled identity in (0, 1].
    """

    name, label = "raw_mahalanobis", "T-raw_mahalanobis"
    needs_features = False
