"""Membership inference (MIA) on the forget set: does a model still treat the forgotten samples as training data?

The loss-based attack of the NeurIPS 2023 machine-unlearning challenge (Triantafillou et al., "Are we making
progress in unlearning?", starting kit ``simple_mia``): the per-sample cross-entropy losses of the forget set F
(label 1: members, to be forgotten) and of a held-out set of the same size (label 0: never trained on) feed a
logistic regression on the loss, cross-validated (stratified 5-fold, shuffled with the seed); the result is the
mean ROC AUC and accuracy over the folds. 0.5 means the attacker cannot tell F from unseen data (the gold standard's
ideal); near 1, F is recognisable (a model trained on F, or one whose unlearning left F conspicuously wrong).

The held-out set is drawn from the test split of the pool (:func:`heldout_split`; the validation split when the
pool has no test split, as for the official-test datasets): images no model of the run trained on, and an
evaluation set no choice depends on. It is **matched to the forget set's classes** (:func:`draw_heldout_matched`,
what the phases use): for every class, as many held-out images as the forget set has of it (all of them when the
split has fewer, and then the forget set is subsampled, seeded, to the same count per class), so both sides have
the same class histogram. Without the matching, the attack measures the class (a forget set of one class against
held-out images of every class), not membership. :func:`draw_heldout` (unmatched) is kept for comparison. When the
two sides still differ in size, the larger is subsampled (seeded) so that both count alike. A forget set of
mislabelled samples (``data.mislabel``, the data-cleaning setting) is matched on both its true classes and its wrong
labels (:func:`draw_heldout_relabelled`): held-out images of each forget sample's true class, scored against the
forget samples' wrong labels. Scored against their correct labels, the held-out images would have a low loss for
every model, and the attack would separate "trained on a wrong label or not" from "correctly labelled", not
members from non-members.

Beside it, the *population* attack (:func:`population_mia`): the same attack separating the remain set (members of
every model of the run) from the whole held-out split: the membership signal the loss carries for this model and
data at all. A forget-set AUC cannot be expected above it. Every AUC comes with a 95% interval (Hanley and McNeil
1982, from the AUC and the sizes of the two sides). SalUn's MIA-efficacy (:func:`mia_efficacy`, a confidence
attack fitted on remain vs held-out images and applied to the forget set) is recorded beside them, for comparison
with published tables.

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
def sample_losses(
    model, datamodule, ids, batch_size: int | None = None, labels: torch.Tensor | None = None
) -> np.ndarray:
    """Per-sample cross-entropy of ``model`` on the pool samples ``ids`` (eval mode; float64 numpy array), against
    the pool's labels or, when given, ``labels`` (one per id)."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    out, start = [], 0
    for x, y in datamodule.loader(ids, batch_size=batch_size):
        if labels is not None:
            y, start = labels[start : start + len(y)], start + len(y)
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


def draw_heldout_matched(datamodule, forget_ids, seed: int = 0) -> torch.Tensor:
    """Held-out pool ids (of :func:`heldout_split`) with the forget set's class histogram: for every class c with
    k_c forget samples, min(k_c, available) ids of class c drawn without replacement (seeded), in class order."""
    return datamodule.matched_ids(forget_ids, heldout_split(datamodule), seed)


def match_classes(datamodule, forget_ids, heldout_ids, seed: int = 0) -> torch.Tensor:
    """The forget ids subsampled (seeded) to the held-out set's count in every class, where the held-out set has
    fewer; ``forget_ids`` itself when no class is short."""
    targets = datamodule.targets
    forget = torch.as_tensor(forget_ids, dtype=torch.long)
    held = torch.as_tensor(heldout_ids, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    kept, short = [], False
    for c in targets[forget].unique().tolist():
        mine = forget[targets[forget] == c]
        k = int((targets[held] == c).sum())
        if k < mine.numel():
            short = True
            mine = mine[torch.randperm(mine.numel(), generator=generator)[:k]]
        kept.append(mine)
    return torch.cat(kept) if short else forget


def mislabelled_forget_set(datamodule, forget_ids) -> bool:
    """Whether every forget sample carries a label that ``data.mislabel`` replaced (the data-cleaning setting)."""
    flagged = getattr(datamodule, "mislabelled_ids", torch.empty(0, dtype=torch.long))
    return bool(flagged.numel()) and bool(torch.isin(torch.as_tensor(forget_ids), flagged).all())


def draw_heldout_relabelled(datamodule, forget_ids, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Non-members for a mislabelled forget set: held-out images (of :func:`heldout_split`) of the forget samples'
    *true* classes, each given the wrong label of one forget sample of its class, so both sides are images of the
    same classes under the same wrong labels and differ only in membership. Per true class c with k_c forget
    samples, m = min(k_c, available) held-out images of c are drawn (seeded) and paired with a seeded draw of m of
    those forget samples. Returns ``(forget ids kept, held-out ids, the held-out images' labels)``."""
    ids = datamodule.splits[heldout_split(datamodule)]
    truth, labels = datamodule.true_targets, datamodule.targets
    forget = torch.as_tensor(forget_ids, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    kept, held, assigned = [], [], []
    for c in truth[forget].unique().tolist():
        mine, pool = forget[truth[forget] == c], ids[truth[ids] == c]
        m = min(mine.numel(), pool.numel())
        mine = mine[torch.randperm(mine.numel(), generator=generator)[:m]]
        kept.append(mine)
        held.append(pool[torch.randperm(pool.numel(), generator=generator)[:m]])
        assigned.append(labels[mine])
    return torch.cat(kept), torch.cat(held), torch.cat(assigned)


def auc_interval(auc: float, n_pos: int, n_neg: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% interval of an ROC AUC from Hanley and McNeil (1982):
    ``se**2 = (A(1-A) + (n_pos-1)(Q1-A**2) + (n_neg-1)(Q2-A**2)) / (n_pos n_neg)``, ``Q1 = A/(2-A)``,
    ``Q2 = 2A**2/(1+A)``; clipped to [0, 1]."""
    a = float(auc)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    se = float(np.sqrt(max(var, 0.0)))
    return max(0.0, a - z * se), min(1.0, a + z * se)


def attack(members: np.ndarray, nonmembers: np.ndarray, seed: int = 0) -> dict:
    """Cross-validated logistic regression on the losses, members (1) against non-members (0), balanced by a
    seeded subsample of the larger side: ``{"auc", "acc", "n", "auc_low", "auc_high"}`` (means over the folds;
    ``n`` per side; the AUC's 95% interval, :func:`auc_interval`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

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
    # what sklearn's cross_validate(..., scoring=("roc_auc", "accuracy")) computes, fold by fold, without its
    # scorer machinery (a third of the attack's time; the same numbers, tests/test_mia.py)
    aucs, accs = [], []
    for train, test in folds.split(features, labels):
        fitted = LogisticRegression().fit(features[train], labels[train])
        scores = fitted.decision_function(features[test])
        aucs.append(roc_auc_score(labels[test], scores))
        # predict(), without scoring the fold again: a positive score is class 1 (classes_ is [0, 1])
        accs.append(float(np.mean(fitted.classes_[(scores > 0).astype(int)] == labels[test])))
    auc = float(np.mean(aucs))
    low, high = auc_interval(auc, n, n)
    return {"auc": auc, "acc": float(np.mean(accs)), "n": n, "auc_low": low, "auc_high": high}


def mia(
    model, datamodule, forget_ids, heldout_ids: torch.Tensor | None = None, seed: int = 0, matched: bool = False
) -> dict:
    """Loss-based MIA of ``model``: the forget set against the ``heldout_ids`` pool samples (default:
    :func:`draw_heldout` of the forget set's size, or :func:`draw_heldout_matched` with ``matched``). With
    ``matched``, the forget set is first subsampled to the held-out set's class counts (:func:`match_classes`);
    a forget set of mislabelled samples (``data.mislabel``) is matched by :func:`draw_heldout_relabelled` instead
    (held-out images of the same true classes under the same wrong labels).
    Returns ``{"auc", "acc", "n", "auc_low", "auc_high", "forget_loss", "heldout_loss"}`` (mean losses)."""
    forget_ids = datamodule.check_members(forget_ids)
    relabel = None
    if heldout_ids is None and matched and mislabelled_forget_set(datamodule, forget_ids):
        forget_ids, heldout_ids, relabel = draw_heldout_relabelled(datamodule, forget_ids, seed)
    elif heldout_ids is None:
        heldout_ids = (
            draw_heldout_matched(datamodule, forget_ids, seed)
            if matched
            else draw_heldout(datamodule, forget_ids.numel(), seed)
        )
    if matched and relabel is None:
        forget_ids = match_classes(datamodule, forget_ids, heldout_ids, seed)
    heldout = torch.as_tensor(heldout_ids, dtype=torch.long)
    overlap = torch.isin(heldout, datamodule.primary_ids)
    if overlap.any():
        raise ValueError(f"held-out ids must lie outside the primary set, but {heldout[overlap][:5].tolist()} do not.")
    members = sample_losses(model, datamodule, forget_ids)
    nonmembers = sample_losses(model, datamodule, heldout, labels=relabel)
    return {
        **attack(members, nonmembers, seed),
        "forget_loss": float(members.mean()),
        "heldout_loss": float(nonmembers.mean()),
    }


def population_mia(model, datamodule, forget_ids, seed: int = 0) -> dict:
    """The population attack: the remain set (members, 1) against the whole held-out split (0), balanced by a
    seeded subsample of the larger side. ``{"auc", "acc", "n", "auc_low", "auc_high"}``."""
    remain = datamodule.remain_ids(forget_ids)
    heldout = datamodule.splits[heldout_split(datamodule)]
    return attack(sample_losses(model, datamodule, remain), sample_losses(model, datamodule, heldout), seed)


@torch.no_grad()
def sample_confidences(model, datamodule, ids) -> np.ndarray:
    """Per-sample softmax probability of the true label (eval mode; float64 numpy array)."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    out = []
    for x, y in datamodule.loader(ids):
        logits = model(x.to(device=param.device, dtype=param.dtype)).double()
        out.append(torch.softmax(logits, 1).gather(1, y.to(param.device)[:, None])[:, 0].cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


def mia_efficacy(model, datamodule, forget_ids, seed: int = 0) -> float:
    """SalUn's MIA-efficacy (its confidence attack, for comparison with published tables): an RBF SVM
    (``C = 3``, ``gamma = "auto"``) on the true-label confidence, fitted on remain images (members, 1; a seeded
    subsample as large as the held-out split) against the held-out split (0), then applied to the forget set;
    the efficacy is the share of forget images it calls non-members (higher: more forgotten). The held-out split
    is :func:`heldout_split`'s, not class-matched (as the reference)."""
    from sklearn.svm import SVC

    remain = datamodule.remain_ids(forget_ids)
    heldout = datamodule.splits[heldout_split(datamodule)]
    rng = np.random.default_rng(seed)
    members = remain[torch.as_tensor(rng.permutation(remain.numel())[: heldout.numel()])]
    x_in, x_out = sample_confidences(model, datamodule, members), sample_confidences(model, datamodule, heldout)
    features = np.concatenate([x_in, x_out]).reshape(-1, 1)
    labels = np.concatenate([np.ones(len(x_in), dtype=int), np.zeros(len(x_out), dtype=int)])
    svm = SVC(C=3, gamma="auto", kernel="rbf").fit(features, labels)
    forget = sample_confidences(model, datamodule, datamodule.check_members(forget_ids)).reshape(-1, 1)
    return float(1.0 - svm.predict(forget).mean())


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
    interval: tuple[float, float] | None = None  # the forget-set AUC's 95% interval
    population: dict | None = None  # the population attack: {"auc", "acc", "n", "auc_low", "auc_high"}
    matched: bool | None = None  # the held-out images match the forget set's classes
    efficacy: float | None = None  # SalUn's MIA-efficacy on the forget set

    def record(self) -> dict:
        out = {rk.mia(self.prefix, "auc", self.kind): self.auc, rk.mia(self.prefix, "acc", self.kind): self.acc}
        if self.kind != rk.MIA:
            return out | {rk.mia_twins_n(self.prefix): self.n}
        out |= {rk.MIA_HELDOUT: self.heldout, rk.MIA_N: self.n}
        if self.matched is not None:
            out[rk.MIA_MATCHED] = self.matched
        if self.interval is not None:
            out |= {rk.mia(self.prefix, "auc_low"): self.interval[0], rk.mia(self.prefix, "auc_high"): self.interval[1]}
        if self.population is not None:
            pop = self.population
            out |= {rk.mia(self.prefix, f, rk.MIA_POPULATION): pop[f] for f in ("auc", "acc", "auc_low", "auc_high")}
            out[rk.MIA_POPULATION_N] = pop["n"]
        if self.efficacy is not None:
            out[rk.mia_efficacy(self.prefix)] = self.efficacy
        return out


def _rng_kept(model):
    """A context that restores the global torch RNG (CPU and the model's CUDA device) on exit: loaders draw a
    base seed from it, and the MIA must not change what a later phase draws."""
    device = next(model.parameters()).device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda)


def mia_phase(
    model, datamodule, forget_ids, prefix: str, seed: int, heldout_ids=None, matched: bool = True
) -> MiaResult | None:
    """:func:`mia` of ``model`` (on its device; class-matched held-out images unless ``matched`` is False) and
    :func:`population_mia` as a record under ``prefix``; the global RNG is left as it was. None when the forget
    set has fewer than :data:`FOLDS` samples (too few to cross-validate the attack)."""
    if len(forget_ids) < FOLDS:
        return None
    with _rng_kept(model):
        out = mia(model, datamodule, forget_ids, heldout_ids, seed, matched=matched)
        population = population_mia(model, datamodule, forget_ids, seed)
        efficacy = mia_efficacy(model, datamodule, forget_ids, seed)
    interval = (out["auc_low"], out["auc_high"])
    split = heldout_split(datamodule)
    return MiaResult(prefix, out["auc"], out["acc"], out["n"], split, rk.MIA, interval, population, matched, efficacy)


def mia_twins_phase(model, datamodule, forget_ids, twin_ids, prefix: str, seed: int) -> MiaResult | None:
    """:func:`mia_twins` of ``model`` under ``prefix``; None when there are no twins (the R setup) or either side
    has fewer than :data:`FOLDS` samples."""
    if min(len(forget_ids), len(set(int(i) for i in twin_ids))) < FOLDS:
        return None
    with _rng_kept(model):
        out = mia_twins(model, datamodule, forget_ids, twin_ids, seed)
    return MiaResult(prefix, out["auc"], out["acc"], out["n"], kind=rk.MIA_TWINS)
