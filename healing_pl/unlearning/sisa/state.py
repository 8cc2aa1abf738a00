"""The SISA ensemble (the shard models answering together) and :class:`SisaState`, all SISA needs to go on.

The ensemble answers by aggregating its shard models' outputs (:func:`aggregate`): a majority vote,
the mean softmax, or (the paper's protocol, :mod:`.protocol`) a vote weighted by each shard's held-out
accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from healing_pl.models.classifier import Classifier
from healing_pl.unlearning.sisa.common import _ids

AGGREGATIONS = ("vote", "softmax")
#: what an ensemble may use: the aggregations one asks for, and the paper protocol's weighted vote
ENSEMBLE_AGGREGATIONS = (*AGGREGATIONS, "weighted_vote")

Assignment = list[list[Tensor]]  # assignment[shard][slice] -> pool ids


# ----------------------------------------------------------------- ensemble
def aggregate(logits: Tensor, how: str = "vote", weights: Tensor | None = None) -> Tensor:
    """Aggregate shard outputs ``logits`` of shape (S, B, C) into (B, C) scores.

    ``vote``: the vote count of every class (each shard votes for its argmax),
    so the argmax is the majority class, ties going to the lowest class.
    ``softmax``: the mean over shards of the softmax probabilities.
    ``weighted_vote``: shard ``s``'s vote counts ``weights[s]`` (the paper's
    protocol: its held-out accuracy); ties go to the lowest class.
    """
    if how == "vote":
        votes = logits.argmax(-1)  # (S, B)
        return F.one_hot(votes, logits.shape[-1]).sum(0).to(logits.dtype)
    if how == "softmax":
        return logits.softmax(-1).mean(0)
    if how == "weighted_vote":
        if weights is None or weights.numel() != logits.shape[0]:
            raise ValueError("the weighted SISA vote needs one weight per shard (its held-out accuracy).")
        w = weights.to(device=logits.device, dtype=logits.dtype).reshape(-1, 1, 1)
        return (F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype) * w).sum(0)
    raise ValueError(f"unknown SISA aggregation '{how}'; choose one of {', '.join(AGGREGATIONS)}.")


class SisaEnsemble(nn.Module):
    """``S`` shard models answering together.

    ``forward(x)`` returns aggregated, logits-like scores (see :func:`aggregate`),
    so ``argmax`` is the ensemble's prediction and the module works with
    :func:`healing_pl.models.classifier.evaluate`.  ``embed(x)`` is the mean of
    the shard embeddings.

    Args:
        hparams: the Classifier hyperparameters; each shard is ``Classifier(**hparams)``.
        shards: the number of shard models.
        aggregation: ``vote`` (majority vote) or ``softmax`` (mean probabilities).

    Attributes:
        state: the :class:`SisaState` this ensemble answers for, when SISA unlearning produced it (healing
            fine-tunes the affected shards from it); None for an ensemble built on its own.
    """

    state: SisaState | None = None
    #: the weight of each shard's vote (``weighted_vote``: the held-out accuracies), else None
    vote_weights: Tensor | None = None

    def __init__(self, hparams: Mapping, shards: int = 3, aggregation: str = "vote"):
        super().__init__()
        if shards < 1:
            raise ValueError(f"a SISA ensemble needs at least one shard, got shards={shards}.")
        self.shard_hparams = _clean_hparams(hparams)
        self.models = nn.ModuleList(Classifier(**self.shard_hparams) for _ in range(shards))
        self.aggregation = aggregation

    @classmethod
    def from_models(
        cls, models: Sequence[nn.Module], aggregation: str = "vote", weights: Tensor | None = None
    ) -> SisaEnsemble:
        """An ensemble over already built shard models (kept as they are, not copied)."""
        if len(models) == 0:
            raise ValueError("a SISA ensemble needs at least one shard model.")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        hp = getattr(models[0], "hparams", {})
        self.shard_hparams = _clean_hparams(hp) if isinstance(hp, Mapping) else {}
        self.models = nn.ModuleList(models)
        self.aggregation = aggregation
        self.vote_weights = weights
        return self

    @property
    def aggregation(self) -> str:
        return self._aggregation

    @aggregation.setter
    def aggregation(self, how: str) -> None:
        if how not in ENSEMBLE_AGGREGATIONS:
            raise ValueError(f"unknown SISA aggregation '{how}'; choose one of {', '.join(AGGREGATIONS)}.")
        self._aggregation = how

    @property
    def num_shards(self) -> int:
        return len(self.models)

    def shard_logits(self, x: Tensor) -> Tensor:
        """The logits of every shard model, shape (S, B, C)."""
        return torch.stack([m(x) for m in self.models])

    def forward(self, x: Tensor) -> Tensor:
        return aggregate(self.shard_logits(x), self.aggregation, self.vote_weights)

    def embed(self, x: Tensor) -> Tensor:
        """The mean of the shard models' embeddings."""
        return torch.stack([m.embed(x) for m in self.models]).mean(0)


def _clean_hparams(hparams: Mapping) -> dict:
    return {k: v for k, v in dict(hparams).items() if not str(k).startswith("_")}


# -------------------------------------------------------------------- state
@dataclass
class SisaState:
    """Everything SISA needs to answer, to unlearn and to heal.

    Attributes:
        ensemble: the shard models and the aggregation.
        assignment: ``assignment[s][r]`` is the id tensor of slice ``r`` of shard ``s`` (primary ids only).
        checkpoints: ``checkpoints[s][k]`` is ``{"model", "optimizer"}`` state dicts (CPU tensors) of
            shard ``s`` after its first ``k`` slices (``k = 0``: the initial weights), so
            retraining from slice ``r`` resumes from ``checkpoints[s][r]``.
        hparams: the shard Classifier hyperparameters.
        seed, epochs_per_slice, batch_size: the training recipe (needed to retrain).
        train_time: seconds spent training all shards; shard_times: per shard.
        deleted: the ids unlearned so far (primary ids and twins), request after request.
        deleted_shards: the shard each id of ``deleted`` was unlearned from.
        history: the ``info`` dict of every unlearning step.
        checkpoint_dir: where stage checkpoints are also written, if anywhere.
        device: where the shard models live and train.
        dtype: the floating dtype of the shard models.
        heals: ``heals[s]`` lists the heal steps of shard ``s`` in order (see :func:`heal_sisa`):
            ``{"twins": ids, "epochs", "lr", "seed", "model": state dict after the step}``.
        protocol: ``bourtoule`` or ``paper`` (:mod:`.protocol`).
        holdout: ``paper``: ``holdout[s]`` holds shard ``s``'s held-out ids (never trained on; their
            accuracy weighs the shard's vote); empty lists for ``bourtoule``.
    """

    ensemble: SisaEnsemble
    assignment: Assignment
    checkpoints: list[list[dict]]
    hparams: dict
    seed: int
    epochs_per_slice: int
    batch_size: int
    train_time: float
    shard_times: list[float]
    deleted: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    history: list[dict] = field(default_factory=list)
    checkpoint_dir: str | None = None
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    heals: list[list[dict]] = field(default_factory=list)
    deleted_shards: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    protocol: str = "bourtoule"
    holdout: list[Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.heals:
            self.heals = [[] for _ in self.assignment]
        if not self.holdout:
            self.holdout = [torch.zeros(0, dtype=torch.long) for _ in self.assignment]

    @property
    def cumulative(self) -> bool:
        """Whether stage ``r`` trains on slices ``0..r`` (bourtoule) or on slice ``r`` alone (paper)."""
        return self.protocol != "paper"

    @property
    def num_shards(self) -> int:
        return len(self.assignment)

    @property
    def num_slices(self) -> int:
        return len(self.assignment[0])

    def shard_ids(self, shard: int) -> Tensor:
        """All primary ids of one shard, slice after slice (its twins: :meth:`twin_ids`)."""
        return torch.cat(self.assignment[shard])

    @property
    def ids(self) -> Tensor:
        """All primary ids the ensemble is currently trained on (the twins it was healed with: :meth:`twin_ids`)."""
        return torch.cat([self.shard_ids(s) for s in range(self.num_shards)])

    def twin_ids(self, shard: int | None = None) -> Tensor:
        """The twins one shard (or, with ``shard=None``, the ensemble) is healed with, in heal order."""
        shards = range(self.num_shards) if shard is None else [shard]
        return torch.cat([torch.zeros(0, dtype=torch.long)] + [st["twins"] for s in shards for st in self.heals[s]])

    def train_ids(self, shard: int) -> Tensor:
        """Everything shard ``shard`` is trained on: its primary ids slice after slice, then its twins."""
        return torch.cat([self.shard_ids(shard), self.twin_ids(shard)])

    def locate_holdout(self, ids) -> Tensor:
        """The shard holding each id as a held-out id (paper protocol); -1 elsewhere."""
        ids = _ids(ids)
        shard = torch.full_like(ids, -1)
        for s, held in enumerate(self.holdout):
            shard[torch.isin(ids, held)] = s
        return shard

    def locate(self, ids) -> tuple[Tensor, Tensor]:
        """The (shard, slice) of each primary id; -1 for ids the assignment does not hold."""
        ids = _ids(ids)
        shard = torch.full_like(ids, -1)
        slc = torch.full_like(ids, -1)
        for s, slices in enumerate(self.assignment):
            for r, sl in enumerate(slices):
                hit = torch.isin(ids, sl)
                shard[hit], slc[hit] = s, r
        return shard, slc

    def locate_twins(self, ids) -> tuple[Tensor, Tensor]:
        """The (shard, heal step) of each twin id; -1 for ids that are not twins of this state."""
        ids = _ids(ids)
        shard = torch.full_like(ids, -1)
        step = torch.full_like(ids, -1)
        for s, steps in enumerate(self.heals):
            for k, st in enumerate(steps):
                hit = torch.isin(ids, st["twins"])
                shard[hit], step[hit] = s, k
        return shard, step
