"""The Mahalanobis metrics' shared base: the shrunk covariance of the candidate pool.

With 784 pixels and a few hundred candidates the sample covariance is singular, so it is shrunk
towards a scaled identity: Ledoit-Wolf by default (:func:`ledoit_wolf_covariance`, the formula of
``sklearn.covariance.ledoit_wolf``), or a fixed ``shrinkage`` in ``(0, 1]`` (:func:`shrunk_covariance`).
The search whitens once with ``W`` (``W^T W = Sigma^-1``, :func:`whitening_matrix`) and runs L2 on the
whitened vectors; the three live in :mod:`healing_pl.healing.covariance`.
"""

from __future__ import annotations

import torch

from healing_pl.healing.covariance import ArrayLike, ledoit_wolf_covariance, shrunk_covariance
from healing_pl.healing.metric import Metric


class _Mahalanobis(Metric):
    """Mahalanobis distance with the shrunk covariance of the candidate pool (a base, not registered).

    Args:
        shrinkage: None for Ledoit-Wolf, else a fixed shrinkage towards the scaled identity in (0, 1].
    """

    search_metric = "mahalanobis"

    def __init__(self, shrinkage: float | None = None):
        super().__init__()
        if shrinkage is not None and not 0.0 < float(shrinkage) <= 1.0:
            raise ValueError(f"shrinkage must be in (0, 1] or None for Ledoit-Wolf, got {shrinkage}.")
        self.shrinkage = shrinkage

    def covariance(self, candidates: ArrayLike) -> torch.Tensor:
        if self.shrinkage is None:
            return ledoit_wolf_covariance(candidates)
        return shrunk_covariance(candidates, self.shrinkage)

    def rank(self, queries, candidates, k, *, covariance=None, **kwargs):
        if covariance is None:
            covariance = self.covariance(candidates)
        return super().rank(queries, candidates, k, covariance=covariance, **kwargs)
