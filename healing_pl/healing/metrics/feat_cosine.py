"""Cosine similarity between the baseline's embeddings."""

from __future__ import annotations

from healing_pl.healing.metric import TWIN_METRICS, Metric


@TWIN_METRICS.register
class FeatCosine(Metric):
    """Cosine similarity between baseline embeddings ``model.embed(x)`` (no knobs)."""

    name, label = "feat_cosine", "T-feat_cosine"
    needs_features, search_metric, larger_is_better = True, "cosine", True
