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

from healing_pl.unlearning._params import cycle, to_model


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
    optimizer = adam_for(out, lr)
    for _ in range(epochs):
        for batch in remain_loader:
            xr, yr = to_model(batch, out)
            xf, yf = to_model(next(forget_batches), out)
            loss = alpha * F.cross_entropy(out(xr), yr) - (1.0 - alpha) * F.cross_entropy(out(xf), yf)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return out.eval()
