"""The two SISA protocols: Bourtoule et al.'s (the default) and the paper's authors' (``protocol="paper"``).

``bourtoule``
    Stage ``r`` of a shard trains on the union of its slices ``0..r`` for ``epochs_per_slice`` epochs
    (:mod:`.epochs`); the shard models answer by a plain majority vote or the mean softmax.

``paper`` (the paper's authors' code)
    * 10% of every slice is held out (:data:`HOLDOUT_FRACTION`, ``ceil(0.1 n)`` of a slice of ``n``
      samples, chosen by a seeded permutation, :func:`split_holdout`): a shard trains on the other 90%
      only, and its held-out samples (those of all its slices) measure it;
    * the slices are disjoint stages: stage ``r`` trains on slice ``r`` alone (its 90%) for ``N``
      epochs (the baseline's epochs), continuing from the weights and Adam state of stage ``r - 1``;
    * the shards answer by an accuracy-weighted vote (:func:`~healing_pl.unlearning.sisa.aggregate` with
      ``"weighted_vote"``): each shard's vote counts its accuracy on its held-out samples
      (:func:`holdout_accuracies`; 0 for a shard whose held-out samples were all unlearned).

Unlearning stays exact in both: a deleted training id restarts its shard from the checkpoint before
its slice (the stages before it saw the same data), and a deleted held-out id leaves it out of its
shard's held-out set, whose accuracy (the shard's vote weight) is measured again.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from healing_pl.unlearning.sisa.common import _ids, seed_for
from healing_pl.unlearning.sisa.state import Assignment

#: the SISA protocols (see the module docstring)
PROTOCOLS = ("bourtoule", "paper")
#: the share of every slice the paper's protocol holds out to weigh its shard's vote
HOLDOUT_FRACTION = 0.1


def split_holdout(assignment: Assignment, seed: int, fraction: float = HOLDOUT_FRACTION):
    """``(train, holdout)``: every slice ``assignment[s][r]`` split by a seeded permutation into its training
    part (``train[s][r]``) and ``ceil(fraction * n)`` held-out ids; ``holdout[s]`` joins those of shard ``s``'s
    slices.  Ids are sorted within each part."""
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must lie in (0, 1), got {fraction}.")
    train, holdout = [], []
    for s, shard in enumerate(assignment):
        parts, held = [], []
        for r, sl in enumerate(shard):
            sl = _ids(sl)
            k = math.ceil(fraction * sl.numel())
            gen = torch.Generator().manual_seed(seed_for("holdout", seed, s, r))
            order = sl[torch.randperm(sl.numel(), generator=gen)]
            held.append(order[:k].sort().values)
            parts.append(order[k:].sort().values)
        train.append(parts)
        holdout.append(torch.cat(held).sort().values if held else torch.zeros(0, dtype=torch.long))
    return train, holdout


@torch.no_grad()
def holdout_accuracies(models, holdout: list[Tensor], datamodule, batch_size: int) -> Tensor:
    """The accuracy of each shard model on its own held-out ids (float64, 0 where a shard has none left)."""
    out = []
    for model, ids in zip(models, holdout, strict=True):
        ids = _ids(ids)
        if ids.numel() == 0:
            out.append(0.0)
            continue
        out.append(_accuracy(model, datamodule.loader(ids, batch_size=batch_size)))
    return torch.tensor(out, dtype=torch.float64)


def _accuracy(model: nn.Module, loader) -> float:
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    right = n = 0
    for x, y in loader:
        x, y = x.to(device=param.device, dtype=param.dtype), y.to(param.device)
        right += int((model(x).argmax(-1) == y).sum())
        n += len(y)
    model.train(was_training)
    return right / n


def reweigh(state, datamodule):
    """``state`` with its ensemble's vote weighted by the held-out accuracies (paper protocol; else unchanged)."""
    if state.protocol != "paper":
        return state
    weights = holdout_accuracies(state.ensemble.models, state.holdout, datamodule, state.batch_size)
    state.ensemble.aggregation = "weighted_vote"
    state.ensemble.vote_weights = weights
    return state
