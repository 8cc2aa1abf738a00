"""SSD: selective synaptic dampening.

Foster, Schoepf and Brintrup, AAAI 2024, "Fast Machine Unlearning Without Retraining Through Selective Synaptic
Dampening". Retraining-free: the importance of each weight is its diagonal Fisher information, over the full
training data D (here the primary set, which holds the forget set) and over the forget set F
(:func:`healing_pl.gradients.fisher.diagonal_fisher`, empirical: the squared per-sample gradients of the
cross-entropy at the true labels, averaged). Weights far more important to F than to D are dampened:

    where  I_F > alpha * I_D:   theta  <-  theta * min(lambda * I_D / I_F, 1)

Defaults are the paper's: ``lambda = 1`` (dampening constant), ``alpha = 10`` (selection weighting). No
randomness, no training: one pass over D and one over F, on the model's device and in its dtype.
"""

from __future__ import annotations

import copy

import torch

from healing_pl.gradients.fisher import diagonal_fisher
from healing_pl.gradients.params import trainable_named_parameters
from healing_pl.unlearning.base import UNLEARNERS, Unlearner


def ssd(
    model,
    datamodule,
    forget_ids,
    *,
    lam: float = 1.0,
    alpha: float = 10.0,
    batch_size: int = 512,
    progress: bool = False,
):
    """A dampened copy of ``model`` (``model`` untouched) and ``{"dampened_fraction"}``: the share of weights
    selected."""
    if lam <= 0 or alpha <= 0:
        raise ValueError(f"ssd needs a positive lambda and alpha, got lambda={lam}, alpha={alpha}.")
    forget_ids = datamodule.check_members(forget_ids)
    importance_d = diagonal_fisher(
        model, datamodule.loader(datamodule.primary_ids, batch_size=batch_size), "empirical", progress=progress
    )
    importance_f = diagonal_fisher(model, datamodule.loader(forget_ids, batch_size=batch_size), "empirical")
    out = copy.deepcopy(model)
    selected = total = 0
    with torch.no_grad():
        for name, p in trainable_named_parameters(out):
            d, f = importance_d[name].to(p.dtype), importance_f[name].to(p.dtype)
            select = f > alpha * d
            factor = (lam * d / torch.where(select, f, torch.ones_like(f))).clamp(max=1.0)
            p.mul_(torch.where(select, factor, torch.ones_like(factor)))
            selected += int(select.sum())
            total += select.numel()
    return out.eval(), {"dampened_fraction": selected / max(total, 1)}


@UNLEARNERS.register
class SSD(Unlearner):
    """SSD: selective synaptic dampening (Foster et al. 2024).

    Dampens the weights far more important to the forget set than to the training data (:func:`ssd`)."""

    name = "ssd"
    label = "SSD"

    def __init__(self, lam: float = 1.0, alpha: float = 10.0, batch_r: int = 512, **kwargs):
        """
        Args:
            lam: dampening constant lambda (selected weights scale by min(lambda I_D / I_F, 1)).
            alpha: selection weighting alpha (weights with I_F > alpha I_D are dampened).
            batch_r: batch size of the importance passes over the training data and the forget set.
        """
        super().__init__(**kwargs)
        self._positive({"lam": lam, "alpha": alpha})
        self._at_least({"batch_r": batch_r}, 1)
        self.lam, self.alpha, self.batch_r = lam, alpha, batch_r

    def run(self, model, datamodule, forget_ids, context, seed):
        return ssd(
            model,
            datamodule,
            forget_ids,
            lam=self.lam,
            alpha=self.alpha,
            batch_size=self.batch_r,
            progress=context.progress,
        )
