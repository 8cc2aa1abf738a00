"""Twin search: twin metrics (registered classes), exact top-k search and spare-set policies."""

from healing_pl.healing import metrics  # noqa: F401  (registers every twin metric)
from healing_pl.healing.metric import TWIN_METRICS, Metric, get_metric
from healing_pl.healing.policies import POLICIES, get_policy
from healing_pl.healing.search import nearest

__all__ = ["POLICIES", "TWIN_METRICS", "Metric", "get_metric", "get_policy", "nearest"]
