"""SISA: Sharded, Isolated, Sliced, Aggregated training (Bourtoule et al. 2021, "Machine Unlearning").

The primary set is split by a seeded permutation into ``S`` disjoint,
near-equal *shards*, and every shard into ``R`` near-equal *slices*.  One
model per shard is trained in isolation, incrementally: stage ``r``
(0-based) trains on the union of slices ``0..r`` for ``epochs_per_slice``
epochs, and a checkpoint (model and Adam state) is kept after every stage.
The ensemble answers by aggregating the shard models (majority vote or mean
softmax).

Unlearning a set of ids retrains only the shards that hold one of them, from
the checkpoint taken *before* the first slice holding a deleted id (the
initial weights when that is slice 0), with the deleted ids removed from
their slices.  The other shards are not touched.

Exactness
---------
The result of :func:`unlearn_sisa` is bit-for-bit equal (on the same machine
and thread settings) to :func:`train_sisa` run from scratch on the same
assignment minus the deleted ids.  This holds because nothing in a stage
depends on what happened before it except the model/optimizer state it starts
from:

* a shard's initial weights come from ``seed_for("init", seed, shard)``;
* stage ``r`` of shard ``s`` shuffles its data with a ``torch.Generator``
  seeded from ``seed_for("stage", seed, s, r)`` and trains under a forked
  global RNG seeded the same way (dropout), over the ids
  ``cat(slices[0..r])``, i.e. the shuffle depends only on (seed, shard,
  stage) and the ids in the stage;
* the optimizer state travels in the checkpoint, so resuming at stage ``r``
  continues exactly where a from-scratch run would be.

Deleting ids from slice ``r`` leaves the ids of stages ``0..r-1`` unchanged,
so their checkpoints are those a from-scratch run would produce.

Public API: :class:`SisaEnsemble`, :func:`aggregate`, :class:`SisaState`,
:func:`make_assignment`, :func:`train_sisa`, :func:`unlearn_sisa`,
:func:`fit_plain` (the plain training loop, also used for the naive
baseline), :func:`seed_for`.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from healing_pl.models.classifier import Classifier

AGGREGATIONS = ("vote", "softmax")

Assignment = list[list[Tensor]]  # assignment[shard][slice] -> pool ids


# ---------------------------------------------------------------------- seeds
def seed_for(*parts) -> int:
    """A 63-bit seed derived from ``parts`` (e.g. ``("stage", seed, shard, stage)``), stable across runs."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _fork_rng(device: torch.device):
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


# ----------------------------------------------------------------- ensemble
def aggregate(logits: Tensor, how: str = "vote") -> Tensor:
    """Aggregate shard outputs ``logits`` of shape (S, B, C) into (B, C) scores.

    ``vote``: the vote count of every class (each shard votes for its argmax),
    so the argmax is the majority class, ties going to the lowest class.
    ``softmax``: the mean over shards of the softmax probabilities.
    """
    if how == "vote":
        votes = logits.argmax(-1)  # (S, B)
        return F.one_hot(votes, logits.shape[-1]).sum(0).to(logits.dtype)
    if how == "softmax":
        return logits.softmax(-1).mean(0)
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
    """

    def __init__(self, hparams: Mapping, shards: int = 3, aggregation: str = "vote"):
        super().__init__()
        if shards < 1:
            raise ValueError(f"a SISA ensemble needs at least one shard, got shards={shards}.")
        self.shard_hparams = _clean_hparams(hparams)
        self.models = nn.ModuleList(Classifier(**self.shard_hparams) for _ in range(shards))
        self.aggregation = aggregation

    @classmethod
    def from_models(cls, models: Sequence[nn.Module], aggregation: str = "vote") -> "SisaEnsemble":
        """An ensemble over already built shard models (kept as they are, not copied)."""
        if len(models) == 0:
            raise ValueError("a SISA ensemble needs at least one shard model.")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        hp = getattr(models[0], "hparams", {})
        self.shard_hparams = _clean_hparams(hp) if isinstance(hp, Mapping) else {}
        self.models = nn.ModuleList(models)
        self.aggregation = aggregation
        return self

    @property
    def aggregation(self) -> str:
        return self._aggregation

    @aggregation.setter
    def aggregation(self, how: str) -> None:
        if how not in AGGREGATIONS:
            raise ValueError(f"unknown SISA aggregation '{how}'; choose one of {', '.join(AGGREGATIONS)}.")
        self._aggregation = how

    @property
    def num_shards(self) -> int:
        return len(self.models)

    def shard_logits(self, x: Tensor) -> Tensor:
        """The logits of every shard model, shape (S, B, C)."""
        return torch.stack([m(x) for m in self.models])

    def forward(self, x: Tensor) -> Tensor:
        return aggregate(self.shard_logits(x), self.aggregation)

    def embed(self, x: Tensor) -> Tensor:
        """The mean of the shard models' embeddings."""
        return torch.stack([m.embed(x) for m in self.models]).mean(0)


def _clean_hparams(hparams: Mapping) -> dict:
    return {k: v for k, v in dict(hparams).items() if not str(k).startswith("_")}


# -------------------------------------------------------------------- state
@dataclass
class SisaState:
    """Everything SISA needs to answer and to unlearn.

    Attributes:
        ensemble: the shard models and the aggregation.
        assignment: ``assignment[s][r]`` is the id tensor of slice ``r`` of shard ``s``.
        checkpoints: ``checkpoints[s][k]`` is ``{"model", "optimizer"}`` state dicts of
            shard ``s`` after its first ``k`` slices (``k = 0``: the initial weights), so
            retraining from slice ``r`` resumes from ``checkpoints[s][r]``.
        hparams: the shard Classifier hyperparameters.
        seed, epochs_per_slice, batch_size: the training recipe (needed to retrain).
        train_time: seconds spent training all shards; shard_times: per shard.
        deleted: the ids unlearned so far.
        history: the ``info`` dict of every unlearning step.
        checkpoint_dir: where stage checkpoints are also written, if anywhere.
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

    @property
    def num_shards(self) -> int:
        return len(self.assignment)

    @property
    def num_slices(self) -> int:
        return len(self.assignment[0])

    def shard_ids(self, shard: int) -> Tensor:
        """All ids of one shard, slice after slice."""
        return torch.cat(self.assignment[shard])

    @property
    def ids(self) -> Tensor:
        """All ids the ensemble is currently trained on."""
        return torch.cat([self.shard_ids(s) for s in range(self.num_shards)])

    def locate(self, ids) -> tuple[Tensor, Tensor]:
        """The (shard, slice) of each id; -1 for ids the state does not hold."""
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        shard = torch.full_like(ids, -1)
        slc = torch.full_like(ids, -1)
        for s, slices in enumerate(self.assignment):
            for r, sl in enumerate(slices):
                hit = torch.isin(ids, sl)
                shard[hit], slc[hit] = s, r
        return shard, slc


# --------------------------------------------------------------- assignment
def make_assignment(ids, shards: int, slices: int, seed: int = 0) -> Assignment:
    """Split ``ids`` by a seeded permutation into ``shards`` disjoint near-equal shards of
    ``slices`` near-equal slices each (ids sorted within a slice)."""
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if shards < 1 or slices < 1:
        raise ValueError(f"SISA needs at least one shard and one slice, got shards={shards}, slices={slices}.")
    if ids.numel() < shards * slices:
        raise ValueError(f"{ids.numel()} samples cannot fill {shards} shards x {slices} slices (one sample each at least).")
    order = ids[torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(seed_for("assign", seed)))]
    return [[sl.sort().values for sl in torch.tensor_split(shard, slices)] for shard in torch.tensor_split(order, shards)]


def _check_assignment(assignment, datamodule) -> Assignment:
    if not assignment or not all(len(sh) for sh in assignment):
        raise ValueError("the SISA assignment must hold at least one shard with at least one slice.")
    slices = len(assignment[0])
    if any(len(sh) != slices for sh in assignment):
        raise ValueError(f"every shard of the SISA assignment must have the same number of slices, got {[len(sh) for sh in assignment]}.")
    out = [[torch.as_tensor(sl, dtype=torch.long).flatten() for sl in sh] for sh in assignment]
    for s, sh in enumerate(out):
        if sum(sl.numel() for sl in sh) == 0:
            raise ValueError(f"shard {s} of the SISA assignment is empty.")
    datamodule.check_members(torch.cat([torch.cat(sh) for sh in out]), "primary", "SISA assignment")
    return out


# ----------------------------------------------------------------- training
def _adam(model: nn.Module) -> torch.optim.Optimizer:
    hp = model.hparams
    return torch.optim.Adam(model.parameters(), lr=hp["lr"], weight_decay=hp.get("weight_decay", 0.0))


def _fresh_model(hparams: dict, init_seed: int, device: torch.device) -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = Classifier(**hparams)
    return model.to(device)


def fit_plain(model: nn.Module, datamodule, ids, *, epochs: int, seed: int, batch_size: int | None = None,
              optimizer: torch.optim.Optimizer | None = None, device=None, progress: bool = False) -> torch.optim.Optimizer:
    """Train ``model`` on the samples ``ids`` for ``epochs`` epochs with a plain, deterministic loop.

    Cross-entropy, Adam with the model's ``lr`` (unless ``optimizer`` is given,
    e.g. one resumed from a checkpoint), a shuffled loader whose generator is
    seeded with ``seed``, and the global RNG (dropout) forked and seeded with
    ``seed`` too, so the caller's RNG is untouched.  Returns the optimizer.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    optimizer = optimizer or _adam(model)
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids.numel() == 0 or epochs <= 0:
        return optimizer
    batch_size = batch_size or datamodule.hparams.batch_size
    loader = datamodule.loader(ids, shuffle=True, batch_size=batch_size, seed=seed)
    was_training = model.training
    model.train()
    with _fork_rng(device):
        torch.manual_seed(seed)
        for _ in tqdm(range(epochs), desc="epochs", leave=False, disable=not progress):
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                loss = F.cross_entropy(model(x), y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"the training loss became {loss.item()}: the hyperparameters make the model diverge "
                        f"(lower the learning rate, lr={model.hparams['lr'] if hasattr(model, 'hparams') else '?'})."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    model.train(was_training)
    return optimizer


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict())}


def _restore(hparams: dict, init_seed: int, ckpt: dict, device: torch.device) -> tuple[Classifier, torch.optim.Optimizer]:
    model = _fresh_model(hparams, init_seed, device)
    model.load_state_dict(ckpt["model"])
    optimizer = _adam(model)
    # deep copy: load_state_dict may alias the saved tensors, which Adam then updates in place
    optimizer.load_state_dict(copy.deepcopy(ckpt["optimizer"]))
    return model, optimizer


def _save(ckpt: dict, checkpoint_dir: str | None, shard: int, k: int, slices: list[Tensor]) -> None:
    if checkpoint_dir is None:
        return
    os.makedirs(checkpoint_dir, exist_ok=True)
    torch.save({**ckpt, "shard": shard, "stage": k, "ids": torch.cat(slices[:k]) if k else torch.zeros(0, dtype=torch.long)},
               os.path.join(checkpoint_dir, f"shard{shard}_stage{k}.pt"))


def _train_stages(model, optimizer, datamodule, slices: list[Tensor], start: int, shard: int, *, seed: int,
                  epochs_per_slice: int, batch_size: int, device: torch.device, ckpts: list[dict],
                  checkpoint_dir: str | None, bar) -> None:
    """Train stages ``start..R-1`` of one shard, appending a checkpoint after each."""
    for r in range(start, len(slices)):
        bar.set_postfix(shard=shard, slice=r)
        fit_plain(model, datamodule, torch.cat(slices[:r + 1]), epochs=epochs_per_slice,
                  seed=seed_for("stage", seed, shard, r), batch_size=batch_size, optimizer=optimizer, device=device)
        ckpts.append(_snapshot(model, optimizer))
        _save(ckpts[-1], checkpoint_dir, shard, r + 1, slices)
        bar.update(1)


def train_sisa(hparams: Mapping, datamodule, *, shards: int | None = None, slices: int | None = None, epochs: int = 10,
               epochs_per_slice: int | None = None, seed: int = 0, aggregation: str = "vote",
               assignment: Assignment | None = None, batch_size: int | None = None, device="cpu",
               checkpoint_dir: str | None = None, progress: bool = False) -> SisaState:
    """Train a SISA ensemble on the primary set of ``datamodule``.

    Args:
        hparams: the Classifier hyperparameters of every shard model.
        datamodule: a HealingDataModule (its primary set is sharded; its loader serves the samples).
        shards, slices: S and R (default 3 and 5; taken from ``assignment`` when given).
        epochs: the baseline's epoch budget; each stage trains ``max(1, round(epochs / R))``
            epochs unless ``epochs_per_slice`` says otherwise.
        seed: seeds the assignment, the initial weights and every stage's shuffle.
        aggregation: ``vote`` or ``softmax``.
        assignment: an explicit ``assignment[shard][slice]`` of primary ids (e.g. a previous
            assignment minus deleted ids, to retrain from scratch).
        batch_size: training batch size (default: the datamodule's).
        device: where to train.
        checkpoint_dir: also write every stage checkpoint there.
        progress: show a progress bar.
    """
    hparams = _clean_hparams(hparams)
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown SISA aggregation '{aggregation}'; choose one of {', '.join(AGGREGATIONS)}.")
    if epochs < 1 and epochs_per_slice is None:
        raise ValueError(f"epochs must be at least 1, got {epochs}.")
    if assignment is None:
        shards, slices = 3 if shards is None else shards, 5 if slices is None else slices
        assignment = make_assignment(datamodule.primary_ids, shards, slices, seed)
    else:
        assignment = _check_assignment(assignment, datamodule)
        if shards is not None and shards != len(assignment) or slices is not None and slices != len(assignment[0]):
            raise ValueError(f"the assignment has {len(assignment)} shards x {len(assignment[0])} slices, "
                             f"but shards={shards}, slices={slices} were asked for.")
    n_slices = len(assignment[0])
    eps = max(1, round(epochs / n_slices)) if epochs_per_slice is None else int(epochs_per_slice)
    if eps < 1:
        raise ValueError(f"epochs_per_slice must be at least 1, got {epochs_per_slice}.")
    batch_size = int(batch_size or datamodule.hparams.batch_size)
    device = torch.device(device)
    ensemble_models, checkpoints, shard_times = [], [], []
    t_all = time.perf_counter()
    with tqdm(total=len(assignment) * n_slices, desc="SISA train", disable=not progress) as bar:
        for s, sl in enumerate(assignment):
            t0 = time.perf_counter()
            model = _fresh_model(hparams, seed_for("init", seed, s), device)
            optimizer = _adam(model)
            ckpts = [_snapshot(model, optimizer)]
            _save(ckpts[0], checkpoint_dir, s, 0, sl)
            _train_stages(model, optimizer, datamodule, sl, 0, s, seed=seed, epochs_per_slice=eps,
                          batch_size=batch_size, device=device, ckpts=ckpts, checkpoint_dir=checkpoint_dir, bar=bar)
            ensemble_models.append(model)
            checkpoints.append(ckpts)
            shard_times.append(time.perf_counter() - t0)
    ensemble = SisaEnsemble.from_models(ensemble_models, aggregation).eval()
    return SisaState(ensemble=ensemble, assignment=assignment, checkpoints=checkpoints, hparams=hparams, seed=seed,
                     epochs_per_slice=eps, batch_size=batch_size, train_time=time.perf_counter() - t_all,
                     shard_times=shard_times, checkpoint_dir=checkpoint_dir, device=str(device))


# --------------------------------------------------------------- unlearning
def unlearn_sisa(state: SisaState, forget_ids, datamodule, progress: bool = False) -> tuple[SisaState, dict]:
    """Unlearn ``forget_ids`` exactly: retrain only the shards holding one of them.

    Each affected shard resumes from the checkpoint before its first slice holding a
    deleted id, with the deleted ids removed from their slices.  Unaffected shards keep
    the very same model objects and checkpoints.  ``state`` itself is not changed.

    Returns ``(new_state, info)`` with ``info``: ``affected_shards`` (list),
    ``restart_slice`` ({shard: 0-based slice}), ``removed`` ({shard: count}),
    ``stages_retrained``, ``samples_retrained`` (sample-epochs) and ``time`` (seconds).
    """
    forget = datamodule.check_members(forget_ids, "primary", "forget set")
    shard_of, slice_of = state.locate(forget)
    gone = forget[shard_of < 0]
    if gone.numel():
        raise ValueError(f"the forget set holds {gone.numel()} id(s) this SISA model no longer trains on "
                         f"(already unlearned, e.g. {gone[:5].tolist()}).")
    affected = sorted(set(shard_of.tolist()))
    new_assignment = list(state.assignment)
    for s in affected:
        new_slices = [sl[~torch.isin(sl, forget)] for sl in state.assignment[s]]
        if sum(sl.numel() for sl in new_slices) == 0:
            raise ValueError(f"unlearning would empty shard {s} (the forget set holds all its "
                             f"{state.shard_ids(s).numel()} samples); SISA cannot keep a shard without data.")
        new_assignment[s] = new_slices
    restart = {s: int(slice_of[shard_of == s].min()) for s in affected}
    R, eps, device = state.num_slices, state.epochs_per_slice, torch.device(state.device)
    stages = sum(R - restart[s] for s in affected)
    samples = sum(eps * sum(sum(sl.numel() for sl in new_assignment[s][:r + 1]) for r in range(restart[s], R))
                  for s in affected)

    models = list(state.ensemble.models)
    checkpoints = list(state.checkpoints)
    t0 = time.perf_counter()
    with tqdm(total=stages, desc="SISA unlearn", disable=not progress) as bar:
        for s in affected:
            r = restart[s]
            model, optimizer = _restore(state.hparams, seed_for("init", state.seed, s), state.checkpoints[s][r], device)
            ckpts = list(state.checkpoints[s][:r + 1])
            _train_stages(model, optimizer, datamodule, new_assignment[s], r, s, seed=state.seed,
                          epochs_per_slice=eps, batch_size=state.batch_size, device=device, ckpts=ckpts,
                          checkpoint_dir=state.checkpoint_dir, bar=bar)
            models[s] = model.eval()
            checkpoints[s] = ckpts
    elapsed = time.perf_counter() - t0
    info = {"affected_shards": affected, "restart_slice": restart,
            "removed": {s: int((shard_of == s).sum()) for s in affected},
            "stages_retrained": stages, "samples_retrained": samples, "time": elapsed}
    ensemble = SisaEnsemble.from_models(models, state.ensemble.aggregation).eval()
    new_state = replace(state, ensemble=ensemble, assignment=new_assignment, checkpoints=checkpoints,
                        deleted=torch.cat([state.deleted, forget.sort().values]), history=[*state.history, info])
    return new_state, info
