"""The twin metric family: the base class :class:`Metric`, its registry and :func:`get_metric`.

A twin metric turns samples into vectors (flattened pixels, or the baseline model's penultimate-layer
embedding ``model.embed(x)``, :mod:`healing_pl.healing.representations`) and ranks candidate vectors
for query vectors through the exact search :func:`healing_pl.healing.search.nearest`.

Every metric is a registered subclass of :class:`Metric` in a module of its own under
:mod:`healing_pl.healing.metrics` (which imports them all); its constructor arguments are its knobs,
which the CLI offers as ``--twins.metric <Class> --twins.metric.<knob> value`` (``--twins.metric.help
<Class>`` lists them). A new metric is one class in a new module, imported by
``healing_pl/healing/metrics/__init__.py``; nothing else names it::

    @TWIN_METRICS.register
    class RawCosine(Metric):  # cosine similarity between flattened pixels
        name, label = "raw_cosine", "T-raw_cosine"
        needs_features, search_metric, larger_is_better = False, "cosine", True

Usage::

    metric = get_metric("feat_mahalanobis")              # or FeatMahalanobis(shrinkage=0.1)
    spares = metric.representations(dataset, backup_ids, model=baseline)
    queries = metric.representations(dataset, forget_ids, model=baseline)
    scores, rows = metric.rank(queries, spares, k=3)    # rows index backup_ids
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from healing_pl.healing.covariance import ArrayLike
from healing_pl.healing.representations import Ids, feature_vectors, raw_vectors
from healing_pl.healing.search import nearest
from healing_pl.registry import Knobs, Registry

__all__ = ["TWIN_METRICS", "Metric", "get_metric"]

#: every registered twin metric, by record name
TWIN_METRICS: Registry = Registry("twin metric", "--twins.metric")


class Metric(Knobs, ABC):
    """A twin metric (abstract: pick a registered subclass with ``--twins.metric <Class>``).

    Attributes:
        name: record name (``twins/metric`` in results.json, caches and reports).
        label: how report tables name the heal setup (``T-<name>``).
        control: a control (the random twins), never a candidate for the best setup.
        needs_features: vectors are ``model.embed(x)`` (else flattened pixels).
        search_metric: the :func:`nearest` metric it runs (``random``: none, uniform draws).
        larger_is_better: scores are similarities (else distances).
    """

    #: record name of the metric (``twins/metric``)
    name: ClassVar[str]
    #: how tables name the heal setup with this metric's twins
    label: ClassVar[str]
    #: a control: reported in its own columns, never a candidate for best or worst
    control: ClassVar[bool] = False
    needs_features: ClassVar[bool] = False
    larger_is_better: ClassVar[bool] = False

    @property
    @abstractmethod
    def search_metric(self) -> str:
        """The :func:`nearest` metric it runs (every metric sets it as a class attribute)."""

    def __init__(self):
        TWIN_METRICS.check(self)

    # ----------------------------------------------------------------- knobs
    def fresh(self, seed: int | None = None) -> Metric:
        """A new metric with these knobs and a fresh random state, for one spare policy.

        A knob ``seed`` left None (the random control's) becomes ``seed`` (the caller's ``twins.seed``);
        a metric without random state is returned as an equal new instance.
        """
        knobs = self.knobs()
        if "seed" in knobs and knobs["seed"] is None:
            knobs["seed"] = seed
        return TWIN_METRICS[self.name](**knobs)

    # ----------------------------------------------------------------- the metric
    def representations(
        self,
        dataset,
        ids: Ids,
        model: torch.nn.Module | None = None,
        batch_size: int = 256,
        *,
        return_labels: bool = False,
    ):
        """Vectors this metric compares, for ``dataset[id]`` of every id."""
        if self.needs_features:
            if model is None:
                raise ValueError(f"metric {self.name!r} needs the baseline model to compute features.")
            return feature_vectors(model, dataset, ids, batch_size, return_labels=return_labels)
        return raw_vectors(dataset, ids, batch_size, return_labels=return_labels)

    def covariance(self, candidates: ArrayLike) -> torch.Tensor | None:
        """Covariance the metric uses for this candidate pool (None if it uses none)."""
        return None

    def rank(
        self,
        queries: ArrayLike,
        candidates: ArrayLike,
        k: int,
        *,
        covariance: ArrayLike | None = None,
        query_labels: ArrayLike | None = None,
        candidate_labels: ArrayLike | None = None,
        exclude: ArrayLike | None = None,
        chunk_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, rows)``, each ``(Q, k)``: the k best candidate rows per query, best first."""
        return nearest(
            queries,
            candidates,
            k,
            self.search_metric,
            covariance=covariance,
            query_labels=query_labels,
            candidate_labels=candidate_labels,
            chunk_size=chunk_size,
            exclude=exclude,
        )

    def __repr__(self) -> str:
        knobs = ", ".join(f"{k}={v!r}" for k, v in self.knobs().items())
        return f"{TWIN_METRICS[self.name].__name__}({knobs})"


def get_metric(metric: str | Metric, **kwargs) -> Metric:
    """A :class:`Metric` from its record name (``kwargs``: its knobs), or the metric itself."""
    if isinstance(metric, Metric):
        if kwargs:
            raise ValueError(f"{metric!r} is already built; its knobs ({', '.join(kwargs)}) go to its constructor.")
        return metric
    return TWIN_METRICS[metric](**kwargs)
