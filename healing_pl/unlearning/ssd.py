"""SSD: selective synaptic dampening.

Foster, Schoepf and Brintrup, AAAI 2024, "Fast Machine Unlearning Without Retraining Through Selective Synaptic
Dampening". Retraining-free: the importance of each weight is computed over the full training data D (here the
primary set, which holds the forget set) and over the forget set F, and weights far more important to F than to
D are dampened:

    where  I_F > alpha * I_D:   theta  <-  theta * min(lambda * I_D / I_F, 1)

The importance, as the authors' code computes it (``importance="batch_mean"``, the default): the model in eval
mode, one pass over the data in batches of ``batch_size`` (reference: 128), and for every batch the gradient of
the batch's *mean* cross-entropy at the true labels, squared; the importance is the mean of those squares over
the batches:

    I = (1 / B) * sum_b ( grad (1/|b|) sum_{i in b} CE_i )**2

This is not the per-sample empirical Fisher (the squared gradient of each sample, averaged): squaring a mean of
n gradients shrinks the noise part by about 1/n, so **the result depends on the batch size** (and on how the
data falls into batches: the passes here are in pool order, unshuffled). A larger batch lowers I_D more than I_F
(F is small and homogeneous), so more weights are selected. ``importance="per_sample"`` is the per-sample
empirical Fisher (:func:`healing_pl.gradients.fisher.diagonal_fisher`), kept for comparison: at the reference
alpha it selects far fewer weights.

Defaults are the reference's: ``lam = 1`` (dampening constant), ``alpha = 10`` (selection weighting), batch 128.
No randomness, no training: one pass over D and one over F, on the model's device and in its dtype.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F

from healing_pl.gradients.fisher import diagonal_fisher
from healing_pl.gradients.params import eval_mode, to_model, trainable_named_parameters
from healing_pl.unlearning.base import UNLEARNERS, Unlearner

IMPORTANCES = ("batch_mean", "per_sample")


def batch_mean_importance(model, loader) -> dict[str, torch.Tensor]:
    """``{name: I}`` with I the mean over ``loader``'s batches of the squared gradient of the batch-mean
    cross-entropy (the model in eval mode; ``model`` is left unchanged)."""
    named = trainable_named_parameters(model)
    params = [p for _, p in named]
    total = [torch.zeros_like(p) for p in params]
    batches = 0
    with eval_mode(model):
        for batch in loader:
            x, y = to_model(batch, model)
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
            for t, g in zip(total, grads, strict=True):
                t.add_(g.detach() ** 2)
            batches += 1
    if batches == 0:
        raise ValueError("SSD's importance needs at least one batch.")
    return {name: t / batches for (name, _), t in zip(named, total, strict=True)}


def dampen(model, importance_d: dict, importance_f: dict, lam: float, alpha: float) -> float:
    """Dampen ``model`` in place: where ``I_F > alpha I_D``, ``theta *= min(lam I_D / I_F, 1)``. Returns the
    share of weights selected."""
    selected = total = 0
    with torch.no_grad():
        for name, p in trainable_named_parameters(model):
            d, f = importance_d[name].to(p.dtype), importance_f[name].to(p.dtype)
            select = f > alpha * d
            factor = (lam * d / torch.where(select, f, torch.ones_like(f))).clamp(max=1.0)
            p.mul_(torch.where(select, factor, torch.ones_like(factor)))
            selected += int(select.sum())
            total += select.numel()
    return selected / max(total, 1)


def ssd(
    model,
    datamodule,
    forget_ids,
    *,
    lam: float = 1.0,
    alpha: float = 10.0,
    batch_size: int = 128,
    importance: str = "batch_mean",
    progress: bool = False,
):
    """A dampened copy of ``model`` (``model`` untouched) and ``{"dampened_fraction"}``: the share of weights
    selected."""
    if lam <= 0 or alpha <= 0:
        raise ValueError(f"ssd needs a positive lambda and alpha, got lambda={lam}, alpha={alpha}.")
    if importance not in IMPORTANCES:
        raise ValueError(f"ssd's importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}.")
    forget_ids = datamodule.check_members(forget_ids)
    full = datamodule.loader(datamodule.primary_ids, batch_size=batch_size)
    forget = datamodule.loader(forget_ids, batch_size=batch_size)
    if importance == "batch_mean":
        importance_d, importance_f = batch_mean_importance(model, full), batch_mean_importance(model, forget)
    else:
        importance_d = diagonal_fisher(model, full, "empirical", progress=progress)
        importance_f = diagonal_fisher(model, forget, "empirical")
    out = copy.deepcopy(model)
    fraction = dampen(out, importance_d, importance_f, lam, alpha)
    return out.eval(), {"dampened_fraction": fraction}


@UNLEARNERS.register
class SSD(Unlearner):
    """SSD: selective synaptic dampening (Foster et al. 2024).

    Dampens the weights far more important to the forget set than to the training data (:func:`ssd`). The
    importance is the reference's mean over batches of the squared batch-mean gradient, so the result depends on
    the batch size (--unlearn.batch_r)."""

    name = "ssd"
    label = "SSD"
    strengths = {"alpha": (False, 1.0, 100.0)}

    def __init__(
        self,
        lam: float = 1.0,
        alpha: float = 10.0,
        batch_r: int = 128,
        importance: Literal["batch_mean", "per_sample"] = "batch_mean",
        **kwargs,
    ):
        """
        Args:
            lam: dampening constant lambda (selected weights scale by min(lambda I_D / I_F, 1)); reference 1.
            alpha: selection weighting alpha (weights with I_F > alpha I_D are dampened); reference 10.
            batch_r: batch size of the importance passes over the training data and the forget set; reference
                128. The importance, and so which weights are dampened, depends on it.
            importance: batch_mean (the reference: mean over batches of the squared batch-mean gradient) or
                per_sample (the per-sample empirical Fisher; selects far fewer weights at the same alpha).
        """
        super().__init__(**kwargs)
        self._positive({"lam": lam, "alpha": alpha})
        self._at_least({"batch_r": batch_r}, 1)
        self._one_of("importance", importance, IMPORTANCES)
        self.lam, self.alpha, self.batch_r, self.importance = lam, alpha, batch_r, importance

    def run(self, model, datamodule, forget_ids, context, seed):
        return ssd(
            model,
            datamodule,
            forget_ids,
            lam=self.lam,
            alpha=self.alpha,
            batch_size=self.batch_r,
            importance=self.importance,
            progress=context.progress,
        )
