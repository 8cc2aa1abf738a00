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
  :func:`healing_pl.healing.similarity.ledoit_wolf_covariance`).  Both sides
  are whitened once with ``W`` (``W^T W = Sigma^-1``) and searched with L2.

How it works
------------
The (queries x candidates) score matrix is never materialised.  Candidates
are read in chunks; each chunk is prepared once into a reused buffer (L2:
augmented with a ``|c|^2`` column, so the ranking score ``q.c - |c|^2 / 2`` is
a single matrix product; cosine: normalised) and multiplied with blocks of at
most :data:`MAX_QUERY_CHUNK` queries into a reused score block of about
:data:`BLOCK_BYTES`.  A cheap group-maximum pre-selection plus ``torch.topk``
keeps a running shortlist of ``k + MARGIN`` candidates per query.

The float32 product is only used to build the shortlist.  The shortlisted
pairs are then rescored one by one in float64, and the best k are taken by
(score, lower candidate index).  Each pair goes through the same arithmetic,
so duplicated candidate rows get identical scores and **ties always go to the
lower index**.  A float32 dot product of length n is off by at most about
``n u |q| |c|`` (``u = 2^-24``); when the weakest shortlisted product is not
that far below the k-th exact score, a candidate outside the shortlist could
still tie or win, and that query is redone exhaustively (rare: only for
near-ties or heavily duplicated data).  The results are therefore those of an
exact float64 brute force over the float32 inputs (for ``mahalanobis``, over
the float32 whitened vectors).  The bound assumes IEEE float32 products: on a
GPU, leave TF32 matmuls (``torch.backends.cuda.matmul.allow_tf32``) off.

Memory: besides its inputs, a search holds one score block (about
:data:`BLOCK_BYTES`), one prepared candidate chunk (at most about
:data:`BLOCK_BYTES`), a prepared copy of the queries and the ``Q x (k +
MARGIN)`` shortlist -- nothing that grows with the number of candidates.
Exceptions: inputs that are not float32 (or not contiguous) are converted
once, and ``mahalanobis`` keeps one whitened float32 copy of the candidates.

Everything runs on the device of ``queries`` when it is a tensor (numpy goes
to the CPU).  Speed: see ``benchmarks/bench_search.py`` (against faiss
``IndexFlatL2``, scikit-learn brute force and the bare matrix product).
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

#: Target size in bytes of one (query block x candidate chunk) score block.
BLOCK_BYTES = 64 * 2**20

#: Largest number of queries multiplied with one candidate chunk at a time.
MAX_QUERY_CHUNK = 1024

#: Extra shortlist places per query beyond k (the float32 stage keeps k + MARGIN).
MARGIN = 8

#: Columns per group in the group-maximum pre-selection of :func:`_shortlist_block`.
GROUP = 64

_UNIT_ROUNDOFF = 2.0**-24  # float32

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
        k: number of neighbours per query, ``1 <= k <=`` usable candidates.
        metric: ``"l2"``, ``"cosine"`` or ``"mahalanobis"`` (see module doc).
        covariance: ``(D, D)`` symmetric positive definite matrix for
            ``"mahalanobis"``; estimated from ``candidates`` with Ledoit-Wolf
            shrinkage when omitted.  Ignored by the other metrics.
        query_labels, candidate_labels: ``(Q,)`` and ``(N,)`` integer class
            labels; when given, a query's neighbours come only from its class.
        chunk_size: candidates per chunk (default: sized so a score block is
            about :data:`BLOCK_BYTES`).  Changes speed and memory, never the
            result.
        exclude: ``(N,)`` bool mask of candidates never to return.

    Returns:
        ``(scores, indices)``, both ``(Q, k)``: ``scores`` float32 distances
        (``l2``, ``mahalanobis``; ascending) or similarities (``cosine``;
        descending), ``indices`` int64 rows of ``candidates``; equal scores
        are ordered by ascending index.

    Raises:
        ValueError: on a bad metric, shape, k, label or mask, non-finite
            input, or a class with fewer than ``k`` usable candidates.
    """
    if metric not in SEARCH_METRICS:
        raise ValueError(f"unknown search metric {metric!r}; choose one of {', '.join(SEARCH_METRICS)}.")
    device = queries.device if isinstance(queries, torch.Tensor) else torch.device("cpu")
    q = _as_matrix(queries, "queries", device)
    c = _as_matrix(candidates, "candidates", device)
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} dimensions but candidates have {c.shape[1]}.")
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

    kind = "cosine" if metric == "cosine" else "l2"
    if metric == "mahalanobis":
        if covariance is None:
            from healing_pl.healing.similarity import ledoit_wolf_covariance

            covariance = ledoit_wolf_covariance(c)
        w_t = whitening_matrix(covariance, dim=q.shape[1]).t().to(device=device, dtype=torch.float32)
        q, c = _whiten(q, w_t), _whiten(c, w_t)

    if q_lab is None:
        rows = None
        if mask is not None:
            rows = torch.nonzero(~mask).squeeze(1)  # ascending: keeps the tie order
            if rows.numel() < k:
                raise ValueError(f"only {rows.numel()} candidates remain after exclusions but k={k} were requested.")
        scores, local = _search(q, c, rows, k, kind, chunk_size)
        return scores, (local if rows is None else rows[local])

    scores = torch.empty(q.shape[0], k, dtype=torch.float32, device=device)
    indices = torch.empty(q.shape[0], k, dtype=torch.long, device=device)
    for cls in torch.unique(q_lab).tolist():
        q_rows = torch.nonzero(q_lab == cls).squeeze(1)
        usable = c_lab == cls
        if mask is not None:
            usable &= ~mask
        c_rows = torch.nonzero(usable).squeeze(1)
        if c_rows.numel() < k:
            left = " left after exclusions" if mask is not None else ""
            raise ValueError(f"class {cls} has only {c_rows.numel()} candidates{left} but k={k} were requested.")
        s, local = _search(q[q_rows], c, c_rows, k, kind, chunk_size)
        scores[q_rows] = s
        indices[q_rows] = c_rows[local]
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
# validation


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
            f"expected {n_q} query labels and {n_c} candidate labels, got {qy.shape[0]} and {cy.shape[0]}."
        )
    if qy.is_floating_point() or cy.is_floating_point() or qy.dtype == torch.bool:
        raise ValueError("labels must be integers.")
    return qy.long(), cy.long()


# --------------------------------------------------------------------------
# preparation


def _whiten(x: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """``x @ w_t`` in row blocks (one new float32 matrix, no large temporaries)."""
    out = torch.empty(x.shape[0], w_t.shape[1], dtype=x.dtype, device=x.device)
    step = max(1, BLOCK_BYTES // (4 * x.shape[1]))
    for r0 in range(0, x.shape[0], step):
        torch.mm(x[r0 : r0 + step], w_t, out=out[r0 : r0 + step])
    return out


def _prepare_queries(q: torch.Tensor, kind: str) -> torch.Tensor:
    """Queries for the kernel: unit rows (cosine) or ``[q, -1/2]`` (l2)."""
    if kind == "cosine":
        return torch.nn.functional.normalize(q, dim=1)
    out = torch.empty(q.shape[0], q.shape[1] + 1, dtype=q.dtype, device=q.device)
    out[:, :-1] = q
    out[:, -1] = -0.5
    return out


def _prepare_chunk(c, rows, c0: int, c1: int, kind: str, buf: torch.Tensor) -> torch.Tensor:
    """Candidates ``c0:c1`` (of ``rows`` when given) prepared in ``buf``.

    cosine: unit rows; l2: ``[c, |c|^2]``, so that ``[q, -1/2] . [c, |c|^2] =
    q.c - |c|^2 / 2``, half the L2 ranking score ``2 q.c - |c|^2``
    (``|q|^2`` is the same for every candidate of a query).
    """
    src = c[c0:c1] if rows is None else c[rows[c0:c1]]
    dst = buf[: c1 - c0]
    if kind == "cosine":
        torch.nn.functional.normalize(src, dim=1, out=dst)
    else:
        dst[:, :-1] = src
        # norm()**2 is one fast pass; its rounding is inside the error bound of stage 2
        dst[:, -1] = torch.linalg.vector_norm(src, dim=1).square_()
    return dst


def _chunk_sizes(n_q: int, n_c: int, dim: int, chunk_size: Optional[int]) -> Tuple[int, int]:
    """(queries per block, candidates per chunk): score block and prepared
    chunk both about BLOCK_BYTES at most."""
    floats = BLOCK_BYTES // 4
    if chunk_size is None:
        q_chunk = max(1, min(n_q, MAX_QUERY_CHUNK))
        c_chunk = max(1, min(floats // q_chunk, floats // (dim + 1)))
        if c_chunk >= GROUP:  # whole groups for the pre-selection
            c_chunk -= c_chunk % GROUP
    else:
        c_chunk = int(chunk_size)
        q_chunk = max(1, min(n_q, MAX_QUERY_CHUNK, floats // c_chunk))
    return q_chunk, max(1, min(c_chunk, n_c))


# --------------------------------------------------------------------------
# search


def _search(
    q: torch.Tensor,
    c: torch.Tensor,
    rows: Optional[torch.Tensor],
    k: int,
    kind: str,
    chunk_size: Optional[int],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact search of ``q`` among ``c[rows]`` (all of ``c`` if None).

    ``kind`` is "l2" (returns distances) or "cosine" (similarities); indices
    are positions in ``rows``.  Stage 1: float32 products, shortlist of
    ``k + MARGIN`` per query.  Stage 2: float64 rescoring and verification
    (see the module doc).
    """
    n_q, dim = q.shape
    n_c = c.shape[0] if rows is None else rows.numel()
    short = min(n_c, k + MARGIN)
    q_chunk, c_chunk = _chunk_sizes(n_q, n_c, dim, chunk_size)
    width = dim + 1 if kind == "l2" else dim
    qp = _prepare_queries(q, kind)
    work = torch.empty(q_chunk * min(c_chunk, n_c), dtype=q.dtype, device=q.device)
    buf = torch.empty(min(c_chunk, n_c) * width, dtype=q.dtype, device=q.device).view(-1, width)
    q_blocks = [(q0, min(q0 + q_chunk, n_q)) for q0 in range(0, n_q, q_chunk)]

    # Stage 1: one pass over the candidates, each chunk prepared once.
    best = [None] * len(q_blocks)
    c_max_sq = 0.0
    for c0 in range(0, n_c, c_chunk):
        c1 = min(c0 + c_chunk, n_c)
        cb = _prepare_chunk(c, rows, c0, c1, kind, buf)
        if kind == "l2":
            c_max_sq = max(c_max_sq, float(cb[:, -1].max()))
        for b, (q0, q1) in enumerate(q_blocks):
            block = work[: (q1 - q0) * (c1 - c0)].view(q1 - q0, c1 - c0)
            torch.mm(qp[q0:q1], cb.t(), out=block)
            v, i = _shortlist_block(block, short)
            if c0:
                i += c0
            best[b] = (v, i) if best[b] is None else _merge(*best[b], v, i, short)

    # Stage 2: exact rescoring, verification, final order.
    c_max = math.sqrt(c_max_sq) if kind == "l2" else 1.0
    gamma = 2.0 * (dim + 2) * _UNIT_ROUNDOFF
    scores = torch.empty(n_q, k, dtype=torch.float32, device=q.device)
    indices = torch.empty(n_q, k, dtype=torch.long, device=q.device)
    for (q0, q1), (g, idx) in zip(q_blocks, best):
        qb = q[q0:q1]
        q64, q_sq = _exact_queries(qb, kind)
        q_norm = q_sq.sqrt() if kind == "l2" else 1.0
        tol = gamma * (q_norm * c_max + c_max * c_max)  # bound on |float32 product - exact|
        g, order = torch.sort(g, dim=1, descending=True)
        idx = idx.gather(1, order)
        # Only entries within 2 tol of the k-th product can make the top k: rescore those.
        band = g.double() >= (g[:, k - 1].double() - 2.0 * tol)[:, None]
        r, j = torch.nonzero(band, as_tuple=True)
        exact = torch.full(g.shape, -math.inf, dtype=torch.float64, device=q.device)
        exact[r, j] = _pair_scores(q64, q_sq, c, rows, r, idx[r, j], kind)
        exact, idx = _order(exact, idx, descending=True)
        exact, idx = exact[:, :k].clone(), idx[:, :k].clone()
        if short < n_c:  # candidates outside the shortlist exist: is its margin wide enough?
            floor = exact[:, k - 1] - tol
            unsure = torch.nonzero(g[:, -1].double() >= floor).squeeze(1)
            per = max(1, BLOCK_BYTES // (16 * (c_chunk + k)))  # redo rows per batch
            for u in unsure.split(per):
                exact[u], idx[u] = _redo_rows(
                    qb[u], qp[q0:q1][u], c, rows, floor[u], k, kind, c_chunk
                )
        if kind == "l2":  # ranking score e = (|q|^2 - d^2) / 2  ->  distance d
            exact = (q_sq[:, None] - 2.0 * exact).clamp_(min=0.0).sqrt_()
        scores[q0:q1] = exact
        indices[q0:q1] = idx
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
    if head == n:  # copy the kept groups out as rows of a (rows * groups, GROUP) view
        first = torch.arange(0, n_rows * groups, groups, device=block.device)
        sub = block.view(n_rows * groups, GROUP).index_select(0, (keep + first[:, None]).view(-1))
    else:
        sub = grouped[torch.arange(n_rows, device=block.device)[:, None], keep]
    sub = sub.view(n_rows, s * GROUP)
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


def _exact_queries(q: torch.Tensor, kind: str):
    """Float64 queries for :func:`_pair_scores`: ``(rows, |rows|^2)`` for l2, unit rows for cosine."""
    q64 = q.double()
    if kind == "l2":
        return q64, q64.square().sum(1)
    return torch.nn.functional.normalize(q64, dim=1), None


def _pair_scores(q64, q_sq, c, rows, q_idx, c_idx, kind: str) -> torch.Tensor:
    """Float64 ranking score (larger is better) of the pairs ``(q[q_idx[p]], c[rows[c_idx[p]]])``.

    ``q64, q_sq`` come from :func:`_exact_queries`.  ``l2``: ``(|q|^2 - ||q - c||^2) / 2``
    (the scale of the float32 product); ``cosine``: ``q.c`` of the unit rows.
    Every pair goes through the same arithmetic, so duplicated candidates score
    exactly alike.  Runs in pieces of about :data:`BLOCK_BYTES`.
    """
    n = q_idx.numel()
    out = torch.empty(n, dtype=torch.float64, device=q64.device)
    step = max(1, BLOCK_BYTES // (8 * 4 * q64.shape[1]))
    for p0 in range(0, n, step):
        qi, ci = q_idx[p0 : p0 + step], c_idx[p0 : p0 + step]
        cv = c[ci if rows is None else rows[ci]].double()
        if kind == "l2":
            d_sq = cv.sub_(q64[qi]).square_().sum(1)
            out[p0 : p0 + step] = q_sq[qi].sub_(d_sq).div_(2.0)
        else:
            cv = torch.nn.functional.normalize(cv, dim=1)
            out[p0 : p0 + step] = cv.mul_(q64[qi]).sum(1)
    return out


def _redo_rows(q, qp, c, rows, floor, k, kind, c_chunk):
    """Exhaustive stage 2 for query rows whose shortlist margin was too thin.

    Every candidate whose float32 product reaches ``floor`` (the k-th exact
    score minus the error bound) is rescored exactly and merged, chunk by
    chunk, into a running best k per row; returns ``(scores, indices)`` in
    (score desc, index asc) order.
    """
    n_q = q.shape[0]
    n_c = c.shape[0] if rows is None else rows.numel()
    q64, q_sq = _exact_queries(q, kind)
    # Compare in float32 against a floor rounded down, so nothing is lost.
    floor32 = torch.nextafter(floor.float(), torch.tensor(-math.inf, device=floor.device))
    best_e = torch.full((n_q, k), -math.inf, dtype=torch.float64, device=q.device)
    best_j = torch.full((n_q, k), n_c, dtype=torch.long, device=q.device)  # placeholders sort last
    for c0 in range(0, n_c, c_chunk):
        src = c[c0 : c0 + c_chunk] if rows is None else c[rows[c0 : c0 + c_chunk]]
        # Few rows: multiply the raw chunk and correct the small block (no prepared copy).
        norms = torch.linalg.vector_norm(src, dim=1)
        if kind == "l2":
            block = (q @ src.t()).sub_(norms.square_().mul_(0.5))
        else:
            block = (qp @ src.t()).div_(norms.clamp_(min=1e-12))  # as F.normalize
        r, j = torch.nonzero(block >= floor32[:, None], as_tuple=True)  # row-major order
        if not r.numel():
            continue
        # Lay the hits out next to the running best k of their row, then re-order each row.
        counts = torch.bincount(r, minlength=n_q)
        slot = torch.arange(r.numel(), device=q.device) - (torch.cumsum(counts, 0) - counts)[r] + k
        width = k + int(counts.max())
        e = torch.full((n_q, width), -math.inf, dtype=torch.float64, device=q.device)
        idx = torch.full((n_q, width), n_c, dtype=torch.long, device=q.device)
        e[:, :k], idx[:, :k] = best_e, best_j
        e[r, slot] = _pair_scores(q64, q_sq, c, rows, r, j + c0, kind)
        idx[r, slot] = j + c0
        e, idx = _order(e, idx, descending=True)
        best_e, best_j = e[:, :k], idx[:, :k]
    return best_e, best_j
