"""SISA: Sharded, Isolated, Sliced, Aggregated training (Bourtoule et al. 2021, "Machine Unlearning").

The primary set is split by a seeded permutation into ``S`` disjoint,
near-equal *shards*, and every shard into ``R`` near-equal *slices*.  One
model per shard is trained in isolation, incrementally: stage ``r``
(0-based) trains on the union of slices ``0..r`` for ``epochs_per_slice``
epochs, and a checkpoint (model and Adam state) is kept after every stage.
The ensemble answers by aggregating the shard models (majority vote or mean
softmax).

Epochs per slice
----------------
Stage ``r`` sees ``(r + 1) / R`` of the shard, so with ``e`` epochs per stage a
sample of slice ``j`` is trained on ``(R - j) e`` times and a shard's samples on
``e (R + 1) / 2`` times on average.  :func:`slice_epochs` offers two rules
for the baseline's ``N`` epochs (:data:`EPOCH_RULES`):

* ``passes`` (the default): ``e = ceil(2N / (R + 1))``, the smallest whole
  count with at least the baseline's ``N`` passes per sample.  Bourtoule et
  al. keep the training time of slicing equal to that without it the same
  way: their public code (cleverhans-lab/machine-unlearning, ``sisa.py``)
  trains slice stages for ``2N / (R + 1)`` epochs on average.  For N = 10,
  R = 5: 4 epochs per stage, 12 passes (the baseline's 10, plus rounding);
  N = 5: 2 (6 passes); N = 3: 1 (3 passes).
* ``per_slice``: ``e = max(1, round(N / R))``, the former rule: for N = 10,
  R = 5, 2 epochs per stage, i.e. 6 passes per sample against the baseline's
  10 (the shards are undertrained).

Unlearning a set of ids retrains only the shards that hold one of them, from
the checkpoint taken *before* the first slice holding a deleted id (the
initial weights when that is slice 0), with the deleted ids removed from
their slices.  The other shards are not touched.

Exactness
---------
The result of :func:`unlearn_sisa` is bit-for-bit equal (on the same machine,
device and thread settings) to :func:`train_sisa` run from scratch on the same
assignment minus the deleted ids.  This holds because nothing in a stage
depends on what happened before it except the model/optimizer state it starts
from:

* a shard's initial weights come from ``seed_for("init", seed, shard)`` (drawn
  on the CPU, then moved to the device and cast to the dtype);
* stage ``r`` of shard ``s`` shuffles its data with a ``torch.Generator``
  seeded from ``seed_for("stage", seed, s, r)`` and trains under a forked
  global RNG seeded the same way (dropout), over the ids
  ``cat(slices[0..r])``, i.e. the shuffle depends only on (seed, shard,
  stage) and the ids in the stage;
* the optimizer state travels in the checkpoint, so resuming at stage ``r``
  continues exactly where a from-scratch run would be.

Deleting ids from slice ``r`` leaves the ids of stages ``0..r-1`` unchanged,
so their checkpoints are those a from-scratch run would produce.

Shards as separate jobs
-----------------------
:func:`train_sisa_shard` trains one shard of the seeded assignment and writes
``directory/shard{i}.pt`` atomically, so a cluster can train the ``S`` shards
in ``S`` jobs; :func:`load_sisa` then aggregates the files into a
:class:`SisaState`.  ``train_sisa(..., directory=...)`` goes through the same
per-shard code (skipping shards whose file exists with the same recipe), so
both routes give the same ensemble bit for bit.  A shard file is a dict of
tensors and plain values (it loads with ``torch.load(..., weights_only=True)``)::

    {"format": "healing_pl.sisa_shard/1",
     "shard": i,                                  # 0-based shard index
     "slices": [Tensor, ...],                     # the R id tensors of this shard's slices
     "checkpoints": [{"model": {name: Tensor}, "optimizer": Adam state dict}, ...],  # R + 1, CPU tensors
     "train_time": seconds, "device": "cuda:0",  # informational
     "meta": {"hparams": {...}, "shards": S, "slices": R, "epochs_per_slice": E, "seed": seed,
              "batch_size": B, "dtype": "float32", "primary_hash": sha256 of the primary ids,
              "assignment_hash": sha256 of the whole assignment}}

Shards whose ``meta`` differ in any key are never mixed.

Device and precision
--------------------
Training, unlearning and healing run on the ``device`` given (a string or a
``torch.device``, e.g. the outer Lightning trainer's ``root_device``) and in
the ``dtype`` given (default: torch's default dtype): shard models are created
in it, floating inputs are cast to it.  Nothing falls back to the CPU: a model
on another device than the one asked for, or CUDA asked for where there is
none, stops with a ValueError.  Checkpoints are kept on the CPU.  On CUDA,
bit-for-bit exactness also needs deterministic kernels
(``torch.use_deterministic_algorithms(True)``).

Healing
-------
:func:`heal_sisa` fine-tunes the shards that held unlearned requests on their
remaining data plus the twins (backup samples) chosen for those requests.
Every heal step is recorded in ``state.heals[shard]`` (its twin ids, epochs,
lr, seed and resulting weights), so a shard model is always a deterministic
function of its primary slices and its heal steps, and later unlearning stays
exact by construction: see :func:`heal_sisa`.

Public API: :class:`SisaEnsemble`, :func:`aggregate`, :class:`SisaState`,
:func:`make_assignment`, :func:`train_sisa`, :func:`train_sisa_shard`,
:func:`load_sisa`, :func:`unlearn_sisa`, :func:`heal_sisa`, :func:`fit_plain`
(the plain training loop, also used for the naive baseline), :func:`seed_for`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from healing_pl.models.classifier import Classifier

AGGREGATIONS = ("vote", "softmax")
#: rules for the epochs of each slice stage (see :func:`slice_epochs`)
EPOCH_RULES = ("passes", "per_slice")
SHARD_FORMAT = "healing_pl.sisa_shard/1"
#: the ``meta`` keys of a shard file that must agree before shards are mixed
RECIPE_KEYS = (
    "hparams",
    "shards",
    "slices",
    "epochs_per_slice",
    "seed",
    "batch_size",
    "dtype",
    "primary_hash",
    "assignment_hash",
)
_SHARD_FILE = re.compile(r"shard(\d+)\.pt")

Assignment = list[list[Tensor]]  # assignment[shard][slice] -> pool ids


# --------------------------------------------------------------------- epochs
def slice_epochs(epochs: int, slices: int, rule: str | int = "passes") -> int:
    """Epochs of each slice stage for a baseline of ``epochs`` epochs and ``slices`` slices.

    ``rule``: ``passes`` (``ceil(2 epochs / (slices + 1))``: every shard sample gets at least ``epochs`` passes
    on average, see the module docstring), ``per_slice`` (``max(1, round(epochs / slices))``) or a count.
    """
    if isinstance(rule, bool) or not isinstance(rule, (int, str)):
        raise ValueError(f"the SISA epoch rule must be one of {', '.join(EPOCH_RULES)} or a count, got {rule!r}.")
    if isinstance(rule, int):
        if rule < 1:
            raise ValueError(f"epochs_per_slice must be at least 1, got {rule}.")
        return rule
    if rule not in EPOCH_RULES:
        raise ValueError(f"unknown SISA epoch rule {rule!r}; choose one of {', '.join(EPOCH_RULES)} or a count.")
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}.")
    if int(slices) != slices or slices < 1:
        raise ValueError(f"slices must be at least 1, got {slices}.")
    if rule == "passes":
        return max(1, math.ceil(2 * int(epochs) / (int(slices) + 1)))
    return max(1, round(int(epochs) / int(slices)))


# ---------------------------------------------------------------------- seeds
def seed_for(*parts) -> int:
    """A 63-bit seed derived from ``parts`` (e.g. ``("stage", seed, shard, stage)``), stable across runs."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _fork_rng(device: torch.device):
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device.index if device.index is not None else torch.cuda.current_device()])


# ------------------------------------------------------------ device, dtype
def _as_device(device) -> torch.device:
    """``device`` as a torch.device (CUDA with its index), or a ValueError where it cannot be used."""
    if device is None:
        raise ValueError("SISA needs a device to run on (e.g. 'cpu', 'cuda:0' or the trainer's root_device).")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"SISA was asked to run on '{device}', but CUDA is not available on this machine.")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def _as_dtype(dtype) -> torch.dtype:
    """``dtype`` (a torch dtype or its name, None for torch's default) as a floating torch.dtype."""
    if dtype is None:
        return torch.get_default_dtype()
    resolved = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"the SISA dtype must be a floating torch dtype such as torch.float64, got {dtype!r}.")
    return resolved


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _ids(ids) -> Tensor:
    return torch.as_tensor(ids, dtype=torch.long).flatten()


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
    def from_models(cls, models: Sequence[nn.Module], aggregation: str = "vote") -> SisaEnsemble:
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

    def __post_init__(self) -> None:
        if not self.heals:
            self.heals = [[] for _ in self.assignment]

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


# --------------------------------------------------------------- assignment
def make_assignment(ids, shards: int, slices: int, seed: int = 0) -> Assignment:
    """Split ``ids`` by a seeded permutation into ``shards`` disjoint near-equal shards of
    ``slices`` near-equal slices each (ids sorted within a slice)."""
    ids = _ids(ids)
    if shards < 1 or slices < 1:
        raise ValueError(f"SISA needs at least one shard and one slice, got shards={shards}, slices={slices}.")
    if ids.numel() < shards * slices:
        raise ValueError(
            f"{ids.numel()} samples cannot fill {shards} shards x {slices} slices (one sample each at least)."
        )
    order = ids[torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(seed_for("assign", seed)))]
    return [
        [sl.sort().values for sl in torch.tensor_split(shard, slices)] for shard in torch.tensor_split(order, shards)
    ]


def _check_assignment(assignment, datamodule) -> Assignment:
    if not assignment or not all(len(sh) for sh in assignment):
        raise ValueError("the SISA assignment must hold at least one shard with at least one slice.")
    slices = len(assignment[0])
    if any(len(sh) != slices for sh in assignment):
        raise ValueError(
            f"every shard of the SISA assignment must have the same number of slices, "
            f"got {[len(sh) for sh in assignment]}."
        )
    out = [[_ids(sl) for sl in sh] for sh in assignment]
    for s, sh in enumerate(out):
        if sum(sl.numel() for sl in sh) == 0:
            raise ValueError(f"shard {s} of the SISA assignment is empty.")
    datamodule.check_members(torch.cat([torch.cat(sh) for sh in out]), "primary", "SISA assignment")
    return out


# ----------------------------------------------------------------- training
def _adam(model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
    hp = model.hparams
    return torch.optim.Adam(
        model.parameters(), lr=hp["lr"] if lr is None else lr, weight_decay=hp.get("weight_decay", 0.0)
    )


def _fresh_model(hparams: dict, init_seed: int, device: torch.device, dtype: torch.dtype) -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = Classifier(**hparams)
    return model.to(device=device, dtype=dtype)


def fit_plain(
    model: nn.Module,
    datamodule,
    ids,
    *,
    epochs: int,
    seed: int,
    batch_size: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    device=None,
    dtype=None,
    progress: bool = False,
) -> torch.optim.Optimizer:
    """Train ``model`` on the samples ``ids`` for ``epochs`` epochs with a plain, deterministic loop.

    Cross-entropy, Adam with the model's ``lr`` (unless ``optimizer`` is given,
    e.g. one resumed from a checkpoint), a shuffled loader whose generator is
    seeded with ``seed``, and the global RNG (dropout) forked and seeded with
    ``seed`` too, so the caller's RNG is untouched.  Batches go to ``device``
    (default: the model's; a model elsewhere is an error, never moved silently)
    and floating inputs are cast to ``dtype`` (default: the model's).  Returns the optimizer.
    """
    param = next(model.parameters())
    device = param.device if device is None else _as_device(device)
    if param.device != device:
        raise ValueError(f"the model lives on {param.device} but was asked to train on {device}; move it there first.")
    dtype = (
        (param.dtype if param.is_floating_point() else torch.get_default_dtype()) if dtype is None else _as_dtype(dtype)
    )
    optimizer = optimizer or _adam(model)
    ids = _ids(ids)
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
                x = x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
                loss = F.cross_entropy(model(x), y.to(device))
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


def _cpu(obj):
    """A copy of a (nested) state dict with every tensor copied to the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {"model": _cpu(model.state_dict()), "optimizer": _cpu(optimizer.state_dict())}


def _model_from(hparams: dict, init_seed: int, weights: dict, device: torch.device, dtype: torch.dtype) -> Classifier:
    model = _fresh_model(hparams, init_seed, device, dtype)
    model.load_state_dict(weights)
    return model


def _restore(
    hparams: dict, init_seed: int, ckpt: dict, device: torch.device, dtype: torch.dtype
) -> tuple[Classifier, torch.optim.Optimizer]:
    model = _model_from(hparams, init_seed, ckpt["model"], device, dtype)
    optimizer = _adam(model)
    # deep copy: load_state_dict may alias the saved tensors, which Adam then updates in place
    optimizer.load_state_dict(copy.deepcopy(ckpt["optimizer"]))
    return model, optimizer


def _save(ckpt: dict, checkpoint_dir: str | None, shard: int, k: int, slices: list[Tensor]) -> None:
    if checkpoint_dir is None:
        return
    os.makedirs(checkpoint_dir, exist_ok=True)
    ids = torch.cat(slices[:k]) if k else torch.zeros(0, dtype=torch.long)
    path = os.path.join(checkpoint_dir, f"shard{shard}_stage{k}.pt")
    torch.save({**ckpt, "shard": shard, "stage": k, "ids": ids}, path)


def _train_stages(
    model,
    optimizer,
    datamodule,
    slices: list[Tensor],
    start: int,
    shard: int,
    *,
    seed: int,
    epochs_per_slice: int,
    batch_size: int,
    device: torch.device,
    ckpts: list[dict],
    checkpoint_dir: str | None,
    bar,
) -> None:
    """Train stages ``start..R-1`` of one shard, appending a checkpoint after each."""
    for r in range(start, len(slices)):
        bar.set_postfix(shard=shard, slice=r)
        fit_plain(
            model,
            datamodule,
            torch.cat(slices[: r + 1]),
            epochs=epochs_per_slice,
            seed=seed_for("stage", seed, shard, r),
            batch_size=batch_size,
            optimizer=optimizer,
            device=device,
        )
        ckpts.append(_snapshot(model, optimizer))
        _save(ckpts[-1], checkpoint_dir, shard, r + 1, slices)
        bar.update(1)


def _train_shard(
    hparams: dict,
    datamodule,
    slices: list[Tensor],
    shard: int,
    *,
    seed: int,
    epochs_per_slice: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    checkpoint_dir: str | None,
    bar,
) -> tuple[Classifier, list[dict], float]:
    """Train every stage of one shard from its seeded initial weights: (model, checkpoints, seconds)."""
    t0 = time.perf_counter()
    model = _fresh_model(hparams, seed_for("init", seed, shard), device, dtype)
    optimizer = _adam(model)
    ckpts = [_snapshot(model, optimizer)]
    _save(ckpts[0], checkpoint_dir, shard, 0, slices)
    _train_stages(
        model,
        optimizer,
        datamodule,
        slices,
        0,
        shard,
        seed=seed,
        epochs_per_slice=epochs_per_slice,
        batch_size=batch_size,
        device=device,
        ckpts=ckpts,
        checkpoint_dir=checkpoint_dir,
        bar=bar,
    )
    return model.eval(), ckpts, time.perf_counter() - t0


@dataclass(frozen=True)
class _Recipe:
    hparams: dict
    assignment: Assignment
    epochs_per_slice: int
    seed: int
    batch_size: int
    dtype: torch.dtype

    def meta(self, datamodule) -> dict:
        """The ``meta`` dict of a shard file (plain values only)."""
        return {
            "hparams": _plain(self.hparams, "hparams"),
            "shards": len(self.assignment),
            "slices": len(self.assignment[0]),
            "epochs_per_slice": self.epochs_per_slice,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "dtype": _dtype_name(self.dtype),
            "primary_hash": _hash_ids([datamodule.primary_ids]),
            "assignment_hash": _hash_assignment(self.assignment),
        }


def _recipe(
    hparams: Mapping,
    datamodule,
    *,
    shards: int | None,
    slices: int | None,
    epochs: int,
    epochs_per_slice: int | str | None,
    seed: int,
    assignment: Assignment | None,
    batch_size: int | None,
    dtype,
) -> _Recipe:
    """Check and resolve a SISA training recipe (the seeded assignment unless one is given)."""
    hparams = _clean_hparams(hparams)
    if assignment is None:
        shards, slices = 3 if shards is None else shards, 5 if slices is None else slices
        assignment = make_assignment(datamodule.primary_ids, shards, slices, seed)
    else:
        assignment = _check_assignment(assignment, datamodule)
        if shards is not None and shards != len(assignment) or slices is not None and slices != len(assignment[0]):
            raise ValueError(
                f"the assignment has {len(assignment)} shards x {len(assignment[0])} slices, "
                f"but shards={shards}, slices={slices} were asked for."
            )
    rule = "passes" if epochs_per_slice is None else epochs_per_slice
    eps = slice_epochs(epochs, len(assignment[0]), rule)
    batch_size = int(batch_size or datamodule.hparams.batch_size)
    return _Recipe(hparams, assignment, eps, int(seed), batch_size, _as_dtype(dtype))


def train_sisa(
    hparams: Mapping,
    datamodule,
    *,
    shards: int | None = None,
    slices: int | None = None,
    epochs: int = 10,
    epochs_per_slice: int | str | None = None,
    seed: int = 0,
    aggregation: str = "vote",
    assignment: Assignment | None = None,
    batch_size: int | None = None,
    device="cpu",
    dtype=None,
    directory: str | None = None,
    checkpoint_dir: str | None = None,
    progress: bool = False,
) -> SisaState:
    """Train a SISA ensemble on the primary set of ``datamodule``.

    Args:
        hparams: the Classifier hyperparameters of every shard model.
        datamodule: a HealingDataModule (its primary set is sharded; its loader serves the samples).
        shards, slices: S and R (default 3 and 5; taken from ``assignment`` when given).
        epochs: the baseline's epoch budget N.
        epochs_per_slice: the epochs of each stage: a count, or a rule of :data:`EPOCH_RULES` applied to
            ``epochs`` by :func:`slice_epochs` (None: ``passes``, ``ceil(2N / (R + 1))``).
        seed: seeds the assignment, the initial weights and every stage's shuffle.
        aggregation: ``vote`` or ``softmax``.
        assignment: an explicit ``assignment[shard][slice]`` of primary ids (e.g. a previous
            assignment minus deleted ids, to retrain from scratch).
        batch_size: training batch size (default: the datamodule's).
        device: where to train (a string or torch.device, e.g. the trainer's ``root_device``).
        dtype: the shard models' floating dtype (e.g. torch.float64; default: torch's default dtype).
        directory: train through shard files there, as :func:`train_sisa_shard` does, skipping shards
            whose file already exists with the same recipe (a file of another recipe, or an unreadable
            one, stops with a ValueError rather than being overwritten), then :func:`load_sisa` them.
            ``train_time`` is then the sum of the shards' recorded training times.
        checkpoint_dir: also write every stage checkpoint there.
        progress: show a progress bar.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown SISA aggregation '{aggregation}'; choose one of {', '.join(AGGREGATIONS)}.")
    recipe = _recipe(
        hparams,
        datamodule,
        shards=shards,
        slices=slices,
        epochs=epochs,
        epochs_per_slice=epochs_per_slice,
        seed=seed,
        assignment=assignment,
        batch_size=batch_size,
        dtype=dtype,
    )
    device = _as_device(device)
    n_shards, n_slices = len(recipe.assignment), len(recipe.assignment[0])
    if directory is not None:
        meta = recipe.meta(datamodule)
        with tqdm(total=n_shards * n_slices, desc="SISA train", disable=not progress) as bar:
            for s in range(n_shards):
                path = _shard_path(directory, s)
                if os.path.exists(path):
                    _check_recipe(_read_shard(path, s)["meta"], meta, path, "the recipe asked for")
                    bar.update(n_slices)
                    continue
                _train_shard_file(
                    recipe,
                    datamodule,
                    s,
                    meta=meta,
                    device=device,
                    directory=directory,
                    checkpoint_dir=checkpoint_dir,
                    bar=bar,
                )
        state = load_sisa(directory, datamodule, aggregation=aggregation, device=device)
        state.checkpoint_dir = checkpoint_dir
        return state

    models, checkpoints, shard_times = [], [], []
    t_all = time.perf_counter()
    with tqdm(total=n_shards * n_slices, desc="SISA train", disable=not progress) as bar:
        for s, sl in enumerate(recipe.assignment):
            model, ckpts, secs = _train_shard(
                recipe.hparams,
                datamodule,
                sl,
                s,
                seed=recipe.seed,
                epochs_per_slice=recipe.epochs_per_slice,
                batch_size=recipe.batch_size,
                device=device,
                dtype=recipe.dtype,
                checkpoint_dir=checkpoint_dir,
                bar=bar,
            )
            models.append(model)
            checkpoints.append(ckpts)
            shard_times.append(secs)
    ensemble = SisaEnsemble.from_models(models, aggregation).eval()
    return SisaState(
        ensemble=ensemble,
        assignment=recipe.assignment,
        checkpoints=checkpoints,
        hparams=recipe.hparams,
        seed=recipe.seed,
        epochs_per_slice=recipe.epochs_per_slice,
        batch_size=recipe.batch_size,
        train_time=time.perf_counter() - t_all,
        shard_times=shard_times,
        checkpoint_dir=checkpoint_dir,
        device=str(device),
        dtype=recipe.dtype,
    )


# ---------------------------------------------------------------- shard files
def _plain(value, where: str):
    """``value`` if it is made of plain values only (what ``weights_only=True`` loads), else a ValueError."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, where) for v in value)
    if isinstance(value, Mapping):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise ValueError(
        f"{where} holds a {type(value).__name__}, which a SISA shard file cannot store; "
        f"use plain values (numbers, strings, lists, dicts)."
    )


def _hash_ids(tensors: Sequence[Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = _ids(t).contiguous()
        h.update(f"{t.numel()};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _hash_assignment(assignment: Assignment) -> str:
    return _hash_ids([sl for sh in assignment for sl in sh] + [torch.tensor([len(sh) for sh in assignment])])


def _shard_path(directory: str, shard: int) -> str:
    return os.path.join(directory, f"shard{shard}.pt")


def _write_atomic(payload: dict, path: str) -> None:
    """``torch.save`` to a unique temporary file next to ``path``, then rename it over ``path``."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _train_shard_file(
    recipe: _Recipe,
    datamodule,
    shard: int,
    *,
    meta: dict,
    device: torch.device,
    directory: str,
    checkpoint_dir: str | None,
    bar,
) -> str:
    """Train one shard of ``recipe`` and write its file; the per-shard code of train_sisa and train_sisa_shard."""
    slices = recipe.assignment[shard]
    _, ckpts, secs = _train_shard(
        recipe.hparams,
        datamodule,
        slices,
        shard,
        seed=recipe.seed,
        epochs_per_slice=recipe.epochs_per_slice,
        batch_size=recipe.batch_size,
        device=device,
        dtype=recipe.dtype,
        checkpoint_dir=checkpoint_dir,
        bar=bar,
    )
    path = _shard_path(directory, shard)
    _write_atomic(
        {
            "format": SHARD_FORMAT,
            "shard": shard,
            "slices": [sl.clone() for sl in slices],
            "checkpoints": ckpts,
            "train_time": secs,
            "device": str(device),
            "meta": meta,
        },
        path,
    )
    return path


def train_sisa_shard(
    hparams: Mapping,
    datamodule,
    shard: int,
    *,
    shards: int | None,
    slices: int | None,
    epochs: int,
    seed: int,
    batch_size: int | None = None,
    device,
    directory: str,
    progress: bool = False,
    epochs_per_slice: int | str | None = None,
    dtype=None,
    assignment: Assignment | None = None,
) -> str:
    """Train shard ``shard`` of a SISA ensemble (all its stages) and write ``directory/shard{shard}.pt``.

    Run it once per shard, e.g. as ``S`` cluster jobs, then aggregate with :func:`load_sisa`; the
    ensemble is bit for bit the one ``train_sisa`` trains in one process with the same arguments.
    The file is written atomically (a temporary file in ``directory``, then renamed) and overwritten
    if it exists; its format is described in the module docstring.

    Args:
        hparams, datamodule, epochs, epochs_per_slice, seed, batch_size, dtype: as for :func:`train_sisa`.
        shard: which shard to train (0-based).
        shards, slices: S and R of the seeded assignment (may be None with an explicit ``assignment``).
        device: where to train (no default: say it, e.g. ``"cuda:0"`` or ``"cpu"``).
        directory: the folder of the shard files.
        progress: show a progress bar.
        assignment: an explicit assignment instead of the seeded one (the same in every job).

    Returns:
        the path of the shard file.
    """
    recipe = _recipe(
        hparams,
        datamodule,
        shards=shards,
        slices=slices,
        epochs=epochs,
        epochs_per_slice=epochs_per_slice,
        seed=seed,
        assignment=assignment,
        batch_size=batch_size,
        dtype=dtype,
    )
    n_shards = len(recipe.assignment)
    if not 0 <= int(shard) < n_shards:
        raise ValueError(f"shard must lie in 0..{n_shards - 1} for {n_shards} shards, got shard={shard}.")
    device = _as_device(device)
    with tqdm(total=len(recipe.assignment[0]), desc=f"SISA shard {shard}", disable=not progress) as bar:
        return _train_shard_file(
            recipe,
            datamodule,
            int(shard),
            meta=recipe.meta(datamodule),
            device=device,
            directory=directory,
            checkpoint_dir=None,
            bar=bar,
        )


def _read_shard(path: str, shard: int) -> dict:
    """Load and check the structure of one shard file (CPU tensors), or a ValueError in one sentence."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or holding something weights_only refuses
        raise ValueError(
            f"{path} is not a readable SISA shard file ({type(err).__name__}); delete it and train shard {shard} again."
        ) from None
    meta = data.get("meta") if isinstance(data, dict) else None
    ok = (
        isinstance(meta, dict)
        and data.get("format") == SHARD_FORMAT
        and all(k in meta for k in RECIPE_KEYS)
        and data.get("shard") == shard
        and isinstance(data.get("slices"), list)
        and len(data["slices"]) == meta["slices"]
        and all(isinstance(t, Tensor) for t in data["slices"])
        and isinstance(data.get("checkpoints"), list)
        and len(data["checkpoints"]) == meta["slices"] + 1
        and all(isinstance(c, dict) and {"model", "optimizer"} <= c.keys() for c in data["checkpoints"])
    )
    if not ok:
        raise ValueError(
            f"{path} is corrupt or not a {SHARD_FORMAT} file of shard {shard}; delete it and train shard {shard} again."
        )
    return data


def _recipe_diff(a: dict, b: dict) -> list[str]:
    diff = []
    for k in RECIPE_KEYS:
        if k == "hparams" and a[k] != b[k]:
            keys = sorted(set(a[k]) | set(b[k]), key=str)
            diff += [f"hparams.{n} {a[k].get(n)!r} vs {b[k].get(n)!r}" for n in keys if a[k].get(n) != b[k].get(n)]
        elif k.endswith("_hash") and a[k] != b[k]:
            diff.append(f"another {k.removesuffix('_hash')}" + (" set" if k == "primary_hash" else ""))
        elif a[k] != b[k]:
            diff.append(f"{k} {a[k]!r} vs {b[k]!r}")
    return diff


def _check_recipe(meta: dict, want: dict, path: str, what: str) -> None:
    diff = _recipe_diff(meta, want)
    if diff:
        raise ValueError(
            f"{path} was trained with another recipe than {what} ({'; '.join(diff)}), and SISA "
            f"never mixes shards of different recipes: delete it or use another folder."
        )


def load_sisa(directory: str, datamodule, *, aggregation: str = "vote", device) -> SisaState:
    """Aggregate the shard files of ``directory`` (written by :func:`train_sisa_shard`) into a :class:`SisaState`.

    Every file must be readable, of the same recipe, trained on this datamodule's primary set, and
    together they must hold shards ``0..S-1`` exactly; otherwise a ValueError says which file is wrong.
    The shard models are built on ``device`` in the recipe's dtype; checkpoints stay on the CPU.
    ``train_time`` is the sum of the shards' recorded training times.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown SISA aggregation '{aggregation}'; choose one of {', '.join(AGGREGATIONS)}.")
    device = _as_device(device)
    if not os.path.isdir(directory):
        raise ValueError(f"the SISA shard folder '{directory}' does not exist.")
    found = {
        int(m.group(1)): os.path.join(directory, name)
        for name in os.listdir(directory)
        if (m := _SHARD_FILE.fullmatch(name))
    }
    if not found:
        raise ValueError(
            f"'{directory}' holds no SISA shard files (shard0.pt, shard1.pt, ...); "
            f"train them with train_sisa_shard first."
        )
    files = {i: _read_shard(found[i], i) for i in sorted(found)}
    first = min(files)
    meta = files[first]["meta"]
    for i, data in files.items():
        _check_recipe(data["meta"], meta, found[i], found[first])
    n_shards = meta["shards"]
    extra = [found[i] for i in files if i >= n_shards]
    if extra:
        raise ValueError(
            f"{extra[0]} lies beyond the {n_shards} shards of the recipe of {found[first]}, and SISA "
            f"never mixes shards of different recipes: delete it or use another folder."
        )
    missing = [f"shard{i}.pt" for i in range(n_shards) if i not in files]
    if missing:
        raise ValueError(
            f"the SISA folder '{directory}' misses the shard file(s) {', '.join(missing)} of its "
            f"{n_shards} shards; train them with train_sisa_shard first."
        )
    if meta["primary_hash"] != _hash_ids([datamodule.primary_ids]):
        raise ValueError(
            f"the SISA shard files in '{directory}' were trained on another primary set than this "
            f"datamodule's; load them with the data config and seed they were trained with."
        )
    assignment = [[_ids(sl) for sl in files[i]["slices"]] for i in range(n_shards)]
    if _hash_assignment(assignment) != meta["assignment_hash"]:
        raise ValueError(
            f"the slices of the SISA shard files in '{directory}' are not the assignment they were "
            f"trained on (a file is corrupt or was altered); delete them and train again."
        )
    hparams, dtype, seed = dict(meta["hparams"]), _as_dtype(meta["dtype"]), meta["seed"]
    models = []
    for i in range(n_shards):
        try:
            weights = files[i]["checkpoints"][-1]["model"]
            model = _model_from(hparams, seed_for("init", seed, i), weights, device, dtype)
        except (RuntimeError, KeyError, TypeError) as err:
            raise ValueError(
                f"{found[i]} holds weights that do not fit the model of its recipe "
                f"({type(err).__name__}); delete it and train shard {i} again."
            ) from None
        models.append(model.eval())
    shard_times = [float(files[i]["train_time"]) for i in range(n_shards)]
    return SisaState(
        ensemble=SisaEnsemble.from_models(models, aggregation).eval(),
        assignment=assignment,
        checkpoints=[files[i]["checkpoints"] for i in range(n_shards)],
        hparams=hparams,
        seed=seed,
        epochs_per_slice=meta["epochs_per_slice"],
        batch_size=meta["batch_size"],
        train_time=sum(shard_times),
        shard_times=shard_times,
        device=str(device),
        dtype=dtype,
    )


# --------------------------------------------------------------- unlearning
def _check_forget(state: SisaState, forget_ids, datamodule) -> tuple[Tensor, Tensor]:
    """The forget ids (distinct primary ids and twins this state holds) and a mask of the twins among them."""
    ids = _ids(forget_ids)
    done = ids[torch.isin(ids, state.deleted)]
    if done.numel():
        raise ValueError(
            f"the forget set holds {done.numel()} id(s) this SISA model no longer trains on "
            f"(already unlearned, e.g. {done[:5].tolist()})."
        )
    is_twin = torch.isin(ids, state.twin_ids())
    if not is_twin.any():
        ids = datamodule.check_members(ids, "primary", "forget set")
    else:
        uniq, counts = ids.unique(return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"the forget set names some samples twice (e.g. ids {uniq[counts > 1][:5].tolist()}).")
        if (~is_twin).any():
            datamodule.check_members(ids[~is_twin], "primary", "forget set")
    shard_of, _ = state.locate(ids)
    absent = ids[(shard_of < 0) & ~is_twin]
    if absent.numel():
        raise ValueError(
            f"the forget set holds {absent.numel()} primary id(s) this SISA model does not train on "
            f"(its assignment leaves them out, e.g. {absent[:5].tolist()})."
        )
    return ids, is_twin


def _heal_epoch(
    model,
    optimizer,
    datamodule,
    ids: Tensor,
    *,
    seed: int,
    shard: int,
    epoch: int,
    batch_size: int,
    device: torch.device,
) -> None:
    """Epoch ``epoch`` (1-based) of a heal step: its shuffle and dropout depend only on (seed, shard, epoch)."""
    fit_plain(
        model,
        datamodule,
        ids,
        epochs=1,
        seed=seed_for("heal", seed, shard, epoch),
        batch_size=batch_size,
        optimizer=optimizer,
        device=device,
    )


def unlearn_sisa(state: SisaState, forget_ids, datamodule, progress: bool = False) -> tuple[SisaState, dict]:
    """Unlearn ``forget_ids`` exactly: retrain only the shards holding one of them.

    ``forget_ids`` may hold primary ids and twins the state was healed with (see :func:`heal_sisa`).
    Each shard holding a deleted primary id resumes from the checkpoint before its first slice holding
    one, with the deleted ids removed from their slices, and then replays its heal steps (if any) on its
    new data.  A shard losing only twins restarts from the weights before the first heal step holding one
    and replays that step and the later ones without them.  Unaffected shards keep the very same model
    objects and checkpoints.  ``state`` itself is not changed.

    Returns ``(new_state, info)`` with ``info``: ``affected_shards`` (list),
    ``restart_slice`` ({shard: 0-based slice}; R when only heal steps are replayed),
    ``removed`` ({shard: count}), ``stages_retrained``, ``heal_steps_replayed``,
    ``samples_retrained`` (sample-epochs, heal steps included) and ``time`` (seconds).
    """
    forget, is_twin = _check_forget(state, forget_ids, datamodule)
    shard_of, slice_of = state.locate(forget)
    twin_shard, twin_step = state.locate_twins(forget)
    shard_of = torch.where(is_twin, twin_shard, shard_of)
    affected = sorted(set(shard_of.tolist()))
    R = state.num_slices
    new_assignment, new_heals = list(state.assignment), list(state.heals)
    restart, heal_from = {}, {}
    for s in affected:
        primary = ~is_twin & (shard_of == s)
        twins = is_twin & (shard_of == s)
        if primary.any():
            new_slices = [sl[~torch.isin(sl, forget)] for sl in state.assignment[s]]
            if sum(sl.numel() for sl in new_slices) == 0:
                raise ValueError(
                    f"unlearning would empty shard {s} (the forget set holds all its "
                    f"{state.shard_ids(s).numel()} samples); SISA cannot keep a shard without data."
                )
            new_assignment[s] = new_slices
            restart[s], heal_from[s] = int(slice_of[primary].min()), 0
        else:
            restart[s], heal_from[s] = R, int(twin_step[twins].min())
        if twins.any():
            new_heals[s] = [{**st, "twins": st["twins"][~torch.isin(st["twins"], forget)]} for st in state.heals[s]]

    def heal_ids(s: int, k: int) -> Tensor:  # the data of heal step k of shard s, after the deletion
        return torch.cat(new_assignment[s] + [st["twins"] for st in new_heals[s][: k + 1]])

    eps, device, dtype = state.epochs_per_slice, torch.device(state.device), state.dtype
    stages = sum(R - restart[s] for s in affected)
    replays = sum(len(new_heals[s]) - heal_from[s] for s in affected)
    samples = sum(
        eps * sum(sum(sl.numel() for sl in new_assignment[s][: r + 1]) for r in range(restart[s], R))
        + sum(new_heals[s][k]["epochs"] * heal_ids(s, k).numel() for k in range(heal_from[s], len(new_heals[s])))
        for s in affected
    )

    models = list(state.ensemble.models)
    checkpoints = list(state.checkpoints)
    t0 = time.perf_counter()
    with tqdm(total=stages + replays, desc="SISA unlearn", disable=not progress) as bar:
        for s in affected:
            r, init = restart[s], seed_for("init", state.seed, s)
            ckpts = state.checkpoints[s]
            if r < R:
                model, optimizer = _restore(state.hparams, init, state.checkpoints[s][r], device, dtype)
                ckpts = list(state.checkpoints[s][: r + 1])
                _train_stages(
                    model,
                    optimizer,
                    datamodule,
                    new_assignment[s],
                    r,
                    s,
                    seed=state.seed,
                    epochs_per_slice=eps,
                    batch_size=state.batch_size,
                    device=device,
                    ckpts=ckpts,
                    checkpoint_dir=state.checkpoint_dir,
                    bar=bar,
                )
            steps, h = list(new_heals[s]), heal_from[s]
            if r == R:  # only twins go: start from the weights before heal step h
                model = _model_from(
                    state.hparams, init, ckpts[R]["model"] if h == 0 else steps[h - 1]["model"], device, dtype
                )
            for k in range(h, len(steps)):
                bar.set_postfix(shard=s, heal_step=k)
                ids, optimizer = heal_ids(s, k), _adam(model, steps[k]["lr"])
                for epoch in range(1, steps[k]["epochs"] + 1):
                    _heal_epoch(
                        model,
                        optimizer,
                        datamodule,
                        ids,
                        seed=steps[k]["seed"],
                        shard=s,
                        epoch=epoch,
                        batch_size=state.batch_size,
                        device=device,
                    )
                steps[k] = {**steps[k], "model": _cpu(model.state_dict())}
                bar.update(1)
            new_heals[s] = steps
            models[s] = model.eval()
            checkpoints[s] = ckpts
    elapsed = time.perf_counter() - t0
    info = {
        "affected_shards": affected,
        "restart_slice": restart,
        "removed": {s: int((shard_of == s).sum()) for s in affected},
        "stages_retrained": stages,
        "heal_steps_replayed": replays,
        "samples_retrained": samples,
        "time": elapsed,
    }
    ensemble = SisaEnsemble.from_models(models, state.ensemble.aggregation).eval()
    order = forget.argsort()
    new_state = replace(
        state,
        ensemble=ensemble,
        assignment=new_assignment,
        checkpoints=checkpoints,
        heals=new_heals,
        deleted=torch.cat([state.deleted, forget[order]]),
        deleted_shards=torch.cat([state.deleted_shards, shard_of[order]]),
        history=[*state.history, info],
    )
    return new_state, info


# ------------------------------------------------------------------ healing
def heal_sisa(
    state: SisaState,
    forget_ids,
    twin_pairs: Sequence[Mapping],
    datamodule,
    *,
    epochs: int,
    lr: float | None = None,
    seed: int,
    on_epoch: Callable[[int, SisaEnsemble], object] | None = None,
    progress: bool = False,
) -> SisaState:
    """Heal a SISA ensemble after unlearning: fine-tune the shards that held the forgotten ids.

    Each affected shard (one that held an id of ``forget_ids``) is fine-tuned for ``epochs`` epochs
    with a fresh Adam (at ``lr``, default the shard model's own lr and weight decay) on its remaining
    data (:meth:`SisaState.train_ids`: its primary ids slice after slice, then the twins of earlier
    heals) followed by the twins of the requests it held, sorted by id.  Epoch ``e`` shuffles with a
    generator, and runs dropout under a global RNG, seeded with ``seed_for("heal", seed, shard, e)``,
    i.e. it is ``fit_plain(model, datamodule, ids, epochs=1, seed=seed_for("heal", seed, shard, e),
    batch_size=state.batch_size, optimizer=adam)`` for ``e = 1..epochs``.  Unaffected shards keep the
    very same model objects.  ``state`` itself is not changed.

    The twins are recorded in ``heals[shard]`` of the returned state (not in ``assignment``, which
    keeps the primary ids only): one step ``{"twins", "epochs", "lr", "seed", "model"}`` per call and
    shard, ``state.twin_ids(shard)`` listing them.  A shard model thus stays a deterministic function
    of its primary slices and its heal steps, and later unlearning is exact by construction: passing a
    twin id to :func:`unlearn_sisa` restarts its shard from the weights before the heal step that added
    it and replays that step and the later ones without it; unlearning a primary id of a healed shard
    retrains its stages as usual and then replays all its heal steps on the new data.  Either way the
    result equals training from scratch on the remaining primary ids and applying the same heal steps
    with the remaining twins.

    Args:
        state: the state after unlearning ``forget_ids`` (:func:`unlearn_sisa`).
        forget_ids: the unlearned requests whose shards are healed.
        twin_pairs: ``[{"request_id": forget id, "twin_id": backup id}, ...]``; requests may lack a twin.
        datamodule: the datamodule the state was trained with.
        epochs: fine-tuning epochs (at least 1).
        lr: the fine-tuning learning rate (default: the shard models' lr).
        seed: seeds every heal epoch's shuffle and dropout.
        on_epoch: called as ``on_epoch(epoch, ensemble)`` after every epoch (1-based), once every affected
            shard has trained it, e.g. to evaluate the ensemble; the shard models are in eval mode then.
        progress: show a progress bar.
    """
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"healing needs at least one epoch, got epochs={epochs}.")
    if lr is not None and not lr > 0:
        raise ValueError(f"the healing learning rate must be positive, got lr={lr}.")
    forget = _ids(forget_ids)
    if forget.numel() == 0:
        raise ValueError("the forget set to heal is empty.")
    uniq, counts = forget.unique(return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"the forget set to heal names some samples twice (e.g. ids {uniq[counts > 1][:5].tolist()}).")
    where = torch.isin(state.deleted, forget)
    missing = forget[~torch.isin(forget, state.deleted)]
    if missing.numel():
        raise ValueError(
            f"the forget set holds {missing.numel()} id(s) this SISA state has not unlearned "
            f"(e.g. {missing[:5].tolist()}); unlearn them with unlearn_sisa before healing."
        )
    shard_of = dict(zip(state.deleted[where].tolist(), state.deleted_shards[where].tolist(), strict=True))

    requests, twins = [], []
    for pair in twin_pairs:
        if not isinstance(pair, Mapping) or not {"request_id", "twin_id"} <= pair.keys():
            raise ValueError(f"every twin pair must be a dict with 'request_id' and 'twin_id', got {pair!r}.")
        requests.append(int(pair["request_id"]))
        twins.append(int(pair["twin_id"]))
    requests_t, twins_t = torch.tensor(requests, dtype=torch.long), torch.tensor(twins, dtype=torch.long)
    stray = requests_t[~torch.isin(requests_t, forget)]
    if stray.numel():
        raise ValueError(
            f"the twin pairs name {stray.numel()} request(s) outside the forget set (e.g. {stray[:5].tolist()})."
        )
    if requests_t.unique().numel() != requests_t.numel():
        raise ValueError("the twin pairs give some request more than one twin; give each request one twin at most.")
    if twins_t.numel():
        datamodule.check_members(twins_t, "backup", "twin set")
        reused = twins_t[torch.isin(twins_t, torch.cat([state.twin_ids(), state.deleted]))]
        if reused.numel():
            raise ValueError(
                f"the twin set holds {reused.numel()} id(s) this SISA state already healed with or "
                f"unlearned (e.g. {reused[:5].tolist()}); choose other twins."
            )

    affected = sorted(set(shard_of.values()))
    new_twins = {
        s: torch.tensor(sorted(t for r, t in zip(requests, twins) if shard_of[r] == s), dtype=torch.long)
        for s in affected
    }
    lr_used = float(state.hparams["lr"] if lr is None else lr)
    device = torch.device(state.device)
    models = list(state.ensemble.models)
    for s in affected:
        models[s] = _model_from(
            state.hparams, seed_for("init", state.seed, s), models[s].state_dict(), device, state.dtype
        ).eval()
    ensemble = SisaEnsemble.from_models(models, state.ensemble.aggregation).eval()
    data = {s: torch.cat([state.train_ids(s), new_twins[s]]) for s in affected}
    optimizers = {s: _adam(models[s], lr_used) for s in affected}
    with tqdm(total=epochs * len(affected), desc="SISA heal", disable=not progress) as bar:
        for epoch in range(1, int(epochs) + 1):
            for s in affected:
                bar.set_postfix(shard=s, epoch=epoch)
                _heal_epoch(
                    models[s],
                    optimizers[s],
                    datamodule,
                    data[s],
                    seed=seed,
                    shard=s,
                    epoch=epoch,
                    batch_size=state.batch_size,
                    device=device,
                )
                bar.update(1)
            if on_epoch is not None:
                on_epoch(epoch, ensemble)
                ensemble.eval()
    heals = list(state.heals)
    for s in affected:
        heals[s] = [
            *heals[s],
            {
                "twins": new_twins[s],
                "epochs": int(epochs),
                "lr": lr_used,
                "seed": int(seed),
                "model": _cpu(models[s].state_dict()),
            },
        ]
    return replace(state, ensemble=ensemble, heals=heals)
