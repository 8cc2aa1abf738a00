"""Training SISA: the plain loop, the shards stage by stage, in one process or as one job per shard.

One model per shard is trained in isolation, incrementally: stage ``r`` (0-based) trains on the union
of slices ``0..r`` for ``epochs_per_slice`` epochs (:mod:`.epochs`) (the paper's protocol, :mod:`.protocol`:
on slice ``r`` alone, for the baseline's N epochs, 10% of every slice held out), and a checkpoint (model and Adam
state) is kept after every stage, from which :func:`~healing_pl.unlearning.sisa.unlearn_sisa` resumes.
Each stage is one :func:`fit_plain` call, i.e. one run of the unlearning package's inner loop
(:func:`healing_pl.unlearning.loop.train_epochs`) with the cross-entropy objective.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from healing_pl.files import save_torch
from healing_pl.gradients.params import model_dtype
from healing_pl.models.classifier import Classifier
from healing_pl.unlearning.loop import train_epochs
from healing_pl.unlearning.sisa.common import (
    _adam,
    _as_device,
    _as_dtype,
    _fork_rng,
    _fresh_model,
    _ids,
    _snapshot,
    seed_for,
)
from healing_pl.unlearning.sisa.protocol import PROTOCOLS, reweigh, split_holdout
from healing_pl.unlearning.sisa.shards import (
    _check_assignment,
    _check_recipe,
    _read_shard,
    _Recipe,
    _recipe,
    _shard_path,
    _write_shard,
    load_sisa,
    make_assignment,
)
from healing_pl.unlearning.sisa.state import AGGREGATIONS, Assignment, SisaEnsemble, SisaState


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
    and floating inputs are cast to ``dtype`` (default: the model's; a model in
    another dtype is an error, never cast silently).  The epochs run through
    :func:`healing_pl.unlearning.loop.train_epochs`.  Returns the optimizer.
    """
    param = next(model.parameters())
    device = param.device if device is None else _as_device(device)
    if param.device != device:
        raise ValueError(f"the model lives on {param.device} but was asked to train on {device}; move it there first.")
    own = model_dtype(model)
    if dtype is not None and _as_dtype(dtype) != own:
        raise ValueError(f"the model is {own} but was asked to train in {_as_dtype(dtype)}; cast it first.")
    optimizer = optimizer or _adam(model)
    ids = _ids(ids)
    if ids.numel() == 0 or epochs <= 0:
        return optimizer
    batch_size = batch_size or datamodule.hparams.batch_size
    loader = datamodule.loader(ids, shuffle=True, batch_size=batch_size, seed=seed)

    def cross_entropy(batch) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the training loss became {loss.item()}: the hyperparameters make the model diverge "
                f"(lower the learning rate, lr={model.hparams['lr'] if hasattr(model, 'hparams') else '?'})."
            )
        return loss

    was_training = model.training
    model.train()
    with _fork_rng(device):
        torch.manual_seed(seed)
        train_epochs(model, loader, cross_entropy, optimizer, epochs=epochs, progress=progress)
    model.train(was_training)
    return optimizer


def _save(ckpt: dict, checkpoint_dir: str | None, shard: int, k: int, slices: list[Tensor]) -> None:
    """Also write stage checkpoint ``k`` of ``shard`` to ``checkpoint_dir`` (atomically), if one is given."""
    if checkpoint_dir is None:
        return
    ids = torch.cat(slices[:k]) if k else torch.zeros(0, dtype=torch.long)
    save_torch(
        {**ckpt, "shard": shard, "stage": k, "ids": ids}, os.path.join(checkpoint_dir, f"shard{shard}_stage{k}.pt")
    )


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
    cumulative: bool = True,
) -> None:
    """Train stages ``start..R-1`` of one shard (on slices ``0..r``, or slice ``r`` alone when not
    ``cumulative``), appending a checkpoint after each."""
    for r in range(start, len(slices)):
        bar.set_postfix(shard=shard, slice=r)
        fit_plain(
            model,
            datamodule,
            torch.cat(slices[: r + 1]) if cumulative else slices[r],
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
    cumulative: bool = True,
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
        cumulative=cumulative,
    )
    return model.eval(), ckpts, time.perf_counter() - t0


def _protocol_split(
    protocol: str,
    datamodule,
    *,
    assignment: Assignment | None,
    holdout: list | None,
    shards: int | None,
    slices: int | None,
    epochs: int,
    epochs_per_slice,
    seed: int,
    aggregation: str,
):
    """``(assignment, holdout, epochs_per_slice)`` of a protocol: for ``paper`` the training parts of the slices,
    the held-out ids of every shard (:func:`~healing_pl.unlearning.sisa.protocol.split_holdout`, unless given)
    and N epochs per slice stage; ``bourtoule`` leaves everything as it is."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown SISA protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}.")
    if protocol == "bourtoule":
        if holdout is not None:
            raise ValueError("held-out ids belong to the paper's SISA protocol; drop them or use protocol='paper'.")
        return assignment, None, epochs_per_slice
    if aggregation != "vote":
        raise ValueError(
            f"the paper's SISA protocol votes weighted by held-out accuracy, so aggregation {aggregation!r} "
            "does not apply; leave it at vote."
        )
    if holdout is None:
        if assignment is None:
            full = make_assignment(
                datamodule.primary_ids, 3 if shards is None else shards, 5 if slices is None else slices, seed
            )
        else:
            full = _check_assignment(assignment, datamodule)
        assignment, holdout = split_holdout(full, seed)
    else:
        if assignment is None or len(holdout) != len(assignment):
            raise ValueError("held-out ids need the explicit assignment they were split from, one id set per shard.")
        holdout = [_ids(h) for h in holdout]
        held = torch.cat(holdout)
        datamodule.check_members(held, "primary", "SISA held-out set")
        if torch.isin(held, torch.cat([torch.cat([_ids(sl) for sl in sh]) for sh in assignment])).any():
            raise ValueError("the SISA held-out ids overlap the slices they must be held out of.")
    return assignment, holdout, epochs if epochs_per_slice is None else epochs_per_slice


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
    protocol: str = "bourtoule",
    holdout: list | None = None,
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
        protocol: ``bourtoule`` or ``paper`` (:mod:`.protocol`: 10% of every slice held out, stage ``r`` on
            slice ``r`` alone for ``epochs`` epochs unless ``epochs_per_slice`` is given, the vote weighted by
            each shard's held-out accuracy; ``aggregation`` must stay ``vote``).  With an explicit ``assignment``
            and no ``holdout``, its slices are split; with both, ``assignment`` holds the training parts.
        holdout: ``paper``: ``holdout[s]``, the held-out ids of shard ``s`` (e.g. a previous state's minus
            deleted ids, to retrain from scratch).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown SISA aggregation '{aggregation}'; choose one of {', '.join(AGGREGATIONS)}.")
    assignment, holdout, epochs_per_slice = _protocol_split(
        protocol,
        datamodule,
        assignment=assignment,
        holdout=holdout,
        shards=shards,
        slices=slices,
        epochs=epochs,
        epochs_per_slice=epochs_per_slice,
        seed=seed,
        aggregation=aggregation,
    )
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
        protocol=protocol,
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
                    holdout=None if holdout is None else holdout[s],
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
                cumulative=recipe.protocol != "paper",
            )
            models.append(model)
            checkpoints.append(ckpts)
            shard_times.append(secs)
    ensemble = SisaEnsemble.from_models(models, aggregation).eval()
    state = SisaState(
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
        protocol=recipe.protocol,
        holdout=holdout or [],
    )
    return reweigh(state, datamodule)


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
    holdout=None,
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
        cumulative=recipe.protocol != "paper",
    )
    return _write_shard(directory, shard, slices, ckpts, meta=meta, train_time=secs, device=device, holdout=holdout)


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
    protocol: str = "bourtoule",
) -> str:
    """Train shard ``shard`` of a SISA ensemble (all its stages) and write ``directory/shard{shard}.pt``.

    Run it once per shard, e.g. as ``S`` cluster jobs, then aggregate with :func:`load_sisa`; the
    ensemble is bit for bit the one ``train_sisa`` trains in one process with the same arguments.
    The file is written atomically (a temporary file in ``directory``, fsync, then renamed) and overwritten
    if it exists; its format is described in :mod:`healing_pl.unlearning.sisa.shards`.

    Args:
        hparams, datamodule, epochs, epochs_per_slice, seed, batch_size, dtype: as for :func:`train_sisa`.
        shard: which shard to train (0-based).
        shards, slices: S and R of the seeded assignment (may be None with an explicit ``assignment``).
        device: where to train (no default: say it, e.g. ``"cuda:0"`` or ``"cpu"``).
        directory: the folder of the shard files.
        progress: show a progress bar.
        assignment: an explicit assignment instead of the seeded one (the same in every job).
        protocol: ``bourtoule`` or ``paper``, as for :func:`train_sisa`.

    Returns:
        the path of the shard file.
    """
    assignment, holdout, epochs_per_slice = _protocol_split(
        protocol,
        datamodule,
        assignment=assignment,
        holdout=None,
        shards=shards,
        slices=slices,
        epochs=epochs,
        epochs_per_slice=epochs_per_slice,
        seed=seed,
        aggregation="vote",
    )
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
        protocol=protocol,
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
            holdout=None if holdout is None else holdout[int(shard)],
        )
