"""Exact SISA unlearning: retrain the affected shards from the slice holding the first deleted id.

Unlearning a set of ids retrains only the shards that hold one of them, from
the checkpoint taken *before* the first slice holding a deleted id (the
initial weights when that is slice 0), with the deleted ids removed from
their slices.  The other shards are not touched.

Exactness
---------
The result of :func:`unlearn_sisa` is bit-for-bit equal (on the same machine,
device and thread settings) to :func:`~healing_pl.unlearning.sisa.train_sisa` run from scratch on the same
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
so their checkpoints are those a from-scratch run would produce.  In the
paper's protocol (:mod:`.protocol`) stage ``r`` trains on slice ``r`` alone, which
changes nothing here; a deleted held-out id leaves its shard's model as it is
and only its held-out set (the shard's vote weight is measured again on the
rest, as a from-scratch run on the remaining held-out ids would).
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

from healing_pl.unlearning.sisa.common import _adam, _cpu, _ids, _model_from, _restore, seed_for
from healing_pl.unlearning.sisa.heal import _heal_epoch
from healing_pl.unlearning.sisa.protocol import reweigh
from healing_pl.unlearning.sisa.state import SisaEnsemble, SisaState
from healing_pl.unlearning.sisa.train import _train_stages


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
    absent = ids[(shard_of < 0) & ~is_twin & (state.locate_holdout(ids) < 0)]
    if absent.numel():
        raise ValueError(
            f"the forget set holds {absent.numel()} primary id(s) this SISA model does not train on "
            f"(its assignment leaves them out, e.g. {absent[:5].tolist()})."
        )
    return ids, is_twin


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
    held_shard = state.locate_holdout(forget)  # held-out ids (paper protocol): no retraining, only a new weight
    held = held_shard >= 0
    affected = sorted(set(shard_of[~held].tolist()))
    new_holdout = [h[~torch.isin(h, forget)] for h in state.holdout]
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

    def stage_size(s: int, r: int) -> int:
        return (
            sum(sl.numel() for sl in new_assignment[s][: r + 1]) if state.cumulative else new_assignment[s][r].numel()
        )

    samples = sum(
        eps * sum(stage_size(s, r) for r in range(restart[s], R))
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
                    cumulative=state.cumulative,
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
        "removed": {
            s: int(((shard_of == s) & ~held).sum() + (held_shard == s).sum())
            for s in sorted(set(affected) | set(held_shard[held].tolist()))
        },
        "stages_retrained": stages,
        "heal_steps_replayed": replays,
        "samples_retrained": samples,
        "time": elapsed,
    }
    ensemble = SisaEnsemble.from_models(models, state.ensemble.aggregation).eval()
    order = forget.argsort()
    shard_of = torch.where(held, held_shard, shard_of)
    new_state = replace(
        state,
        ensemble=ensemble,
        assignment=new_assignment,
        checkpoints=checkpoints,
        heals=new_heals,
        deleted=torch.cat([state.deleted, forget[order]]),
        deleted_shards=torch.cat([state.deleted_shards, shard_of[order]]),
        history=[*state.history, info],
        holdout=new_holdout,
    )
    return reweigh(new_state, datamodule), info
