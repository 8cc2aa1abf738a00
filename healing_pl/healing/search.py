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
  :func:`healing_pl.healing.covariance.ledoit_wolf_covariance`).  Both sides
  are whitened once with ``W`` (``W^T W = Sigma^-1``) and searched with L2.

How it works
------------
The (queries x candidates) score matrix is never materialised.  Candidates
are read in chunks and multiplied with blocks of at most
:data:`MAX_QUERY_CHUNK` queries into a reused score block of about
:data:`BLOCK_BYTES` (small enough to stay in cache between the product and
the selection).  L2 ranks by ``q.c - |c|^2 / 2`` (half of ``2 q.c - |c|^2``;
``|q|^2`` is the same for every candidate of a query): one ``addmm`` of the
queries with a chunk *in place* (a view of the candidates, no copy), the
chunk's ``-|c|^2 / 2`` as the bias row.  Cosine multiplies the unit queries
with the chunk normalised into a reused buffer.  With class labels or an
``exclude`` mask the chunk's rows are gathered into that buffer first.

Each query keeps a running shortlist of its ``k + MARGIN`` largest products
and a threshold (the weakest of them) below which nothing can enter it.  A
block is reduced to the maxima of its groups of :data:`GROUP` columns (one
cheap pass); only groups reaching the threshold are read again, and after the
first chunks they hold a few entries per query, which are merged into the
shortlist every few blocks (see :class:`_Shortlist`).

The float32 product is only used to build the shortlist.  The shortlisted
pairs are then rescored in float64 (``||q - c||`` of the float64 rows for L2,
``q.c / |c|`` of the float64 rows with ``q`` a unit row for cosine), and the
best k are taken by (score, lower candidate index).  Each pair goes through
the same element-wise arithmetic, so duplicated candidate rows get identical
scores and **ties always go to the lower index**.  A float32 dot product of
length n is off by at most about ``n u |q| |c|`` (``u = 2^-24``): only
shortlisted entries within twice that bound of the k-th product are rescored,
and when the weakest shortlisted product is not that far below the k-th exact
score, a candidate outside the shortlist could still tie or win, and that
query is redone exhaustively (rare: only for near-ties or heavily duplicated
data).  The results are therefore those of an exact float64 brute force over
the float32 inputs (for ``mahalanobis``, over the float32 whitened vectors).
The bound assumes IEEE float32 products: on a GPU, leave TF32 matmuls
(``torch.backends.cuda.matmul.allow_tf32``) off.

Memory: besides its inputs, a search holds one score block (about
:data:`BLOCK_BYTES`), for cosine or a restricted pool one prepared candidate
chunk (at most about :data:`BLOCK_BYTES`), the rescoring buffers (about
:data:`RESCORE_BYTES`), a float64 copy of one query block, the ``Q x (k +
MARGIN)`` shortlist and its pending hits (about as many) -- nothing that
grows with the number of candidates.  The buffers are allocated once per call
(not per chunk, block or class), so a first call in a fresh process has few
pages to fault in.  Exceptions: inputs that are not float32 (or not
contiguous) are converted once, and ``mahalanobis`` keeps one whitened float32
copy of the candidates.

Devices: everything runs on the device of the input tensors (numpy goes to the
device of the other input, or to the CPU); ``queries`` and ``candidates`` on
two different devices are an error, not a silent copy.  Labels, masks and the
covariance are moved to that device, and the results are returned there.
Speed: see ``benchmarks/bench_search.py`` (against faiss ``IndexFlatL2`` and
the bare matrix product, warm and cold).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from healing_pl.healing.covariance import ArrayLike, ledoit_wolf_covariance, whitening_matrix

__all__ = ["ArrayLike", "BLOCK_BYTES", "SEARCH_METRICS", "nearest", "whitening_matrix"]

#: Names accepted by :func:`nearest` for ``metric``.
SEARCH_METRICS = ("l2", "cosine", "mahalanobis")

#: Target size in bytes of one (query block x candidate chunk) score block.
BLOCK_BYTES = 16 * 2**20

#: Largest number of queries multiplied with one candidate chunk at a time.
MAX_QUERY_CHUNK = 1024

#: Extra shortlist places per query beyond k (the float32 stage keeps k + MARGIN).
MARGIN = 8

#: Columns per group whose maximum stands for them (:class:`_Shortlist`, :func:`_shortlist_block`).
GROUP = 64

#: Score blocks whose shortlist hits wait before a merge (see :class:`_Shortlist`).
MERGE_EVERY = 8

#: Target size in bytes of the float64 buffer of one rescoring piece.
RESCORE_BYTES = 2**20

_UNIT_ROUNDOFF = 2.0**-24  # float32
_F64_SLACK = 2.0**-40  # covers the float64 rounding of the exact scores, far below the float32 bound


def nearest(
    queries: ArrayLike,
    candidates: ArrayLike,
    k: int,
    metric: str = "l2",
    *,
    covariance: ArrayLike | None = None,
    query_labels: ArrayLike | None = None,
    candidate_labels: ArrayLike | None = None,
    chunk_size: int | None = None,
    exclude: ArrayLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest candidates of every query, best first.

    Args:
        queries: ``(Q, D)`` float tensor or array.
        candidates: ``(N, D)`` float tensor or array, on the device of ``queries``.
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
        ``(scores, indices)``, both ``(Q, k)`` on the device of the inputs:
        ``scores`` float32 distances (``l2``, ``mahalanobis``; ascending) or
        similarities (``cosine``; descending), ``indices`` int64 rows of
        ``candidates``; equal scores are ordered by ascending index.

    Raises:
        ValueError: on a bad metric, shape, k, label or mask, non-finite
            input, inputs on two devices, or a class with fewer than ``k``
            usable candidates.
    """
    if metric not in SEARCH_METRICS:
        raise ValueError(f"unknown search metric {metric!r}; choose one of {', '.join(SEARCH_METRICS)}.")
    device = _device(queries, candidates)
    q = _as_matrix(queries, "queries", device)
    # A search over every candidate reads each chunk's norms anyway: it checks them there
    # instead of one more pass over the candidates here.
    in_search = metric != "mahalanobis" and exclude is None and query_labels is None and candidate_labels is None
    c = _as_matrix(candidates, "candidates", device, check=not in_search)
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
            covariance = ledoit_wolf_covariance(c)
        cov = torch.as_tensor(covariance).detach().to(device=device)
        w_t = whitening_matrix(cov, dim=q.shape[1]).t().to(dtype=torch.float32)
        q, c = _whiten(q, w_t), _whiten(c, w_t)

    ws = _Workspace(device)
    if q_lab is None:
        rows = None
        if mask is not None:
            rows = torch.nonzero(~mask).squeeze(1)  # ascending: keeps the tie order
            if rows.numel() < k:
                raise ValueError(f"only {rows.numel()} candidates remain after exclusions but k={k} were requested.")
        scores, local = _search(q, c, rows, k, kind, chunk_size, ws, check=in_search)
        return scores, (local if rows is None else rows[local])

    scores = torch.empty(q.shape[0], k, dtype=torch.float32, device=device)
    indices = torch.empty(q.shape[0], k, dtype=torch.long, device=device)
    usable = torch.empty(n_cand, dtype=torch.bool, device=device)  # one class mask, reused
    keep = None if mask is None else ~mask
    for cls in torch.unique(q_lab).tolist():
        q_rows = torch.nonzero(q_lab == cls).squeeze(1)
        torch.eq(c_lab, cls, out=usable)
        if keep is not None:
            usable &= keep
        c_rows = torch.nonzero(usable).squeeze(1)
        if c_rows.numel() < k:
            left = " left after exclusions" if mask is not None else ""
            raise ValueError(f"class {cls} has only {c_rows.numel()} candidates{left} but k={k} were requested.")
        s, local = _search(q[q_rows], c, c_rows, k, kind, chunk_size, ws)
        scores[q_rows] = s
        indices[q_rows] = c_rows[local]
    return scores, indices


# --------------------------------------------------------------------------
# validation


def _device(queries: ArrayLike, candidates: ArrayLike) -> torch.device:
    """The device of the tensor inputs (CPU for numpy); raises if they disagree."""
    devices = [x.device for x in (queries, candidates) if isinstance(x, torch.Tensor)]
    if len(devices) == 2 and devices[0] != devices[1]:
        raise ValueError(f"queries are on {devices[0]} but candidates on {devices[1]}; put both on one device.")
    return devices[0] if devices else torch.device("cpu")


def _as_matrix(x: ArrayLike, name: str, device: torch.device, check: bool = True) -> torch.Tensor:
    """Validated float32, contiguous (rows, dims) tensor on ``device`` (no copy if it is one).

    ``check=False`` leaves the NaN/infinity check to the caller (:func:`_search` with ``check``).
    """
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
    if check and not math.isfinite(float(t.sum())):
        _check_finite(t, name)
    return t


def _check_finite(t: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contain NaN or infinite values.")


def _as_mask(exclude: ArrayLike | None, n: int, device: torch.device) -> torch.Tensor | None:
    if exclude is None:
        return None
    m = torch.as_tensor(exclude).to(device=device)
    if m.dtype != torch.bool or m.shape != (n,):
        raise ValueError(f"exclude must be a bool mask of shape ({n},), got {m.dtype} {tuple(m.shape)}.")
    return m if bool(m.any()) else None


def _as_labels(
    qy: ArrayLike | None, cy: ArrayLike | None, n_q: int, n_c: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
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
# buffers and preparation


class _Workspace:
    """Named flat buffers reused by every chunk, block and class of one :func:`nearest` call.

    A buffer only grows (to the largest size asked for), so a call allocates
    each of them about once.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = torch.empty(numel, dtype=dtype, device=self.device)
            self._bufs[name] = buf
        return buf[:numel].view(shape)

    def arange(self, n: int) -> torch.Tensor:
        """``torch.arange(n)`` (int64), a view of one cached range."""
        r = self._bufs.get("arange")
        if r is None or r.numel() < n:
            r = torch.arange(max(n, 1024), device=self.device)
            self._bufs["arange"] = r
        return r[:n]


def _whiten(x: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """``x @ w_t`` in row blocks (one new float32 matrix, no large temporaries)."""
    out = torch.empty(x.shape[0], w_t.shape[1], dtype=x.dtype, device=x.device)
    step = max(1, BLOCK_BYTES // (4 * x.shape[1]))
    for r0 in range(0, x.shape[0], step):
        torch.mm(x[r0 : r0 + step], w_t, out=out[r0 : r0 + step])
    return out


def _prepare_chunk(c, rows, c0: int, c1: int, kind: str, ws: _Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates ``c0:c1`` (of ``rows`` when given) for the kernel, and their norms.

    l2: the rows themselves (a view, or gathered into a reused buffer) and the
    bias ``-|c|^2 / 2``; cosine: unit rows in a reused buffer, bias unused.
    """
    n = c1 - c0
    if rows is None:
        src = c[c0:c1]
    else:
        src = torch.index_select(c, 0, rows[c0:c1], out=ws.get("chunk", (n, c.shape[1])))
    norms = torch.linalg.vector_norm(src, dim=1, out=ws.get("norms", (n,)))
    if kind == "cosine":
        dst = src if rows is not None else ws.get("chunk", (n, c.shape[1]))
        # as F.normalize: x / max(|x|, eps)
        torch.div(src, norms.clamp(min=1e-12).unsqueeze(1), out=dst)
        return dst, norms
    return src, norms


def _chunk_sizes(n_q: int, n_c: int, dim: int, chunk_size: int | None) -> tuple[int, int]:
    """(queries per block, candidates per chunk): score block and prepared chunk both about BLOCK_BYTES at most."""
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
    rows: torch.Tensor | None,
    k: int,
    kind: str,
    chunk_size: int | None,
    ws: _Workspace,
    check: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact search of ``q`` among ``c[rows]`` (all of ``c`` if None).

    ``kind`` is "l2" (returns distances) or "cosine" (similarities); indices
    are positions in ``rows``.  ``check``: raise if a candidate chunk holds
    NaN or infinity (seen in its norms).  Stage 1: float32 products, shortlist of
    ``k + MARGIN`` per query.  Stage 2: float64 rescoring and verification
    (see the module doc).
    """
    n_q, dim = q.shape
    n_c = c.shape[0] if rows is None else rows.numel()
    scores = torch.empty(n_q, k, dtype=torch.float32, device=q.device)
    indices = torch.empty(n_q, k, dtype=torch.long, device=q.device)
    if n_q == 0:
        if check and not math.isfinite(float(c.sum())):
            _check_finite(c, "candidates")
        return scores, indices
    short = min(n_c, k + MARGIN)
    q_chunk, c_chunk = _chunk_sizes(n_q, n_c, dim, chunk_size)
    qp = torch.nn.functional.normalize(q, dim=1) if kind == "cosine" else q
    q_blocks = [(q0, min(q0 + q_chunk, n_q)) for q0 in range(0, n_q, q_chunk)]

    # Stage 1: one pass over the candidates, each chunk prepared once.
    lists = [_Shortlist(q1 - q0, short, ws) for q0, q1 in q_blocks]
    c_max_sq = 0.0
    for c0 in range(0, n_c, c_chunk):
        c1 = min(c0 + c_chunk, n_c)
        cb, norms = _prepare_chunk(c, rows, c0, c1, kind, ws)
        if kind == "l2" or check:
            peak = float(norms.max())
            if check and not math.isfinite(peak):  # NaN/inf, or an overflow of the norm itself
                _check_finite(c[c0:c1] if rows is None else c[rows[c0:c1]], "candidates")
            c_max_sq = max(c_max_sq, peak**2)
        if kind == "l2":
            bias = norms.square_().mul_(-0.5)  # -|c|^2 / 2: norm()**2 is one fast pass, inside the bound
        for b, (q0, q1) in enumerate(q_blocks):
            block = ws.get("scores", (q1 - q0, c1 - c0))
            if kind == "l2":
                torch.addmm(bias, qp[q0:q1], cb.t(), out=block)
            else:
                torch.mm(qp[q0:q1], cb.t(), out=block)
            lists[b].add(block, c0)

    # Stage 2: exact rescoring, verification, final order.
    c_max = math.sqrt(c_max_sq) if kind == "l2" else 1.0
    gamma = 2.0 * (dim + 2) * _UNIT_ROUNDOFF
    for (q0, q1), shortlist in zip(q_blocks, lists):
        g, idx = shortlist.result()
        qb = q[q0:q1]
        q64 = ws.get("q64", (q1 - q0, dim), torch.float64).copy_(qb)
        if kind == "l2":
            q_sq = q64.square().sum(1)
            tol = gamma * (q_sq.sqrt() * c_max + c_max_sq) + _F64_SLACK * (q_sq + c_max_sq)
        else:  # unit rows, as F.normalize
            q64.div_(torch.linalg.vector_norm(q64, dim=1, keepdim=True).clamp_(min=1e-12))
            q_sq, tol = None, gamma * 2.0 + _F64_SLACK
        g, order = torch.sort(g, dim=1, descending=True)
        idx = idx.gather(1, order)
        # Only entries within 2 tol of the k-th product can make the top k (a prefix of
        # each sorted row): rescore the widest such prefix of the block, for every row.
        thr = g[:, k - 1].double() - 2.0 * tol
        band = (g.double() >= thr[:, None]).sum(1)
        m = int(band.max())
        keys = _exact_keys(q64, c, rows, idx[:, :m], kind, ws, width=band)
        keys, top = _order(keys, idx[:, :m], descending=True)
        keys, top = keys[:, :k].contiguous(), top[:, :k].contiguous()
        if short < n_c:  # candidates outside the shortlist exist: is its margin wide enough?
            floor = _stage1_score(keys[:, k - 1], q_sq, kind) - tol
            unsure = torch.nonzero(g[:, -1].double() >= floor).squeeze(1)
            per = max(1, BLOCK_BYTES // (16 * (c_chunk + k)))  # redo rows per batch
            for u in unsure.split(per) if unsure.numel() else ():
                keys[u], top[u] = _redo_rows(qb[u], qp[q0:q1][u], q64[u], c, rows, floor[u], k, kind, c_chunk)
        if kind == "l2":  # key = -||q - c||  ->  distance
            keys = keys.neg_()
        scores[q0:q1] = keys
        indices[q0:q1] = top
    return scores, indices


def _stage1_score(key: torch.Tensor, q_sq: torch.Tensor | None, kind: str) -> torch.Tensor:
    """An exact key in the scale of the float32 products: ``(|q|^2 - d^2) / 2`` for l2, as is for cosine."""
    return key if kind == "cosine" else (q_sq - key.square()) / 2.0


class _Shortlist:
    """The ``s`` largest entries per row of one query block, fed one score block per candidate chunk.

    Each row has a threshold ``tau`` below which nothing can enter its
    shortlist: once the shortlist is full, its weakest entry.  For a block,
    one cheap pass takes the maxima of its groups of :data:`GROUP` columns;
    only groups reaching ``tau`` are read again, and their entries reaching
    ``tau`` (after the first chunks, a few per row) are kept as pending hits.
    Pending hits are merged into the shortlist (which raises ``tau``) once
    they number about one shortlist, after :data:`MERGE_EVERY` blocks, and at
    the end.  The first block takes for ``tau`` the ``s``-th largest group
    maximum (at least ``s`` entries reach it).  Blocks of few groups, or with
    many hot groups (heavily tied data), go through :func:`_shortlist_block`.
    """

    def __init__(self, n_rows: int, s: int, ws: _Workspace):
        self.n_rows, self.s, self.ws = n_rows, s, ws
        self.v: torch.Tensor | None = None  # (n_rows, <= s) merged values, any order
        self.i: torch.Tensor | None = None  # their columns
        self.tau: torch.Tensor | None = None  # (n_rows, 1), once v has s columns
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # pending (rows, cols, vals)
        self.pending = 0
        self.blocks = 0

    def add(self, block: torch.Tensor, c0: int) -> None:
        """Take in a score block holding the candidate columns ``c0:``."""
        n_rows, n = block.shape
        s = self.s
        if self.tau is None:  # the shortlist is not full yet: merge right away
            hits = None
            if self.v is None and n // GROUP >= 2 * s:
                maxima = block[:, : n // GROUP * GROUP].view(n_rows, n // GROUP, GROUP).amax(2)
                tau = torch.topk(maxima, s, dim=1, sorted=False).values.amin(1, keepdim=True)
                hits = _hits(block, c0, tau, maxima, s, self.ws)
            self.parts.append(hits if hits is not None else _dense_hits(block, c0, s, self.ws))
            self._flush()
            return
        hits = _hits(block, c0, self.tau, None, s, self.ws)
        if hits is None:
            hits = _dense_hits(block, c0, s, self.ws)
        if hits[0].numel():
            self.parts.append(hits)
            self.pending += hits[0].numel()
        self.blocks += 1
        if self.pending >= n_rows * s or self.blocks >= MERGE_EVERY:
            self._flush()

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, columns)``, ``(n_rows, min(s, columns seen))``, any order within a row."""
        self._flush()
        return self.v, self.i

    def _flush(self) -> None:
        """Merge the pending hits into the shortlist."""
        if not self.parts:
            return
        if len(self.parts) == 1:
            hr, hc, hv = self.parts[0]
        else:  # each part is sorted by row: bring each row's hits together
            hr, order = torch.sort(torch.cat([p[0] for p in self.parts]), stable=True)
            hc = torch.cat([p[1] for p in self.parts])[order]
            hv = torch.cat([p[2] for p in self.parts])[order]
        self.parts, self.pending, self.blocks = [], 0, 0
        # Lay the hits out in a padded (rows, most hits of a row) block and merge it.
        n_rows = self.n_rows
        counts = torch.bincount(hr, minlength=n_rows)
        width = int(counts.max())
        slot = self.ws.arange(hr.numel()) - (torch.cumsum(counts, 0) - counts)[hr]
        pv = torch.full((n_rows, width), -math.inf, dtype=hv.dtype, device=hv.device)
        pi = torch.zeros((n_rows, width), dtype=torch.long, device=hv.device)
        pv[hr, slot] = hv
        pi[hr, slot] = hc
        if self.v is not None:
            pv, pi = torch.cat([self.v, pv], dim=1), torch.cat([self.i, pi], dim=1)
        # Every row holds at least min(s, width) real entries (a full shortlist, the hits of a first
        # block's tau, or the same number of pre-selected ones per row), so the -inf padding stays out.
        v, j = torch.topk(pv, min(self.s, pv.shape[1]), dim=1, sorted=False)
        self.v, self.i = v, pi.gather(1, j)
        if self.v.shape[1] >= self.s:
            self.tau = self.v.amin(1, keepdim=True)


def _hits(block: torch.Tensor, c0: int, tau: torch.Tensor, maxima: torch.Tensor | None, s: int, ws: _Workspace):
    """Entries of ``block`` reaching ``tau`` (per row) as ``(rows, cols + c0, vals)``, sorted by row.

    Reads the group maxima (given, or one pass) and then only the hot groups.
    Returns None when more than ``2 s`` groups per row are hot (heavily tied
    data), which the caller pre-selects instead.
    """
    n_rows, n = block.shape
    groups = n // GROUP
    head = groups * GROUP
    rows, cols, vals = [], [], []
    if groups:
        grouped = block[:, :head].view(n_rows, groups, GROUP)
        if maxima is None:
            maxima = grouped.amax(2)
        hot = torch.nonzero((maxima >= tau).view(-1)).squeeze(1)  # = row * groups + group, ascending
        if hot.numel() > 2 * n_rows * s:
            return None
        if hot.numel():
            hot_r = hot.div(groups, rounding_mode="floor")
            if head == n:  # the groups are the rows of a (rows * groups, GROUP) view
                sub = block.view(n_rows * groups, GROUP).index_select(0, hot)
            else:
                sub = grouped[hot_r, hot.remainder(groups)]
            f = torch.nonzero((sub >= tau[hot_r]).view(-1)).squeeze(1)  # ascending: rows stay ascending
            p = f.div(GROUP, rounding_mode="floor")
            rows.append(hot_r[p])
            vals.append(sub.view(-1)[f])
            cols.append(hot[p].remainder_(groups).mul_(GROUP).add_(f.remainder_(GROUP)).add_(c0))
    if head < n:  # columns after the last full group
        tail = block[:, head:]
        r, j = torch.nonzero(tail >= tau, as_tuple=True)
        rows.append(r)
        vals.append(tail[r, j])
        cols.append(j.add_(head + c0))
    if len(rows) == 1:
        return rows[0], cols[0], vals[0]
    hr, order = torch.sort(torch.cat(rows), stable=True)  # group hits, then tail hits, per row
    return hr, torch.cat(cols)[order], torch.cat(vals)[order]


def _dense_hits(block: torch.Tensor, c0: int, s: int, ws: _Workspace):
    """The ``s`` largest entries of every row of ``block``, as hits ``(rows, cols + c0, vals)``."""
    v, i = _shortlist_block(block, s)
    rows = ws.arange(block.shape[0]).repeat_interleave(v.shape[1])
    return rows, i.add_(c0).reshape(-1), v.reshape(-1)


def _shortlist_block(block: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def _order(v: torch.Tensor, i: torch.Tensor, descending: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by score, equal scores by ascending index (two small sorts)."""
    i, perm = torch.sort(i, dim=1)
    v = v.gather(1, perm)
    v, perm = torch.sort(v, dim=1, descending=descending, stable=True)
    return v, i.gather(1, perm)


def _exact_keys(
    q64: torch.Tensor, c, rows, cand: torch.Tensor, kind: str, ws: _Workspace, width: torch.Tensor | None = None
) -> torch.Tensor:
    """Float64 ranking key (larger is better) of the pairs ``(q64[r], c[rows[cand[r, j]]])``, shape of ``cand``.

    ``q64``: float64 query rows (unit rows for cosine).  l2: ``-||q - c||``;
    cosine: ``q.c / |c|`` with ``q`` a unit row.  Every pair goes through the
    same element-wise arithmetic (float64 rows, then a reduction over the last
    dimension), so duplicated candidates score exactly alike.  With ``width``,
    only the first ``width[r]`` entries of row ``r`` are scored, the rest are
    ``-inf``; rows are then taken by increasing width.  Runs in pieces of rows
    whose float64 copy is about :data:`RESCORE_BYTES`, in reused buffers.
    """
    n_rows, m = cand.shape
    dim = c.shape[1]
    if width is None:
        out, order, widths = torch.empty(n_rows, m, dtype=torch.float64, device=q64.device), None, None
    else:
        out = torch.full((n_rows, m), -math.inf, dtype=torch.float64, device=q64.device)
        widths, order = torch.sort(width)
        widths = widths.tolist()
    per = max(1, min(n_rows, RESCORE_BYTES // (8 * m * dim)))
    for r0 in range(0, n_rows, per):
        r1 = min(r0 + per, n_rows)
        if order is None:
            w, sel = m, slice(r0, r1)
        else:
            w, sel = widths[r1 - 1], order[r0:r1]
        ids = cand[sel, :w].reshape(-1)
        if rows is not None:
            ids = rows[ids]
        c32 = torch.index_select(c, 0, ids, out=ws.get("rescore32", (ids.numel(), dim)))
        c64 = ws.get("rescore64", (r1 - r0, w, dim), torch.float64)
        c64.view(-1, dim).copy_(c32)
        qv = q64[sel].unsqueeze(1)
        if kind == "l2":
            keys = torch.linalg.vector_norm(c64.sub_(qv), dim=2).neg_()
        else:
            norms = torch.linalg.vector_norm(c64, dim=2).clamp_(min=1e-12)  # as F.normalize
            keys = torch.sum(c64.mul_(qv), dim=2).div_(norms)
        out[sel, :w] = keys
    return out


def _redo_rows(q, qp, q64, c, rows, floor, k, kind, c_chunk):
    """Exhaustive stage 2 for query rows whose shortlist margin was too thin.

    Every candidate whose float32 product reaches ``floor`` (the k-th exact
    score minus the error bound, in the scale of the products) is rescored
    exactly and merged, chunk by chunk, into a running best k per row; returns
    ``(keys, indices)`` in (key desc, index asc) order.
    """
    n_q = q.shape[0]
    n_c = c.shape[0] if rows is None else rows.numel()
    ws = _Workspace(q.device)
    # Compare in float32 against a floor rounded down, so nothing is lost.
    floor32 = torch.nextafter(floor.float(), torch.tensor(-math.inf, device=floor.device))
    best_e = torch.full((n_q, k), -math.inf, dtype=torch.float64, device=q.device)
    best_j = torch.full((n_q, k), n_c, dtype=torch.long, device=q.device)  # placeholders sort last
    for c0 in range(0, n_c, c_chunk):
        src = c[c0 : c0 + c_chunk] if rows is None else c[rows[c0 : c0 + c_chunk]]
        # Few rows: multiply the raw chunk and correct the small block (no prepared copy).
        norms = torch.linalg.vector_norm(src, dim=1)
        if kind == "l2":
            block = torch.addmm(norms.square_().mul_(-0.5), q, src.t())
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
        e[r, slot] = _exact_keys(q64[r], c, rows, (j + c0)[:, None], kind, ws)[:, 0]
        idx[r, slot] = j + c0
        e, idx = _order(e, idx, descending=True)
        best_e, best_j = e[:, :k], idx[:, :k]
    return best_e, best_j
