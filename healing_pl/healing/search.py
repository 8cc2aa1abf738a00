"""Exact top-k nearest-neighbour search with bounded memory.

:func:`nearest` finds, for every query row, the ``k`` best candidate rows
under one of three metrics:

* ``"l2"`` -- Euclidean distance ``||q - c||`` (**not squared**; smaller is
  better);
* ``"cosine"`` -- cosine similarity ``q.c / (|q| |c|)`` (larger is better; a
  zero vector has similarity 0 with everything);
* ``"mahalanobis"`` -- ``sqrt((q - c)^T Sigma^-1 (q - c))`` (**not squared**;
  smaller is better).  ``Sigma`` is the given ``covariance`` used exactly, or a
  Ledoit-Wolf shrinkage estimate from the candidates (see
  :func:`healing_pl.healing.similarity.ledoit_wolf_covariance`).  It is
  computed by whitening both sides once with ``W`` (``W^T W = Sigma^-1``) and
  running the L2 search on the whitened rows.

The search is exact: every candidate is scored.  Memory stays bounded because
the (queries x candidates) score matrix is never materialised; queries and
candidates are cut into blocks whose score block is about
:data:`BLOCK_BYTES`, each block is one ``torch.addmm`` into a reused work
buffer, its top-k is taken with ``torch.topk`` and merged into a running top-k.
For L2 the ranking score is ``2 q.c - |c|^2`` (``|q|^2`` is constant per
query, so it is left out of the inner loop); the distances of the k winners
are then recomputed directly as ``||q - c||`` so near-duplicates do not suffer
from the cancellation of the ``|q|^2 - 2 q.c + |c|^2`` expansion.

Ties are broken deterministically: among equal scores the lower candidate
index wins, both inside the returned k and at the boundary of the k-th place.

All arithmetic runs in float32 on the device of ``queries`` (when it is a
tensor; numpy arrays go to the CPU).  Besides the score block, the search
holds at most one converted copy of the candidates (float32, normalised or
whitened).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import numpy as np
import torch

__all__ = [
    "BLOCK_BYTES",
    "SEARCH_METRICS",
    "nearest",
    "whitening_matrix",
]

#: Names accepted by :func:`nearest` for ``metric``.
SEARCH_METRICS = ("l2", "cosine", "mahalanobis")

#: Target size in bytes of one (query block x candidate block) score block.
BLOCK_BYTES = 64 * 2**20

#: Largest number of queries scored against one candidate block.
MAX_QUERY_CHUNK = 1024

ArrayLike = Union[torch.Tensor, np.ndarray]


def nearest(
    queries: ArrayLike,
    candidates: ArrayLike,
    k: int,
    metric: str = "l2",
    *,
    covariance: Optional[ArrayLike] = None,
    query_labels: Optional[ArrayLike] = None,
    candidate_labels: Optional[ArrayLike] = None,
    chunk_size: Optional[int] = None,
    exclude: Optional[ArrayLike] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest candidates of every query, best first.

    Args:
        queries: ``(Q, D)`` float tensor or array.
        candidates: ``(N, D)`` float tensor or array.
        k: number of neighbours per query, ``1 <= k <=`` available candidates.
        metric: ``"l2"``, ``"cosine"`` or ``"mahalanobis"`` (see module doc).
        covariance: ``(D, D)`` symmetric positive definite matrix for
            ``"mahalanobis"``; estimated from ``candidates`` with Ledoit-Wolf
            shrinkage when omitted.  Ignored by the other metrics.
        query_labels, candidate_labels: ``(Q,)`` and ``(N,)`` integer class
            labels; when given, a query's neighbours come only from its class.
        chunk_size: candidates per block (default: sized so a score block is
            about :data:`BLOCK_BYTES`).  Changes speed and memory, never the
            result.
        exclude: ``(N,)`` bool mask of candidates never to return.

    Returns:
        ``(scores, indices)``, both ``(Q, k)``: ``scores`` float32 distances
        (``l2``, ``mahalanobis``; ascending) or similarities (``cosine``;
        descending), ``indices`` int64 rows of ``candidates``.

    Raises:
        ValueError: on a bad metric, shape, k, label or mask, non-finite
            input, or a class with fewer than ``k`` usable candidates.
    """
    if metric not in SEARCH_METRICS:
        raise ValueError(
            f"unknown search metric {metric!r}; choose one of {', '.join(SEARCH_METRICS)}."
        )
    device = queries.device if isinstance(queries, torch.Tensor) else torch.device("cpu")
    q = _as_matrix(queries, "queries", device)
    c = _as_matrix(candidates, "candidates", device)
    if q.shape[1] != c.shape[1]:
        raise ValueError(
            f"queries have {q.shape[1]} dimensions but candidates have {c.shape[1]}."
        )
    n_cand = c.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}.")
    k = int(k)
    if k < 1 or k > n_cand:
        raise ValueError(f"k must be between 1 and the {n_cand} candidates, got {k}.")
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    mask = _as_mask(exclude, n_cand, device)
    q_lab, c_lab = _as_labels(query_labels, candidate_labels, q.shape[0], n_cand, device)

    # Every metric becomes an inner-product search on prepared rows.
    w_t = None
    if metric == "mahalanobis":
        if covariance is None:
            from healing_pl.healing.similarity import ledoit_wolf_covariance

            covariance = ledoit_wolf_covariance(c)
        w_t = whitening_matrix(covariance, dim=q.shape[1]).t().to(device=device, dtype=torch.float32)
    kind = "cosine" if metric == "cosine" else "l2"

    if q_lab is None:
        rows = None
        if mask is not None:
            rows = torch.nonzero(~mask).squeeze(1)
            if rows.numel() < k:
                raise ValueError(
                    f"only {rows.numel()} candidates remain after exclusions but k={k} were requested."
                )
        scores, indices = _search(
            _prepare(q, None, w_t, kind, query=True),
            _prepare(c, rows, w_t, kind, query=False),
            k,
            kind,
            chunk_size,
        )
        return scores, (indices if rows is None else rows[indices])

    scores = torch.empty(q.shape[0], k, dtype=torch.float32, device=device)
    indices = torch.empty(q.shape[0], k, dtype=torch.long, device=device)
    for cls in torch.unique(q_lab).tolist():
        q_rows = torch.nonzero(q_lab == cls).squeeze(1)
        usable = c_lab == cls
        if mask is not None:
            usable &= ~mask
        c_rows = torch.nonzero(usable).squeeze(1)  # ascending: keeps the tie order
        if c_rows.numel() < k:
            left = " left after exclusions" if mask is not None else ""
            raise ValueError(
                f"class {cls} has only {c_rows.numel()} candidates{left} but k={k} were requested."
            )
        s, i = _search(
            _prepare(q, q_rows, w_t, kind, query=True),
            _prepare(c, c_rows, w_t, kind, query=False),
            k,
            kind,
            chunk_size,
        )
        scores[q_rows] = s
        indices[q_rows] = c_rows[i]
    return scores, indices


def whitening_matrix(covariance: ArrayLike, dim: Optional[int] = None) -> torch.Tensor:
    """Return ``W`` (float64, lower triangular) with ``W^T W = covariance^-1``.

    ``W = L^-1`` where ``covariance = L L^T`` is the Cholesky factorisation, so
    ``||W (x - y)||`` is the Mahalanobis distance between column vectors ``x``
    and ``y`` (for row vectors, ``x @ W.T``).

    Raises:
        ValueError: if the matrix is not square (of size ``dim``), not finite,
            not symmetric or not positive definite.
    """
    cov = torch.as_tensor(covariance).detach().to(device="cpu", dtype=torch.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"covariance must be a square matrix, got shape {tuple(cov.shape)}.")
    if dim is not None and cov.shape[0] != dim:
        raise ValueError(f"covariance is {cov.shape[0]}x{cov.shape[0]} but the vectors have {dim} dimensions.")
    if not bool(torch.isfinite(cov).all()):
        raise ValueError("covariance contains NaN or infinite values.")
    scale = float(cov.abs().max()) or 1.0
    if not torch.allclose(cov, cov.t(), rtol=1e-6, atol=1e-9 * scale):
        raise ValueError("covariance must be symmetric.")
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        raise ValueError(
            "covariance is not positive definite; use a shrinkage estimate "
            "(similarity.ledoit_wolf_covariance or shrunk_covariance)."
        )
    eye = torch.eye(cov.shape[0], dtype=torch.float64)
    return torch.linalg.solve_triangular(chol, eye, upper=False)


# --------------------------------------------------------------------------
# internals


def _as_matrix(x: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
    """Validated float32, contiguous (rows, dims) tensor on ``device`` (no copy if it is one)."""
    t = torch.as_tensor(x).detach()
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows, dims) array, got shape {tuple(t.shape)}.")
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}.")
    if t.shape[1] == 0:
        raise ValueError(f"{name} have zero dimensions.")
    t = t.to(device=device, dtype=torch.float32).contiguous()
    # One cheap reduction; the element-wise check runs only if it is not finite
    # (NaN/inf, or an overflow of the sum itself).
    if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contain NaN or infinite values.")
    return t


def _as_mask(exclude: Optional[ArrayLike], n: int, device: torch.device) -> Optional[torch.Tensor]:
    if exclude is None:
        return None
    m = torch.as_tensor(exclude).to(device=device)
    if m.dtype != torch.bool or m.shape != (n,):
        raise ValueError(f"exclude must be a bool mask of shape ({n},), got {m.dtype} {tuple(m.shape)}.")
    return m if bool(m.any()) else None


def _as_labels(qy, cy, n_q: int, n_c: int, device: torch.device):
    if qy is None and cy is None:
        return None, None
    if qy is None or cy is None:
        raise ValueError("pass both query_labels and candidate_labels, or neither.")
    qy = torch.as_tensor(qy).to(device=device).reshape(-1)
    cy = torch.as_tensor(cy).to(device=device).reshape(-1)
    if qy.shape[0] != n_q or cy.shape[0] != n_c:
        raise ValueError(
            f"expected {n_q} query labels and {n_c} candidate labels, "
            f"got {qy.shape[0]} and {cy.shape[0]}."
        )
    if qy.is_floating_point() or cy.is_floating_point() or qy.dtype == torch.bool:
        raise ValueError("labels must be integers.")
    return qy.long(), cy.long()


def _chunk_sizes(n_q: int, n_c: int, chunk_size: Optional[int]) -> Tuple[int, int]:
    """(queries per block, candidates per block) for a ~BLOCK_BYTES score block."""
    floats = BLOCK_BYTES // 4
    if chunk_size is None:
        q_chunk = max(1, min(n_q, MAX_QUERY_CHUNK))
        c_chunk = max(floats // q_chunk // GROUP, 1) * GROUP
    else:
        c_chunk = int(chunk_size)
        q_chunk = max(1, min(n_q, MAX_QUERY_CHUNK, floats // c_chunk))
    return q_chunk, max(1, min(c_chunk, n_c))


def _prepare(
    x: torch.Tensor,
    rows: Optional[torch.Tensor],
    w_t: Optional[torch.Tensor],
    kind: str,
    query: bool,
) -> torch.Tensor:
    """Rows ready for the inner-product kernel, built in one pass per row block.

    ``x[rows]`` is whitened (``@ w_t``) when given, then

    * ``kind == "cosine"``: normalised to unit length;
    * ``kind == "l2"``: augmented with one column, ``-1/2`` for queries and
      ``|c|^2`` for candidates, so that ``q_aug . c_aug = q.c - |c|^2 / 2``
      (half the L2 ranking score ``2 q.c - |c|^2``) is a single matrix product.
      The first D columns keep the (whitened) vectors for the final distances.
    """
    n = x.shape[0] if rows is None else rows.numel()
    dim = x.shape[1] if w_t is None else w_t.shape[1]
    if w_t is None and kind == "cosine" and rows is None:
        return torch.nn.functional.normalize(x, dim=1)
    if w_t is None and kind == "l2" and rows is None and query:
        out = torch.empty(n, dim + 1, dtype=x.dtype, device=x.device)
        out[:, :dim] = x
        out[:, dim] = -0.5
        return out
    width = dim + 1 if kind == "l2" else dim
    out = torch.empty(n, width, dtype=x.dtype, device=x.device)
    step = max(1, BLOCK_BYTES // (4 * max(x.shape[1], dim)))
    for r0 in range(0, n, step):
        block = x[r0 : r0 + step] if rows is None else x[rows[r0 : r0 + step]]
        if w_t is not None:
            block = block @ w_t
        dst = out[r0 : r0 + step]
        if kind == "cosine":
            torch.nn.functional.normalize(block, dim=1, out=dst)
        else:
            dst[:, :dim] = block
            if query:
                dst[:, dim] = -0.5
            else:
                dst[:, dim] = block.square().sum(1)  # not norm()**2: keeps exact ties exact
    return out


#: Extra shortlist places per query beyond k (stage 1 keeps k + MARGIN).
MARGIN = 8

#: Columns per group in the group-maximum pre-selection of :func:`_shortlist_block`.
GROUP = 512

_UNIT_ROUNDOFF = 2.0**-24  # float32


def _search(
    q: torch.Tensor,
    c: torch.Tensor,
    k: int,
    kind: str,
    chunk_size: Optional[int],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two-stage exact search over rows prepared by :func:`_prepare`.

    Stage 1 (bulk of the work): blocked float32 matrix products keep a
    shortlist of the ``s = k + MARGIN`` best ranking scores per query.
    Stage 2: the shortlisted pairs are rescored one by one in float64 (the same
    arithmetic for every pair, so duplicated candidates tie exactly) and the
    best k are taken by (score, lower index).  The float32 product's error is
    bounded by ``tol = 2 (D + 2) u (|q| |c|max + |c|max^2)``; whenever the
    weakest shortlisted product is not ``tol`` below the k-th exact score, a
    candidate outside the shortlist might tie or win, and that query is redone
    over every candidate whose product lies within ``tol`` of it.
    """
    n_q, n_c = q.shape[0], c.shape[0]
    dim = q.shape[1] - 1 if kind == "l2" else q.shape[1]
    short = min(n_c, k + MARGIN)
    q_chunk, c_chunk = _chunk_sizes(n_q, n_c, chunk_size)
    work = torch.empty(q_chunk * c_chunk, dtype=q.dtype, device=q.device)
    if kind == "l2":
        c_max = float(c[:, dim].max()) ** 0.5 if n_c else 0.0
    else:
        c_max = 1.0
    gamma = 2.0 * (dim + 2) * _UNIT_ROUNDOFF

    scores = torch.empty(n_q, k, dtype=torch.float32, device=q.device)
    indices = torch.empty(n_q, k, dtype=torch.long, device=q.device)
    for q0 in range(0, n_q, q_chunk):
        qb = q[q0 : q0 + q_chunk]
        best_v = best_i = None
        for c0 in range(0, n_c, c_chunk):
            cb = c[c0 : c0 + c_chunk]
            block = work[: qb.shape[0] * cb.shape[0]].view(qb.shape[0], cb.shape[0])
            torch.mm(qb, cb.t(), out=block)
            v, i = _shortlist_block(block, short)
            if c0:
                i += c0
            best_v, best_i = (v, i) if best_v is None else _merge(best_v, best_i, v, i, short)

        exact = _exact_scores(qb, c, best_i, kind, dim)
        exact, best_i = _order(exact, best_i, descending=True)
        if short < n_c:  # the shortlist is not everything: check its margin
            q_norm = torch.linalg.vector_norm(qb[:, :dim].double(), dim=1)
            tol = gamma * (q_norm * c_max + c_max * c_max)
            floor = exact[:, k - 1] - tol
            unsure = best_v.min(dim=1).values.double() >= floor
            if bool(unsure.any()):
                rows = torch.nonzero(unsure).squeeze(1)
                exact, best_i = exact[:, :k].clone(), best_i[:, :k].clone()
                exact[rows], best_i[rows] = _redo_rows(qb[rows], c, floor[rows], k, kind, dim, c_chunk)
        exact, best_i = exact[:, :k], best_i[:, :k]
        if kind == "l2":  # ranking score e = (|q|^2 - d^2) / 2  ->  distance d
            q_sq = qb[:, :dim].double().square().sum(1, keepdim=True)
            exact = (q_sq - 2.0 * exact).clamp_(min=0.0).sqrt_()
        scores[q0 : q0 + q_chunk] = exact.to(torch.float32)
        indices[q0 : q0 + q_chunk] = best_i
    return scores, indices


def _shortlist_block(block: torch.Tensor, s: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``s`` largest entries of each row of a score block (any order, any tie choice).

    Pre-selection: the row is cut into groups of :data:`GROUP` columns and
    only the ``s`` groups with the largest maxima are searched; they hold ``s``
    values at least as large as anything outside them.  A max-reduction is
    several times cheaper than ``torch.topk`` over the whole row.  Columns
    after the last full group are searched apart and merged.
    """
    n_rows, n = block.shape
    groups = n // GROUP
    if groups < 4 * s:
        return torch.topk(block, min(s, n), dim=1, sorted=False)
    head = groups * GROUP
    grouped = block[:, :head].unflatten(1, (groups, GROUP))
    keep = torch.topk(grouped.amax(2), s, dim=1, sorted=False).indices
    sub = grouped.gather(1, keep.unsqueeze(2).expand(n_rows, s, GROUP)).view(n_rows, s * GROUP)
    v, j = torch.topk(sub, s, dim=1, sorted=False)
    cols = keep.gather(1, j // GROUP).mul_(GROUP).add_(j % GROUP)
    if head < n:
        tv, ti = torch.topk(block[:, head:], min(s, n - head), dim=1, sorted=False)
        v, cols = _merge(v, cols, tv, ti.add_(head), s)
    return v, cols


def _merge(bv, bi, v, i, s):
    """The ``s`` largest of two shortlists."""
    v = torch.cat([bv, v], dim=1)
    i = torch.cat([bi, i], dim=1)
    v, j = torch.topk(v, min(s, v.shape[1]), dim=1, sorted=False)
    return v, i.gather(1, j)


def _order(v: torch.Tensor, i: torch.Tensor, descending: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by score, equal scores by ascending index (two small sorts)."""
    i, perm = torch.sort(i, dim=1)
    v = v.gather(1, perm)
    v, perm = torch.sort(v, dim=1, descending=descending, stable=True)
    return v, i.gather(1, perm)


def _exact_scores(q: torch.Tensor, c: torch.Tensor, idx: torch.Tensor, kind: str, dim: int) -> torch.Tensor:
    """Float64 ranking score of every pair ``(q[r], c[idx[r, j]])``, shaped like ``idx``."""
    n_q, width = idx.shape
    q_rows = torch.arange(n_q, device=idx.device).repeat_interleave(width)
    return _pair_scores(q, c, q_rows, idx.reshape(-1), kind, dim).view(n_q, width)


def _pair_scores(q, c, q_rows, c_rows, kind: str, dim: int) -> torch.Tensor:
    """Float64 ranking score (larger is better) of the pairs ``(q[q_rows[p]], c[c_rows[p]])``.

    ``l2``: ``(|q|^2 - ||q - c||^2) / 2`` (the scale of the float32 product);
    ``cosine``: ``q.c`` of the unit rows.  Every pair goes through the same
    arithmetic, so duplicated candidates score exactly alike.  Runs in pieces
    of about :data:`BLOCK_BYTES`.
    """
    n = q_rows.numel()
    out = torch.empty(n, dtype=torch.float64, device=q.device)
    step = max(1, BLOCK_BYTES // (8 * 2 * dim))
    for p0 in range(0, n, step):
        qv = q[q_rows[p0 : p0 + step], :dim].double()
        cv = c[c_rows[p0 : p0 + step], :dim].double()
        if kind == "l2":
            out[p0 : p0 + step] = (qv.square().sum(1) - cv.sub_(qv).square_().sum(1)) / 2.0
        else:
            out[p0 : p0 + step] = cv.mul_(qv).sum(1)
    return out


def _redo_rows(q, c, floor, k, kind, dim, c_chunk):
    """Exhaustive stage 2 for the query rows ``q`` whose shortlist margin was too thin.

    Every candidate whose float32 product reaches ``floor`` (the k-th exact
    score minus the error bound) is rescored exactly; returns the best k per
    row as ``(scores, indices)`` in (score desc, index asc) order.
    """
    # Compare in float32 against a floor rounded down, so nothing is lost.
    floor32 = torch.nextafter(floor.float(), torch.tensor(-math.inf, device=floor.device))
    rows, cols = [], []
    for c0 in range(0, c.shape[0], c_chunk):
        r, j = torch.nonzero(q @ c[c0 : c0 + c_chunk].t() >= floor32[:, None], as_tuple=True)
        rows.append(r)
        cols.append(j + c0)
    r, j = torch.cat(rows), torch.cat(cols)
    e = _pair_scores(q, c, r, j, kind, dim)
    # Order the pairs by (row, score desc, index asc): stable sorts, last key first.
    perm = torch.sort(j, stable=True).indices
    r, j, e = r[perm], j[perm], e[perm]
    perm = torch.sort(e, stable=True, descending=True).indices
    r, j, e = r[perm], j[perm], e[perm]
    perm = torch.sort(r, stable=True).indices
    r, j, e = r[perm], j[perm], e[perm]
    counts = torch.bincount(r, minlength=q.shape[0])
    starts = torch.cumsum(counts, 0) - counts
    take = (starts[:, None] + torch.arange(k, device=q.device)).reshape(-1)
    return e[take].view(-1, k), j[take].view(-1, k)
