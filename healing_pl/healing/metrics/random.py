"""The control: twins drawn uniformly at random from the spares."""

from __future__ import annotations

import numpy as np
import torch

from healing_pl.healing.metric import TWIN_METRICS, Metric
from healing_pl.healing.representations import id_list


@TWIN_METRICS.register
class RandomMetric(Metric):
    """The control: k distinct candidates drawn uniformly at random per query.

    Reproducible: a fresh metric with the same ``seed`` gives the same draws
    for the same sequence of calls (the generator advances between calls and
    is saved, as plain ints, by ``state_dict()``).  Class restriction and
    ``exclude`` are respected; scores are all 0.  It needs no vectors:
    ``representations()`` returns ``(len(ids), 0)`` placeholders and
    ``rank()`` only reads the number of rows.

    Args:
        seed: seed of the draws; None: the run's twins.seed (0 for a metric used on its own).
    """

    name, label, control = "random", "T-random", True
    needs_features, search_metric, larger_is_better = False, "random", False

    def __init__(self, seed: int | None = None):
        super().__init__()
        self.seed = None if seed is None else int(seed)
        self.generator = torch.Generator().manual_seed(0 if self.seed is None else self.seed)

    def representations(self, dataset, ids, model=None, batch_size=256, *, return_labels=False):
        ids = id_list(ids)
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
        self.seed = None if state["seed"] is None else int(state["seed"])
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
