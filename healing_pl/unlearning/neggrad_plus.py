"""NegGrad+: gradient descent on the remain set with gradient ascent on the forget set, in one loss.

Kurmanji, Triantafillou, Hayes and Triantafillou, NeurIPS 2023, "Towards Unbounded Machine Unlearning"
(the strong NegGrad baseline of the SCRUB paper). Each step takes one batch of the remain set R and one of the
forget set F (F cycles, in a fresh seeded order each pass) and minimises

    alpha * CE(R batch) - (1 - alpha) * CE(F batch)

Defaults: ``alpha = 0.99`` (the paper tunes it in [0.9, 0.9999]; the ascent term is unbounded, so it must stay
small), two epochs over R, Adam at the baseline's learning rate and batch size (the paper uses SGD at its own
models' rates; these small models are trained with Adam). Every op runs on the model's device and in its dtype.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from healing_pl.gradients.params import cycle, to_model
from healing_pl.unlearning.base import UNLEARNERS, StochasticUnlearner, learning_rate
from healing_pl.unlearning.loop import train_epochs


def adam_for(model, lr: float) -> torch.optim.Adam:
    """Adam over the trainable parameters at ``lr`` with the model's weight decay (the baseline's optimiser)."""
    decay = float(getattr(model, "hparams", {}).get("weight_decay", 0.0) or 0.0)
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=decay)


def neggrad_plus(
    model,
    datamodule,
    forget_ids,
    *,
    lr: float,
    alpha: float = 0.99,
    epochs: int = 2,
    batch_size: int | None = None,
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
        return alpha * F.cross_entropy(out(xr), yr) - (1.0 - alpha) * F.cross_entropy(out(xf), yf)

    train_epochs(out, remain_loader, objective, adam_for(out, lr), epochs=epochs)
    return out.eval()


@UNLEARNERS.register
class NegGradPlus(StochasticUnlearner):
    """NegGrad+ (Kurmanji et al. 2023).

    Descend the remain loss and ascend the forget loss, alpha * L_R - (1 - alpha) * L_F (:func:`neggrad_plus`)."""

    name = "neggrad_plus"
    label = "NegGrad+"

    def __init__(self, alpha: float = 0.99, epochs: int = 2, lr: float | None = None, **kwargs):
        """
        Args:
            alpha: weight of the remain loss in alpha * L_R - (1 - alpha) * L_F, in [0, 1].
            epochs: epochs over the remain set.
            lr: Adam learning rate (None: the baseline's).
        """
        super().__init__(**kwargs)
        self._positive({"lr": lr})
        self.lr = lr
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"unlearn.alpha must lie in [0, 1], got {alpha}.")
        self._at_least({"epochs": epochs}, 1)
        self.alpha, self.epochs = alpha, epochs

    def run(self, model, datamodule, forget_ids, context, seed):
        out = neggrad_plus(
            model,
            datamodule,
            forget_ids,
            lr=learning_rate(self.lr, model),
            alpha=self.alpha,
            epochs=self.epochs,
            seed=seed,
        )
        return out, {}
