"""The twin metrics, one module each; importing this package registers them all in ``TWIN_METRICS``.

=================== ==================== ======== =============== =======================
class               name (label T-name)  vectors  search metric   score (best first)
=================== ==================== ======== =============== =======================
``RawL2``           ``raw_l2``           pixels   ``l2``          distance, ascending
``RawMahalanobis``  ``raw_mahalanobis``  pixels   ``mahalanobis`` distance, ascending
``FeatCosine``      ``feat_cosine``      features ``cosine``      similarity, descending
``FeatMahalanobis`` ``feat_mahalanobis`` features ``mahalanobis`` distance, ascending
``RandomMetric``    ``random`` (control) none     --              0 (uniform random pick)
=================== ==================== ======== =============== =======================

Features are the baseline's penultimate-layer embeddings ``model.embed(x)``; the Mahalanobis metrics
shrink the covariance of the spares (``--twins.metric.shrinkage``, :mod:`._mahalanobis`), the random
control draws with ``--twins.metric.seed`` (default: ``twins.seed``).
"""

# registration order is the order the CLI and error messages list them (the paper's order)
from healing_pl.healing.metrics.raw_l2 import RawL2  # noqa: I001
from healing_pl.healing.metrics.raw_mahalanobis import RawMahalanobis
from healing_pl.healing.metrics.feat_cosine import FeatCosine
from healing_pl.healing.metrics.feat_mahalanobis import FeatMahalanobis
from healing_pl.healing.metrics.random import RandomMetric

__all__ = ["RawL2", "RawMahalanobis", "FeatCosine", "FeatMahalanobis", "RandomMetric"]

# a member in a new file of this package registers itself (after the built-in ones above)
from healing_pl.registry import import_members  # noqa: E402

import_members(__name__, __path__)
