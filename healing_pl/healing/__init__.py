"""Twin search: similarity metrics, exact top-k search and spare-set policies."""

from healing_pl.healing.policies import POLICIES, get_policy
from healing_pl.healing.search import nearest
from healing_pl.healing.similarity import METRICS, get_metric

__all__ = ["METRICS", "POLICIES", "get_metric", "get_policy", "nearest"]
