"""Similarity metrics for twin search, by name.

A metric turns samples into vectors (flattened pixels, or the baseline
model's penultimate-layer embedding ``model.embed(x)``) and ranks candidate
vectors for query vectors through the exact search
:func:`healing_pl.healing.search.nearest`.

==================== ============== ================ ========================
name                 vectors        search metric    score (best first)
==================== ============== ================ ========================
``raw_l2``           pixels         ``l2``           distance, ascending
``raw_mahalanobis``  pixels         ``mahalanobis``  distance, ascending
``feat_cosine``      features       ``cosine``       similarity, descending
``feat_mahalanobis`` features       ``mahalanobis``  distance, ascending
``random``           none           --               0 (uniform random pick)
==================== ============== ================ ========================

Mahalanobis metrics use the covariance of the candidate pool.  With 784
pixels and a few hundred candidates the sample covariance is singular, so it
is shrunk towards a scaled identity: Ledoit-Wolf by default
(:func:`ledoit_wolf_covariance`, the formula of
``sklearn.covariance.ledoit_wolf``), or a fixed ``shrinkage`` in ``(0, 1]``
(:func:`shrunk_covariance`).  The search whitens once with ``W``
(``W^T W = Sigma^-1``, :func:`whitening_matrix`) and runs L2 on the whitened
vectors.  The three live in :mod:`healing_pl.healing.covariance` and are
re-exported here.

Devices: pixel vectors stay on the device of the dataset's tensors, features
on the model's device, and ranking runs where the vectors are; only the
policies bring the final ids and scores back to the CPU.

Usage::

    metric = METRICS["feat_mahalanobis"]()          # or get_metric("feat_mahalanobis")
    spares = metric.representations(dataset, backup_ids, model=baseline)
    queries = metric.representations(dataset, forget_ids, model=baseline)
    scores, rows = metric.rank(queries, spares, k=3)  # rows index backup_ids
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from healing_pl.healing.covariance import ArrayLike, ledoit_wolf_covariance, shrunk_covariance, whitening_matrix
from healing_pl.healing.search import nearest

__all__ = [
    "METRICS",
    "FeatCosine",
    "FeatMahalanobis",
    "Metric",
    "RandomMetric",
    "RawL2",
    "RawMahalanobis",
    "feature_vectors",
    "get_metric",
    "ledoit_wolf_covariance",
    "raw_vectors",
    "shrunk_covariance",
    "whitening_matrix",
]

Ids = Sequence[int] | torch.Tensor | np.ndarray


# --------------------------------------------------------------------------
# representations


def _id_list(ids: Ids) -> list[int]:
    return [int(i) for i in torch.as_tensor(ids).reshape(-1).tolist()]


def _batches(ids: list[int], batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    for start in range(0, len(ids), batch_size):
        yield ids[start : start + batch_size]


def _load(dataset, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i][:2] for i in batch))
    return torch.stack([torch.as_tensor(x) for x in xs]), torch.as_tensor([int(y) for y in ys])


def raw_vectors(dataset, ids: Ids, batch_size: int = 1024, *, return_labels: bool = False):
    """Flattened pixels of ``dataset[id][0]`` for every id, as ``(len(ids), D)`` float32.

    ``dataset[id]`` must return ``(x_tensor, y_int)`` for any pool id.  The
    vectors stay on the device of the dataset's tensors (no copy to the CPU).
    With ``return_labels=True`` returns ``(vectors, labels)``; labels are a CPU
    int64 tensor (bookkeeping, built from Python ints).
    """
    ids = _id_list(ids)
    vecs, labels = [], []
    for batch in _batches(ids, batch_size):
        x, y = _load(dataset, batch)
        vecs.append(x.reshape(len(batch), -1).to(torch.float32))
        labels.append(y)
    out = torch.cat(vecs) if vecs else torch.empty(0, 0)
    if return_labels:
        return out, (torch.cat(labels) if labels else torch.empty(0, dtype=torch.long))
    return out


def _device_and_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first floating parameter (or buffer); CPU float32 if none."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def feature_vectors(model: torch.nn.Module, dataset, ids: Ids, batch_size: int = 256, *, return_labels: bool = False):
    """``model.embed(x)`` (penultimate layer) for every id, as ``(len(ids), F)`` float32 on the model's device.

    Each batch is moved to the model's device *and* floating dtype (so a model
    converted with ``.double()`` or ``.half()`` gets inputs it can take); the
    embeddings are returned in float32, the precision :func:`nearest` searches
    in, and stay on the model's device.  Runs in eval mode without gradients
    and restores the model's training flag afterwards.  With
    ``return_labels=True`` returns ``(vectors, labels)``; labels are a CPU
    int64 tensor.
    """
    embed = getattr(model, "embed", None)
    if not callable(embed):
        raise ValueError(f"{type(model).__name__} has no embed() method, so feature metrics cannot compute embeddings.")
    device, dtype = _device_and_dtype(model)
    ids = _id_list(ids)
    vecs, labels = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in _batches(ids, batch_size):
                x, y = _load(dataset, batch)
                f = embed(x.to(device=device, dtype=dtype))
                vecs.append(f.reshape(len(batch), -1).to(dtype=torch.float32))
                labels.append(y)
    finally:
        model.train(was_training)
    out = torch.cat(vecs) if vecs else torch.empty(0, 0, device=device)
    if return_labels:
        return out, (torch.cat(labels) if labels else torch.empty(0, dtype=torch.long))
    return out


# --------------------------------------------------------------------------
# metrics


class Metric:
    """A named similarity for twin search.

    Attributes:
        name: registry name.
        needs_features: vectors are ``model.embed(x)`` (else flattened pixels).
        search_metric: the :func:`nearest` metric it runs.
        larger_is_better: scores are similarities (else distances).
    """

    name: str = ""
    needs_features: bool = False
    search_metric: str = "l2"
    larger_is_better: bool = False

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
        return f"{type(self).__name__}()"


class RawL2(Metric):
    """Euclidean distance between flattened pixels."""

    name, needs_features, search_metric = "raw_l2", False, "l2"


class FeatCosine(Metric):
    """Cosine similarity between baseline embeddings."""

    name, needs_features, search_metric, larger_is_better = "feat_cosine", True, "cosine", True


class _Mahalanobis(Metric):
    """Mahalanobis distance with the shrunk covariance of the candidate pool."""

    search_metric = "mahalanobis"

    def __init__(self, shrinkage: float | None = None):
        """``shrinkage``: None for Ledoit-Wolf, else a fixed value in ``(0, 1]``."""
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

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shrinkage={self.shrinkage!r})"


class RawMahalanobis(_Mahalanobis):
    """Mahalanobis distance between flattened pixels."""

    name, needs_features = "raw_mahalanobis", False


class FeatMahalanobis(_Mahalanobis):
    """Mahalanobis distance between baseline embeddings."""

    name, needs_features = "feat_mahalanobis", True


class RandomMetric(Metric):
    """The control: k distinct candidates drawn uniformly at random per query.

    Reproducible: a fresh metric with the same ``seed`` gives the same draws
    for the same sequence of calls (the generator advances between calls and
    is saved, as plain ints, by :meth:`state_dict`).  Class restriction and
    ``exclude`` are respected; scores are all 0.  It needs no vectors:
    :meth:`representations` returns ``(len(ids), 0)`` placeholders and
    :meth:`rank` only reads the number of rows.
    """

    name, needs_features, search_metric = "random", False, "random"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def representations(self, dataset, ids, model=None, batch_size=256, *, return_labels=False):
        ids = _id_list(ids)
        out = torch.empty(len(ids), 0)
        if not return_labels:
            return out
        labels = torch.as_tensor([int(dataset[i][1]) for i in ids], dtype=torch.long)
        return out, labels

    def rank(
        self,
        queries,
        candidates,
        k,
        *,
        covariance=None,
        query_labels=None,
        candidate_labels=None,
        exclude=None,
        chunk_size=None,
    ):
        n_q, n_c = len(queries), len(candidates)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_c:
            raise ValueError(f"k must be between 1 and the {n_c} candidates, got {k!r}.")
        usable = torch.ones(n_c, dtype=torch.bool)
        if exclude is not None:
            mask = torch.as_tensor(exclude).cpu()  # the control reads no vectors: CPU bookkeeping only
            if mask.dtype != torch.bool or mask.shape != (n_c,):
                raise ValueError(f"exclude must be a bool mask of shape ({n_c},).")
            usable &= ~mask
        if (query_labels is None) != (candidate_labels is None):
            raise ValueError("pass both query_labels and candidate_labels, or neither.")
        q_lab = torch.as_tensor(query_labels).reshape(-1).cpu() if query_labels is not None else None
        c_lab = torch.as_tensor(candidate_labels).reshape(-1).cpu() if candidate_labels is not None else None
        if q_lab is not None and (q_lab.shape[0] != n_q or c_lab.shape[0] != n_c):
            raise ValueError(f"expected {n_q} query labels and {n_c} candidate labels.")
        indices = torch.empty(n_q, int(k), dtype=torch.long)
        groups = (
            [(None, torch.arange(n_q))]
            if q_lab is None
            else [(int(c), torch.nonzero(q_lab == c).squeeze(1)) for c in torch.unique(q_lab).tolist()]
        )
        for cls, q_rows in groups:
            rows = torch.nonzero(usable if cls is None else usable & (c_lab == cls)).squeeze(1)
            if rows.numel() < k:
                where = "" if cls is None else f" of class {cls}"
                raise ValueError(f"only {rows.numel()} candidates{where} are usable but k={k} were requested.")
            for r in q_rows.tolist():
                indices[r] = rows[torch.randperm(rows.numel(), generator=self.generator)[:k]]
        return torch.zeros(n_q, int(k)), indices

    def state_dict(self) -> dict:
        return {"seed": self.seed, "generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))

    def __repr__(self) -> str:
        return f"RandomMetric(seed={self.seed})"


#: Registry: metric name -> class (instantiate with its keyword arguments).
METRICS: dict[str, Callable[..., Metric]] = {
    "raw_l2": RawL2,
    "raw_mahalanobis": RawMahalanobis,
    "feat_cosine": FeatCosine,
    "feat_mahalanobis": FeatMahalanobis,
    "random": RandomMetric,
}


def get_metric(metric: str | Metric, **kwargs) -> Metric:
    """A :class:`Metric` from its registry name (with constructor kwargs), or the metric itself."""
    if isinstance(metric, Metric):
        return metric
    if metric not in METRICS:
        raise ValueError(f"unknown similarity metric {metric!r}; choose one of {', '.join(METRICS)}.")
    return METRICS[metric](**kwargs)
