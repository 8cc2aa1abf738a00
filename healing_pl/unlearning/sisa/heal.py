"""Healing SISA after unlearning: fine-tune the affected shards on their remaining data plus twins.

Healing
-------
:func:`heal_sisa` fine-tunes the shards that held unlearned requests on their
remaining data plus the twins (backup samples) chosen for those requests.
Every heal step is recorded in ``state.heals[shard]`` (its twin ids, epochs,
lr, seed and resulting weights), so a shard model is always a deterministic
function of its primary slices and its heal steps, and later unlearning stays
exact by construction: see :func:`heal_sisa`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

from healing_pl.unlearning.sisa.common import _adam, _cpu, _ids, _model_from, seed_for
from healing_pl.unlearning.sisa.protocol import holdout_accuracies, reweigh
from healing_pl.unlearning.sisa.state import SisaEnsemble, SisaState
from healing_pl.unlearning.sisa.train import fit_plain


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
                if state.protocol == "paper":  # the vote weighted by the healed shards' held-out accuracies
                    ensemble.vote_weights = holdout_accuracies(models, state.holdout, datamodule, state.batch_size)
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
    return reweigh(replace(state, ensemble=ensemble, heals=heals), datamodule)
