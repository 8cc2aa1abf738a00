"""Spare-set policies: which spare sample becomes the twin of each request.

Two policies from the paper (section 4), registered in :data:`POLICIES`:

``general_spare_set`` (:class:`GeneralSpareSet`)
    A spare set S is held out of training.  Each unlearn request takes its
    nearest *remaining* spare under the chosen metric; that spare is used up.

``twins`` (:class:`Twins`)
    For every primary sample (or an "exposed" subset), its ``k`` nearest
    surrogates in the backup set are found in advance
    (:meth:`Twins.precompute`).  A request takes its first surrogate that is
    not used yet.  A request with no precomputed surrogates, or whose
    surrogates are all used, falls back to the nearest free backup when its
    vectors are passed to :meth:`Twins.assign` (otherwise ``ValueError``).

Common behaviour:

* Twins come only from the fitted spare/backup ids; request ids must not be
  among them, and ``fit(..., forbidden_ids=primary_ids)`` checks that no
  spare is a primary (forget or remain) sample.
* A spare is never used twice: the policy remembers used spares and served
  requests across rounds; :meth:`SparePolicy.state_dict` /
  :meth:`SparePolicy.load_state_dict` save and restore that state as plain
  lists and ints.
* ``same_class=True`` draws a request's twin from its own class (labels
  required).  It is off by default (the paper states no class restriction):
  every metric, the ``random`` control included, then searches the whole
  spare set.
* ``group`` decides how the requests of one round share the spares:
  ``"sequential"`` (default; requests in the given order each take their best
  free spare, as in the paper), ``"greedy"`` (pairs taken by best global
  score first) or ``"optimal"`` (minimum total distance / maximum total
  similarity, ``scipy.optimize.linear_sum_assignment``).  For
  ``general_spare_set`` each request's candidate list holds
  ``min(#requests, #free spares, max_candidates)`` spares, which makes
  ``greedy`` and ``optimal`` identical to running them on the full request x
  spare matrix whenever the round has at most ``max_candidates`` requests;
  for ``twins`` the lists are the precomputed surrogates.
* A round either succeeds completely or raises ``ValueError`` and changes
  nothing.

Usage::

    policy = POLICIES["general_spare_set"](metric="raw_l2")
    metric = policy.metric
    policy.fit(spare_ids, metric.representations(ds, spare_ids), spare_labels,
               forbidden_ids=primary_ids)
    result = policy.assign(forget_ids, metric.representations(ds, forget_ids), forget_labels)
    result.twins        # {request_id: twin_id}
    result.records()    # [{"request_id", "twin_id", "score", "policy", "metric"}, ...]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from healing_pl.healing.covariance import ArrayLike
from healing_pl.healing.metric import Metric, get_metric
from healing_pl.healing.representations import Ids

__all__ = [
    "GROUP_MODES",
    "POLICIES",
    "GeneralSpareSet",
    "SparePolicy",
    "TwinAssignment",
    "Twins",
    "get_policy",
    "match",
]

#: Ways to share spares among the requests of one round.
GROUP_MODES = ("sequential", "greedy", "optimal")


@dataclass(frozen=True)
class TwinAssignment:
    """The twins of one request round, in request order.

    ``scores`` are the metric's values (distances, smaller is better, or
    similarities for ``feat_cosine``; 0 for ``random``).
    """

    policy: str
    metric: str
    request_ids: tuple[int, ...]
    twin_ids: tuple[int, ...]
    scores: tuple[float, ...]

    @property
    def twins(self) -> dict[int, int]:
        """``{request_id: twin_id}``."""
        return dict(zip(self.request_ids, self.twin_ids))

    @property
    def score_of(self) -> dict[int, float]:
        """``{request_id: score}``."""
        return dict(zip(self.request_ids, self.scores))

    def records(self) -> list[dict]:
        """One plain dict per request, for a ledger or results record."""
        return [
            {"request_id": r, "twin_id": t, "score": s, "policy": self.policy, "metric": self.metric}
            for r, t, s in zip(self.request_ids, self.twin_ids, self.scores)
        ]

    def __len__(self) -> int:
        return len(self.request_ids)


# --------------------------------------------------------------------------
# joint choice of distinct spares


def match(cost: np.ndarray, cand: np.ndarray, usable: np.ndarray, mode: str) -> np.ndarray:
    """Give each request (row) at most one distinct candidate.

    Args:
        cost: ``(R, m)`` costs, smaller is better, each row sorted best first.
        cand: ``(R, m)`` candidate keys (spare rows); distinct within a row.
        usable: ``(R, m)`` bool, False for candidates not to take.
        mode: one of :data:`GROUP_MODES`.

    Returns:
        ``(R,)`` column index into each row's list, or -1 when the row got
        nothing (all its usable candidates went to other rows).
    """
    n_req = cost.shape[0]
    out = np.full(n_req, -1, dtype=np.int64)
    taken = set()
    if mode == "sequential":
        for r in range(n_req):
            for j in np.flatnonzero(usable[r]):
                if cand[r, j] not in taken:
                    out[r] = j
                    taken.add(cand[r, j])
                    break
    elif mode == "greedy":
        rr, jj = np.nonzero(usable)
        for t in np.lexsort((jj, rr, cost[rr, jj])):  # by cost, then request, then rank
            r, j = rr[t], jj[t]
            if out[r] < 0 and cand[r, j] not in taken:
                out[r] = j
                taken.add(cand[r, j])
    elif mode == "optimal":
        from scipy.optimize import linear_sum_assignment

        rr, jj = np.nonzero(usable)
        if rr.size == 0:
            return out
        keys, col = np.unique(cand[rr, jj], return_inverse=True)
        vals = cost[rr, jj].astype(np.float64)
        # A missing pair costs more than any full matching of real pairs.
        big = vals.max() + (vals.max() - vals.min() + 1.0) * (n_req + 1)
        full = np.full((n_req, keys.size), big)
        full[rr, col] = vals
        rank = np.full((n_req, keys.size), -1, dtype=np.int64)
        rank[rr, col] = jj
        for r, c in zip(*linear_sum_assignment(full)):
            if rank[r, c] >= 0:
                out[r] = rank[r, c]
    else:
        raise ValueError(f"unknown group mode {mode!r}; choose one of {', '.join(GROUP_MODES)}.")
    return out


# --------------------------------------------------------------------------
# policies


def _ids(ids: Ids, what: str) -> list[int]:
    t = torch.as_tensor(ids)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"{what} must be integer ids.")
    out = [int(i) for i in t.reshape(-1).tolist()]
    if len(set(out)) != len(out):
        raise ValueError(f"{what} contain duplicates.")
    return out


def _few(ids: Iterable[int], n: int = 5) -> str:
    ids = sorted(ids)
    head = ", ".join(str(i) for i in ids[:n])
    return head + (f" (and {len(ids) - n} more)" if len(ids) > n else "")


class SparePolicy:
    """Base class: a pool of spares, a metric, and the used/served state."""

    name = ""

    def __init__(
        self,
        metric: str | Metric = "raw_l2",
        *,
        same_class: bool = False,
        group: str = "sequential",
        max_candidates: int = 1024,
        metric_kwargs: dict | None = None,
    ):
        """
        Args:
            metric: a :data:`~healing_pl.healing.metric.TWIN_METRICS` record name or instance.
            same_class: twins come from the request's class (labels required); off: from the whole spare set.
            group: ``"sequential"``, ``"greedy"`` or ``"optimal"``.
            max_candidates: longest candidate list per request in one search.
            metric_kwargs: constructor arguments when ``metric`` is a name.
        """
        if group not in GROUP_MODES:
            raise ValueError(f"unknown group mode {group!r}; choose one of {', '.join(GROUP_MODES)}.")
        if int(max_candidates) < 1:
            raise ValueError(f"max_candidates must be positive, got {max_candidates}.")
        self.metric = get_metric(metric, **(metric_kwargs or {}))
        self.same_class = bool(same_class)
        self.group = group
        self.max_candidates = int(max_candidates)
        self._spare_ids: list[int] | None = None
        self._row_of: dict[int, int] = {}
        self._vectors: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._cov: torch.Tensor | None = None
        self._used: set = set()
        self._served: dict[int, int] = {}

    # ---- pool ----------------------------------------------------------------

    def fit(
        self,
        spare_ids: Ids,
        spare_vectors: ArrayLike | None,
        spare_labels: ArrayLike | None = None,
        *,
        forbidden_ids: Ids | None = None,
    ) -> SparePolicy:
        """Set the spare pool: ids, their metric vectors (rows in id order) and labels.

        ``spare_vectors`` may be None for the ``random`` metric, which reads none.

        ``forbidden_ids`` (e.g. the primary ids: forget and remain sets) must
        not overlap the spares.  Used spares and served requests are kept, so
        ``fit`` may come before or after :meth:`load_state_dict`.
        """
        ids = _ids(spare_ids, "spare ids")
        if spare_vectors is None and self.metric.search_metric == "random":
            spare_vectors = torch.empty(len(ids), 0)  # the random control reads no vectors
        if spare_vectors is None:
            raise ValueError(f"metric {self.metric.name!r} needs spare_vectors.")
        vectors = torch.as_tensor(spare_vectors).detach()
        if vectors.ndim != 2 or vectors.shape[0] != len(ids):
            raise ValueError(
                f"spare_vectors must have one row per spare id ({len(ids)}), got shape {tuple(vectors.shape)}."
            )
        if not ids:
            raise ValueError("the spare set is empty.")
        labels = self._check_labels(spare_labels, len(ids), "spare")
        if forbidden_ids is not None:
            clash = set(ids) & set(_ids(forbidden_ids, "forbidden ids"))
            if clash:
                raise ValueError(
                    f"spare ids {_few(clash)} are also primary (forget/remain) ids; spares must be held out."
                )
        lost = self._used - set(ids)
        if lost:
            raise ValueError(f"used spares {_few(lost)} from the saved state are not in the new spare ids.")
        self._spare_ids = ids
        self._row_of = {i: r for r, i in enumerate(ids)}
        self._vectors = vectors
        self._labels = labels
        self._cov = self.metric.covariance(vectors) if vectors.shape[1] else None
        return self

    @property
    def spare_ids(self) -> list[int]:
        return list(self._spare_ids or [])

    @property
    def used_ids(self) -> list[int]:
        """Spares already given out, sorted."""
        return sorted(self._used)

    @property
    def remaining(self) -> int:
        """Number of spares not used yet."""
        return len(self._spare_ids or []) - len(self._used)

    @property
    def served(self) -> dict[int, int]:
        """``{request_id: twin_id}`` of every earlier round."""
        return dict(self._served)

    def assign(
        self, request_ids: Ids, request_vectors: ArrayLike | None = None, request_labels: ArrayLike | None = None
    ) -> TwinAssignment:
        """Choose a distinct, unused spare for every request; see the subclasses."""
        raise NotImplementedError

    # ---- state -----------------------------------------------------------------

    def state_dict(self) -> dict:
        """Used spares, served requests and pool ids as plain lists and ints."""
        state = {
            "policy": self.name,
            "metric": self.metric.name,
            "spare_ids": self.spare_ids,
            "used": self.used_ids,
            "served": [[r, t] for r, t in self._served.items()],
        }
        if hasattr(self.metric, "state_dict"):
            state["metric_state"] = self.metric.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; the pool vectors come from :meth:`fit`."""
        if state.get("policy") != self.name:
            raise ValueError(f"state is for policy {state.get('policy')!r}, not {self.name!r}.")
        if state.get("metric") != self.metric.name:
            raise ValueError(f"state is for metric {state.get('metric')!r}, not {self.metric.name!r}.")
        used = {int(i) for i in state["used"]}
        if self._spare_ids is not None:
            lost = used - set(self._spare_ids)
            if lost:
                raise ValueError(f"used spares {_few(lost)} in the state are not in the fitted spare ids.")
        self._used = used
        self._served = {int(r): int(t) for r, t in state["served"]}
        if "metric_state" in state and hasattr(self.metric, "load_state_dict"):
            self.metric.load_state_dict(state["metric_state"])

    # ---- helpers -----------------------------------------------------------------

    def _check_labels(self, labels, n: int, what: str) -> torch.Tensor | None:
        if labels is None:
            if self.same_class:
                raise ValueError(f"same_class=True needs {what} labels; pass them or set same_class=False.")
            return None
        t = torch.as_tensor(labels).reshape(-1).cpu()  # bookkeeping next to the CPU masks; tiny
        if t.is_floating_point() or t.shape[0] != n:
            raise ValueError(f"{what} labels must be {n} integers, got {t.dtype} of length {t.shape[0]}.")
        return t.long() if self.same_class else None

    def _requests(self, request_ids, request_vectors, request_labels, vectors_required: bool):
        """Validated (ids, vectors or None, labels or None) of a request round."""
        if self._spare_ids is None:
            raise ValueError(f"{self.name} has no spare pool yet; call fit() first.")
        ids = _ids(request_ids, "request ids")
        in_pool = set(ids) & set(self._row_of)
        if in_pool:
            raise ValueError(f"request ids {_few(in_pool)} are spares; only primary samples can be unlearned.")
        repeat = set(ids) & set(self._served)
        if repeat:
            raise ValueError(f"requests {_few(repeat)} were already served in an earlier round.")
        vectors = None
        if request_vectors is None and self.metric.search_metric == "random":
            request_vectors = torch.empty(len(ids), 0)  # the random control reads no vectors
        if request_vectors is not None:
            vectors = torch.as_tensor(request_vectors).detach()
            if vectors.ndim != 2 or vectors.shape != (len(ids), self._vectors.shape[1]):
                raise ValueError(
                    f"request_vectors must be ({len(ids)}, {self._vectors.shape[1]}), got {tuple(vectors.shape)}."
                )
        elif vectors_required:
            raise ValueError(f"{self.name} needs request_vectors to search the spares.")
        labels = None
        if self.same_class and (vectors is not None or request_labels is not None):
            labels = self._check_labels(request_labels, len(ids), "request")
        return ids, vectors, labels

    def _costs(self, scores: torch.Tensor) -> np.ndarray:
        s = scores.detach().to(torch.float64).cpu().numpy()
        return -s if self.metric.larger_is_better else s

    def _search_free(
        self,
        positions: list[int],
        vectors: torch.Tensor,
        labels: torch.Tensor | None,
        taken: torch.Tensor,
        rows_out: dict[int, tuple[int, float]],
    ) -> None:
        """Nearest free spare for the requests at ``positions``, shared by ``group``.

        Fills ``rows_out[position] = (spare_row, score)`` and marks ``taken``.
        """
        groups = self._check_capacity(positions, labels, taken)
        for cls, pending in groups.items():
            avail = torch.nonzero(self._free(taken, cls)).squeeze(1)
            while pending:
                m = min(len(pending), avail.numel(), self.max_candidates)
                scores, rows = self.metric.rank(
                    vectors[pending], self._vectors[avail.to(self._vectors.device)], m, covariance=self._cov
                )
                scores, rows = scores.cpu(), rows.cpu()  # the final ids and scores: to the bookkeeping
                cand = avail[rows].numpy()
                picks = match(self._costs(scores), cand, np.ones_like(cand, dtype=bool), self.group)
                left = []
                for i, p in enumerate(pending):
                    if picks[i] < 0:
                        left.append(p)
                        continue
                    row = int(cand[i, picks[i]])
                    rows_out[p] = (row, float(scores[i, picks[i]]))
                    taken[row] = True
                pending = left
                avail = avail[~taken[avail]]

    def _free(self, taken: torch.Tensor, cls: int | None) -> torch.Tensor:
        return ~taken if cls is None else ~taken & (self._labels == cls)

    def _check_capacity(self, positions: list[int], labels, taken: torch.Tensor) -> dict[int | None, list[int]]:
        """Requests grouped by class (one group without labels); raises if a
        group has more requests than free spares."""
        groups: dict[int | None, list[int]] = {}
        for p in positions:
            groups.setdefault(None if labels is None else int(labels[p]), []).append(p)
        for cls, group in groups.items():
            free = int(self._free(taken, cls).sum())
            if free < len(group):
                of = "" if cls is None else f" of class {cls}"
                raise ValueError(
                    f"{self.name} needs {len(group)} spares{of} for {len(group)} requests but only "
                    f"{free} remain; enlarge the backup split."
                )
        return groups

    def _taken_mask(self) -> torch.Tensor:
        taken = torch.zeros(len(self._spare_ids), dtype=torch.bool)
        if self._used:
            taken[[self._row_of[i] for i in self._used]] = True
        return taken

    def _commit(self, ids: list[int], rows_out: dict[int, tuple[int, float]]) -> TwinAssignment:
        twins, scores = [], []
        for p, rid in enumerate(ids):
            row, score = rows_out[p]
            twins.append(self._spare_ids[row])
            scores.append(score)
        self._used.update(twins)
        self._served.update(zip(ids, twins))
        return TwinAssignment(self.name, self.metric.name, tuple(ids), tuple(twins), tuple(scores))

    def __repr__(self) -> str:
        pool = "unfitted" if self._spare_ids is None else f"{self.remaining}/{len(self._spare_ids)} spares left"
        return f"{type(self).__name__}(metric={self.metric!r}, group={self.group!r}, {pool})"


class GeneralSpareSet(SparePolicy):
    """Each request takes its nearest remaining spare, which is then used up."""

    name = "general_spare_set"

    def assign(self, request_ids, request_vectors=None, request_labels=None) -> TwinAssignment:
        """Twins for one round of requests.

        Args:
            request_ids: ids of the samples to unlearn (not spares).
            request_vectors: their metric vectors, one row per id.
            request_labels: their labels (required when ``same_class``).

        Raises:
            ValueError: bad input, or fewer free spares (of a class) than requests.
        """
        ids, vectors, labels = self._requests(request_ids, request_vectors, request_labels, True)
        rows_out: dict[int, tuple[int, float]] = {}
        self._search_free(list(range(len(ids))), vectors, labels, self._taken_mask(), rows_out)
        return self._commit(ids, rows_out)


class Twins(SparePolicy):
    """Precomputed surrogates per sample; a request takes its first unused one."""

    name = "twins"

    def __init__(self, metric: str | Metric = "raw_l2", *, k: int = 3, **kwargs):
        """``k``: surrogates kept per sample; other arguments as :class:`SparePolicy`."""
        super().__init__(metric, **kwargs)
        if isinstance(k, bool) or int(k) < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        self.k = int(k)
        self._table: dict[int, tuple[list[int], list[float]]] = {}

    def precompute(self, ids: Ids, vectors: ArrayLike, labels: ArrayLike | None = None) -> None:
        """Find and store the ``k`` nearest unused backups of each sample in ``ids``.

        ``ids`` are the primary samples to protect (all, or an exposed subset);
        calling again adds or refreshes entries.
        """
        if self._spare_ids is None:
            raise ValueError("twins has no backup pool yet; call fit() first.")
        ids = _ids(ids, "ids")
        in_pool = set(ids) & set(self._row_of)
        if in_pool:
            raise ValueError(f"ids {_few(in_pool)} are backups themselves; surrogates are for primary samples.")
        vectors = torch.as_tensor(vectors).detach()
        if vectors.ndim != 2 or vectors.shape != (len(ids), self._vectors.shape[1]):
            raise ValueError(f"vectors must be ({len(ids)}, {self._vectors.shape[1]}), got {tuple(vectors.shape)}.")
        labels = self._check_labels(labels, len(ids), "sample")
        if not ids:
            return
        taken = self._taken_mask()
        scores, rows = self.metric.rank(
            vectors,
            self._vectors,
            self.k,
            covariance=self._cov,
            query_labels=labels,
            candidate_labels=self._labels if labels is not None else None,
            exclude=taken if bool(taken.any()) else None,
        )
        scores, rows = scores.cpu(), rows.cpu()  # the final ids and scores: to the bookkeeping
        spare = torch.as_tensor(self._spare_ids)
        for i, sid in enumerate(ids):
            self._table[sid] = (spare[rows[i]].tolist(), [float(s) for s in scores[i]])

    @property
    def surrogates(self) -> dict[int, list[int]]:
        """``{sample_id: [surrogate ids, best first]}``."""
        return {i: list(t) for i, (t, _) in self._table.items()}

    def assign(self, request_ids, request_vectors=None, request_labels=None) -> TwinAssignment:
        """Twins for one round: each request's first unused precomputed surrogate.

        Requests without precomputed surrogates, or whose surrogates are all
        used, fall back to the nearest free backup when ``request_vectors``
        are given; otherwise a ``ValueError`` names them.
        """
        ids, vectors, labels = self._requests(request_ids, request_vectors, request_labels, False)
        taken = self._taken_mask()
        self._check_capacity(list(range(len(ids))), labels, taken)
        rows_out: dict[int, tuple[int, float]] = {}
        listed = [p for p, rid in enumerate(ids) if rid in self._table]
        if listed:
            cand = np.array([[self._row_of[t] for t in self._table[ids[p]][0]] for p in listed])
            score = torch.tensor([self._table[ids[p]][1] for p in listed], dtype=torch.float64)
            usable = ~taken.numpy()[cand]
            picks = match(self._costs(score), cand, usable, self.group)
            for i, p in enumerate(listed):
                if picks[i] >= 0:
                    row = int(cand[i, picks[i]])
                    rows_out[p] = (row, float(score[i, picks[i]]))
                    taken[row] = True
        missing = [p for p in range(len(ids)) if p not in rows_out]
        if missing:
            if vectors is None:
                unlisted = [ids[p] for p in missing if ids[p] not in self._table]
                if unlisted:
                    raise ValueError(
                        f"samples {_few(unlisted)} have no precomputed surrogates; call precompute() "
                        "for them or pass request_vectors to search the backups."
                    )
                raise ValueError(
                    f"all {self.k} surrogates of samples {_few(ids[p] for p in missing)} are used up; "
                    "precompute more (larger k) or pass request_vectors to search the remaining backups."
                )
            self._search_free(missing, vectors, labels, taken, rows_out)
        return self._commit(ids, rows_out)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["k"] = self.k
        state["surrogates"] = [[i, list(t), list(s)] for i, (t, s) in self._table.items()]
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.k = int(state["k"])
        self._table = {int(i): ([int(x) for x in t], [float(x) for x in s]) for i, t, s in state["surrogates"]}


#: Registry: policy name -> class.
POLICIES: dict[str, Callable[..., SparePolicy]] = {"general_spare_set": GeneralSpareSet, "twins": Twins}


def get_policy(name: str, **kwargs) -> SparePolicy:
    """A policy from its registry name and constructor arguments."""
    if name not in POLICIES:
        raise ValueError(f"unknown spare policy {name!r}; choose one of {', '.join(POLICIES)}.")
    return POLICIES[name](**kwargs)
