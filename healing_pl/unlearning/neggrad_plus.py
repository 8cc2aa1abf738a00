"""NegGrad+: gradient descent on the remain set with gradient ascent on the forget set, in one loss.

Kurmanji, Triantafillou, Hayes and Triantafillou, NeurIPS 2023, "Towards Unbounded Machine Unlearning"
(the strong NegGrad baseline of the SCRUB paper). As the reference code runs it: each step takes one batch of
the remain set R and one of the forget set F (the remain loader drives the epoch; F cycles, in a fresh seeded
order each pass) and minimises

    alpha * CE(R batch) - (1 - alpha) * CE(F batch)

with SGD (momentum 0.9, weight decay 5e-4) for 5 epochs over R at lr 0.01, the model in train mode.

``alpha``: the published NegGrad+ runs tune it per setting, from 0.95 to 0.9999; the default here is **0.95**
(the low end, the strongest ascent of that range: on small forget sets the ascent term acts on only a few
batches per epoch). The ascent term is unbounded, so ``alpha`` must stay close to 1; tune it on validation
against the gold standard (``healing-pl calibrate --against_gold``). ``optimizer="adam"`` (``lr`` None: the
baseline's) is kept as an option. Every op runs on the model's device and in its dtype.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F

from healing_pl.gradients.params import cycle, to_model
from healing_pl.unlearning.base import UNLEARNERS, StochasticUnlearner, learning_rate
from healing_pl.unlearning.loop import make_optimizer, train_epochs


def neggrad_plus_loss(logits_r, y_r, logits_f, y_f, alpha: float) -> torch.Tensor:
    """``alpha * CE(R batch) - (1 - alpha) * CE(F batch)`` (batch-mean cross-entropies)."""
    return alpha * F.cross_entropy(logits_r, y_r) - (1.0 - alpha) * F.cross_entropy(logits_f, y_f)


def neggrad_plus(
    model,
    datamodule,
    forget_ids,
    *,
    lr: float,
    alpha: float = 0.95,
    epochs: int = 5,
    batch_size: int | None = None,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float | None = 5e-4,
    seed: int = 0,
):
    """A copy of ``model`` trained ``epochs`` epochs over R on ``alpha * L_R - (1 - alpha) * L_F``; ``model`` is
    untouched. The batch orders come from ``seed``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"neggrad_plus needs alpha in [0, 1], got {alpha}.")
    if epochs < 1:
        raise ValueError(f"neggrad_plus needs at least 1 epoch, got {epochs}.")
    remain = datamodule.remain_ids(forget_ids)
    size = batch_size or datamodule.hparams.batch_size
    remain_loader = datamodule.loader(remain, shuffle=True, batch_size=size, seed=seed)
    forget_batches = cycle(datamodule.loader(forget_ids, shuffle=True, batch_size=size, seed=seed + 1))
    out = copy.deepcopy(model).train()

    def objective(batch) -> torch.Tensor:
        xr, yr = batch
        xf, yf = to_model(next(forget_batches), out)
        return neggrad_plus_loss(out(xr), yr, out(xf), yf, alpha)

    opt = make_optimizer(out, optimizer, lr, momentum=momentum, weight_decay=weight_decay)
    train_epochs(out, remain_loader, objective, opt, epochs=epochs)
    return out.eval()


@UNLEARNERS.register
class NegGradPlus(StochasticUnlearner):
    """NegGrad+ (Kurmanji et al. 2023).

    Descend the remain loss and ascend the forget loss, alpha * L_R - (1 - alpha) * L_F (:func:`neggrad_plus`)."""

    name = "neggrad_plus"
    label = "NegGrad+"
    strengths = {"alpha": (False, 0.5, 0.9999)}

    def __init__(
        self,
        alpha: float = 0.95,
        epochs: int = 5,
        lr: float | None = 0.01,
        optimizer: Literal["sgd", "adam"] = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        **kwargs,
    ):
        """
        Args:
            alpha: weight of the remain loss in alpha * L_R - (1 - alpha) * L_F, in [0, 1]; the published runs
                tune it in [0.95, 0.9999]; default 0.95.
            epochs: epochs over the remain set; reference 5.
            lr: learning rate; reference 0.01 with SGD (None: the baseline's, meant for optimizer adam).
            optimizer: sgd (the reference) or adam (this suite's baselines' optimizer).
            momentum: SGD momentum; reference 0.9.
            weight_decay: weight decay; reference 5e-4.
        """
        super().__init__(**kwargs)
        self._positive({"lr": lr})
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"unlearn.alpha must lie in [0, 1], got {alpha}.")
        self._at_least({"epochs": epochs}, 1)
        self._non_negative({"momentum": momentum, "weight_decay": weight_decay})
        self._one_of("optimizer", optimizer, ("sgd", "adam"))
        self.alpha, self.epochs, self.lr = alpha, epochs, lr
        self.optimizer, self.momentum, self.weight_decay = optimizer, momentum, weight_decay

    def run(self, model, datamodule, forget_ids, context, seed):
        out = neggrad_plus(
            model,
            datamodule,
            forget_ids,
            lr=learning_rate(self.lr, model),
            alpha=self.alpha,
            epochs=self.epochs,
            optimizer=self.optimizer,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            seed=seed,
        )
        return out, {}
