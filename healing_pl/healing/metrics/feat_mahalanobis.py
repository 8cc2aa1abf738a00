"""Mahalanobis distance between the baseline's embeddings."""

from __future__ import annotations

from healing_pl.healing.metric import TWIN_METRICS
from healing_pl.healing.metrics._mahalanobis import _Mahalanobis


@TWIN_METRICS.register
class FeatMahalanobis(_Mahalanobis):
    """Mahalanobis distance between baseline embeddings ``model.embed(x)``, with the shrunk covariance of the spares.

    Args:
        shrinkage: None for Ledoit-Wolf, else a fixed shrinkage towards the scaled identity in (0, 1].
    """

    name, label = "feat_mahalanobis", "T-feat_mahalanobis"
    needs_features = True
