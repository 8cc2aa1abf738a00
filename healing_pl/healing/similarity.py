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
(``W^T W = Sigma^-1``, :func:`healing_pl.healing.search.whitening_matrix`) and
runs L2 on the whitened vectors.

Usage::

    metric = METRICS["feat_mahalanobis"]()          # or get_metric("feat_mahalanobis")
    spares = metric.representations(dataset, backup_ids, model=baseline)
    queries = metric.representations(dataset, forget_ids, model=baseline)
    scores, rows = metric.rank(queries, spares, k=3)  # rows index backup_ids
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from healing_pl.healing.search import ArrayLike, nearest, whitening_matrix

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

Ids = Union[Sequence[int], torch.Tensor, np.ndarray]


# --------------------------------------------------------------------------
# representations


def _id_list(ids: Ids) -> list:
    return [int(i) for i in torch.as_tensor(ids).reshape(-1).tolist()]


def _batches(ids: list, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    for start in range(0, len(ids), batch_size):
        yield ids[start : start + batch_size]


def _load(dataset, batch: list) -> Tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i][:2] for i in batch))
    return torch.stack([torch.as_tensor(x) for x in xs]), torch.as_tensor([int(y) for y in ys])


def raw_vectors(
    dataset, ids: Ids, batch_size: int = 1024, *, return_labels: bool = False
):
    """Flattened pixels of ``dataset[id][0]`` for every id, as ``(len(ids), D)`` float32.

    ``dataset[id]`` must return ``(x_tensor, y_int)`` for any pool id.  With
    ``return_labels=True`` returns ``(vectors, labels)``.
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


def feature_vectors(
    model: torch.nn.Module,
    dataset,
    ids: Ids,
    batch_size: int = 256,
    *,
    return_labels: bool = False,
):
    """``model.embed(x)`` (penultimate layer) for every id, as ``(len(ids), F)`` float32 on the CPU.

    Runs in eval mode without gradients on the model's device and restores the
    model's training flag afterwards.
    """
    embed = getattr(model, "embed", None)
    if not callable(embed):
        raise ValueError(
            f"{type(model).__name__} has no embed() method, so feature metrics cannot compute embeddings."
        )
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    ids = _id_list(ids)
    vecs, labels = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in _batches(ids, batch_size):
                x, y = _load(dataset, batch)
                f = embed(x.to(device))
                vecs.append(f.reshape(len(batch), -1).to(device="cpu", dtype=torch.float32))
                labels.append(y)
    finally:
        model.train(was_training)
    out = torch.cat(vecs) if vecs else torch.empty(0, 0)
    if return_labels:
        return out, (torch.cat(labels) if labels else torch.empty(0, dtype=torch.long))
    return out


# --------------------------------------------------------------------------
# covariance with shrinkage


def _centered(x: ArrayLike) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float64)
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(f"a covariance needs a 2-D array of at least 2 rows, got shape {tuple(t.shape)}.")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("vectors for the covariance contain NaN or infinite values.")
    return t - t.mean(0, keepdim=True)


def _shrink(emp: torch.Tensor, shrinkage: float) -> torch.Tensor:
    mu = float(torch.trace(emp)) / emp.shape[0]
    if mu <= 0.0:
        raise ValueError("all vectors are identical, so their covariance (and the Mahalanobis distance) is undefined.")
    cov = emp * (1.0 - shrinkage)
    cov.diagonal().add_(shrinkage * mu)
    return cov


def ledoit_wolf_covariance(x: ArrayLike, *, return_shrinkage: bool = False):
    """Ledoit-Wolf shrunk covariance of the rows of ``x`` (float64, ``(D, D)``).

    Same formula as ``sklearn.covariance.ledoit_wolf`` (rows centred, empirical
    covariance with ``1/n``): ``(1 - s) S + s mu I`` with ``mu = trace(S)/D``
    and the optimal ``s``.  Positive definite whenever ``s > 0``, which is the
    case for ``n < D``.  With ``return_shrinkage=True`` returns ``(cov, s)``.
    """
    xc = _centered(x)
    n, p = xc.shape
    emp = (xc.t() @ xc) / n
    mu = float(torch.trace(emp)) / p
    delta_ = float((emp * emp).sum())  # ||S||_F^2
    beta_ = float((xc * xc).sum(1).square().sum())  # sum_i ||x_i||^4 = sum(X2^T X2)
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - p * mu * mu) / p  # ||S - mu I||_F^2 / p
    s = 0.0 if delta <= 0.0 else min(max(beta / delta, 0.0), 1.0)
    cov = _shrink(emp, s)
    return (cov, s) if return_shrinkage else cov


def shrunk_covariance(x: ArrayLike, shrinkage: float) -> torch.Tensor:
    """``(1 - shrinkage) S + shrinkage * mu I`` of the rows of ``x``, fixed ``shrinkage`` in ``(0, 1]``."""
    if not 0.0 < float(shrinkage) <= 1.0:
        raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}.")
    xc = _centered(x)
    return _shrink((xc.t() @ xc) / xc.shape[0], float(shrinkage))


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
        model: Optional[torch.nn.Module] = None,
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

    def covariance(self, candidates: ArrayLike) -> Optional[torch.Tensor]:
        """Covariance the metric uses for this candidate pool (None if it uses none)."""
        return None

    def rank(
        self,
        queries: ArrayLike,
        candidates: ArrayLike,
        k: int,
        *,
        covariance: Optional[ArrayLike] = None,
        query_labels: Optional[ArrayLike] = None,
        candidate_labels: Optional[ArrayLike] = None,
        exclude: Optional[ArrayLike] = None,
        chunk_size: Optional[int] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
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

    def __init__(self, shrinkage: Optional[float] = None):
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
            mask = torch.as_tensor(exclude)
            if mask.dtype != torch.bool or mask.shape != (n_c,):
                raise ValueError(f"exclude must be a bool mask of shape ({n_c},).")
            usable &= ~mask
        if (query_labels is None) != (candidate_labels is None):
            raise ValueError("pass both query_labels and candidate_labels, or neither.")
        q_lab = torch.as_tensor(query_labels).reshape(-1) if query_labels is not None else None
        c_lab = torch.as_tensor(candidate_labels).reshape(-1) if candidate_labels is not None else None
        if q_lab is not None and (q_lab.shape[0] != n_q or c_lab.shape[0] != n_c):
            raise ValueError(f"expected {n_q} query labels and {n_c} candidate labels.")
        indices = torch.empty(n_q, int(k), dtype=torch.long)
        groups = [(None, torch.arange(n_q))] if q_lab is None else [
            (int(c), torch.nonzero(q_lab == c).squeeze(1)) for c in torch.unique(q_lab).tolist()
        ]
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
METRICS: Dict[str, Callable[..., Metric]] = {
    "raw_l2": RawL2,
    "raw_mahalanobis": RawMahalanobis,
    "feat_cosine": FeatCosine,
    "feat_mahalanobis": FeatMahalanobis,
    "random": RandomMetric,
}


def get_metric(metric: Union[str, Metric], **kwargs) -> Metric:
    """A :class:`Metric` from its registry name (with constructor kwargs), or the metric itself."""
    if isinstance(metric, Metric):
        return metric
    if metric not in METRICS:
        raise ValueError(f"unknown similarity metric {metric!r}; choose one of {', '.join(METRICS)}.")
    return METRICS[metric](**kwargs)
