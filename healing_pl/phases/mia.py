"""Membership inference (MIA) on the forget set: does a model still treat the forgotten samples as training data?

The loss-based attack of the NeurIPS 2023 machine-unlearning challenge (Triantafillou et al., "Are we making
progress in unlearning?", starting kit ``simple_mia``): the per-sample cross-entropy losses of the forget set F
(label 1: members, to be forgotten) and of a held-out set of the same size (label 0: never trained on) feed a
logistic regression on the loss, cross-validated (stratified 5-fold, shuffled with the seed); the result is the
mean ROC AUC and accuracy over the folds. 0.5 means the attacker cannot tell F from unseen data (the gold standard's
ideal); near 1, F is recognisable (a model trained on F, or one whose unlearning left F conspicuously wrong).

The held-out set is the test split of the pool (:func:`draw_heldout`; the validation split when the pool has no
test split): an evaluation set no choice depends on. When F and the held-out set differ in size, the larger is
subsampled (seeded) so that both classes count alike.

:func:`mia_twins` is the variant for healed models: the same attack separating the forget set from the twins
that replaced it (label 1: twins, trained on during healing; label 0: the forget set). Near 0.5, the healed model
treats the forgotten samples like the twins it trained on (healing brought them back as members); near 1, it
tells them apart.

Losses are computed on the model's device and in its dtype (eval mode, no gradient); only the loss values go to
the CPU for scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from healing_pl import records as rk

FOLDS = 5


@torch.no_grad()
def sample_losses(model, datamodule, ids, batch_size: int | None = None) -> np.ndarray:
    """Per-sample cross-entropy of ``model`` on the pool samples ``ids`` (eval mode; float64 numpy array)."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    out = []
    for x, y in datamodule.loader(ids, batch_size=batch_size):
        logits = model(x.to(device=param.device, dtype=param.dtype))
        out.append(F.cross_entropy(logits, y.to(param.device), reduction="none").cpu())
    model.train(was_training)
    return torch.cat(out).double().numpy()


def heldout_split(datamodule) -> str:
    """The split :func:`draw_heldout` draws from: ``test``, or ``val`` when the pool has no test split."""
    for split in ("test", "val"):
        if datamodule.splits[split].numel():
            return split
    raise ValueError("the MIA needs held-out samples, but the pool has neither a test nor a validation split.")


def draw_heldout(datamodule, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` pool ids (seeded draw, or all when fewer) of the test split, or of the validation split when the pool
    has no test split (datasets whose test set lies outside the pool)."""
    ids = datamodule.splits[heldout_split(datamodule)]
    order = torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(seed))
    return ids[order[: min(n, ids.numel())]]


def attack(members: np.ndarray, nonmembers: np.ndarray, seed: int = 0) -> dict:
    """Cross-validated logistic regression on the losses, members (1) against non-members (0), balanced by a
    seeded subsample of the larger side: ``{"auc", "acc", "n"}`` (means over the folds; ``n`` per side)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_validate

    n = min(len(members), len(nonmembers))
    if n < FOLDS:
        raise ValueError(
            f"the MIA needs at least {FOLDS} samples on each side, got {len(members)} and {len(nonmembers)}."
        )
    rng = np.random.default_rng(seed)
    members = members[rng.permutation(len(members))[:n]] if len(members) > n else members
    nonmembers = nonmembers[rng.permutation(len(nonmembers))[:n]] if len(nonmembers) > n else nonmembers
    if not (np.isfinite(members).all() and np.isfinite(nonmembers).all()):
        raise ValueError("the MIA got non-finite losses: the model's outputs are not finite.")
    features = np.concatenate([members, nonmembers]).reshape(-1, 1)
    labels = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    scores = cross_validate(LogisticRegression(), features, labels, cv=folds, scoring=("roc_auc", "accuracy"))
    return {"auc": float(scores["test_roc_auc"].mean()), "acc": float(scores["test_accuracy"].mean()), "n": n}


def mia(model, datamodule, forget_ids, heldout_ids: torch.Tensor | None = None, seed: int = 0) -> dict:
    """Loss-based MIA of ``model``: the forget set against the ``heldout_ids`` pool samples (default:
    :func:`draw_heldout` of the forget set's size). Returns ``{"auc", "acc", "n", "forget_loss", "heldout_loss"}``
    (mean losses)."""
    forget_ids = datamodule.check_members(forget_ids)
    if heldout_ids is None:
        heldout_ids = draw_heldout(datamodule, forget_ids.numel(), seed)
    heldout = torch.as_tensor(heldout_ids, dtype=torch.long)
    overlap = torch.isin(heldout, datamodule.primary_ids)
    if overlap.any():
        raise ValueError(f"held-out ids must lie outside the primary set, but {heldout[overlap][:5].tolist()} do not.")
    members = sample_losses(model, datamodule, forget_ids)
    nonmembers = sample_losses(model, datamodule, heldout)
    return {
        **attack(members, nonmembers, seed),
        "forget_loss": float(members.mean()),
        "heldout_loss": float(nonmembers.mean()),
    }


def mia_twins(model, datamodule, forget_ids, twin_ids, seed: int = 0) -> dict:
    """MIA of a healed model separating its twins (members, 1) from the forget set (0).
    Returns ``{"auc", "acc", "n", "forget_loss", "twin_loss"}``."""
    forget_ids = datamodule.check_members(forget_ids)
    twins = torch.as_tensor(twin_ids, dtype=torch.long).unique()
    if twins.numel() == 0:
        raise ValueError("mia_twins needs twins; this heal set has none (twins.metric none).")
    forget = sample_losses(model, datamodule, forget_ids)
    twin = sample_losses(model, datamodule, twins)
    return {**attack(twin, forget, seed), "forget_loss": float(forget.mean()), "twin_loss": float(twin.mean())}


# --------------------------------------------------------------------------- the phase result
@dataclass(frozen=True)
class MiaResult:
    """One model's MIA figures. ``prefix``: baseline, gold, unlearned or healed; ``kind``: ``mia`` (forget set
    against held-out samples of the ``heldout`` split) or ``mia_twins`` (twins against the forget set)."""

    prefix: str
    auc: float
    acc: float
    n: int
    heldout: str | None = None
    kind: str = rk.MIA

    def record(self) -> dict:
        out = {rk.mia(self.prefix, "auc", self.kind): self.auc, rk.mia(self.prefix, "acc", self.kind): self.acc}
        if self.kind == rk.MIA:
            return out | {rk.MIA_HELDOUT: self.heldout, rk.MIA_N: self.n}
        return out | {rk.mia_twins_n(self.prefix): self.n}


def _rng_kept(model):
    """A context that restores the global torch RNG (CPU and the model's CUDA device) on exit: loaders draw a
    base seed from it, and the MIA must not change what a later phase draws."""
    device = next(model.parameters()).device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda)


def mia_phase(model, datamodule, forget_ids, prefix: str, seed: int, heldout_ids=None) -> MiaResult | None:
    """:func:`mia` of ``model`` (on its device) as a record under ``prefix``; the global RNG is left as it was.
    None when the forget set has fewer than :data:`FOLDS` samples (too few to cross-validate the attack)."""
    if len(forget_ids) < FOLDS:
        return None
    with _rng_kept(model):
        out = mia(model, datamodule, forget_ids, heldout_ids, seed)
    return MiaResult(prefix, out["auc"], out["acc"], out["n"], heldout_split(datamodule))


def mia_twins_phase(model, datamodule, forget_ids, twin_ids, prefix: str, seed: int) -> MiaResult | None:
    """:func:`mia_twins` of ``model`` under ``prefix``; None when there are no twins (the R setup) or either side
    has fewer than :data:`FOLDS` samples."""
    if min(len(forget_ids), len(set(int(i) for i in twin_ids))) < FOLDS:
        return None
    with _rng_kept(model):
        out = mia_twins(model, datamodule, forget_ids, twin_ids, seed)
    return MiaResult(prefix, out["auc"], out["acc"], out["n"], kind=rk.MIA_TWINS)
