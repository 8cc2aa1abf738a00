"""The one inner training loop of the unlearning methods that train with plain PyTorch.

:func:`train_epochs` runs ``epochs`` passes over a loader: every batch goes to the model's device and floating
dtype (:func:`~healing_pl.gradients.params.to_model`), the caller's per-batch ``objective`` turns it into a
loss, and the optimizer takes one step (``zero_grad(set_to_none=True)``, ``backward``, ``step``), followed by an
optional ``after_step`` hook. The loop owns nothing else: the model's train/eval mode, the optimizer, the seeds
(the loader's generator, a forked global RNG for dropout) and any other data stream stay with the caller, so a
method keeps its RNG consumption, its batches and its steps exactly as written by hand.

Its users, each with its own objective:

* :func:`healing_pl.unlearning.sisa.fit_plain` (cross-entropy; SISA's slice stages and heal epochs, the naive
  baseline of the benchmarks);
* :func:`healing_pl.unlearning.neggrad_plus.neggrad_plus` (remain descent minus forget ascent, the forget batch
  drawn by the objective);
* :func:`healing_pl.unlearning.scrub.scrub` (two calls per epoch: a max pass over the forget set, then a min pass
  over the remain set, on the one optimizer);
* :func:`healing_pl.unlearning.salun.salun` (cross-entropy on relabelled forget plus remain, with ``before_step``
  masking the gradients of the non-salient weights, as the reference does);
* :func:`healing_pl.unlearning.finetune.finetune` with ``optimizer="sgd"`` (the reference's SGD recipe).

The exception: :func:`healing_pl.unlearning.finetune.finetune` with ``optimizer="adam"`` does not use it. It
continues the baseline's own recipe through the inner Lightning Trainer of naive retraining
(:func:`healing_pl.unlearning.naive.fit_on`), which runs on the outer run's accelerator, devices and *precision*
(e.g. ``bf16-mixed``) and steps the model's own
``configure_optimizers``; this loop has no precision plugin, so moving FT here would change what it computes
whenever the outer run is not plain 32-bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from healing_pl.gradients.params import to_model


def train_epochs(
    model: nn.Module,
    loader: Iterable,
    objective: Callable[[Any], Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int = 1,
    after_step: Callable[[], object] | None = None,
    before_step: Callable[[], object] | None = None,
    progress: bool = False,
    desc: str = "epochs",
) -> None:
    """Train ``model`` for ``epochs`` passes over ``loader``, one optimizer step per batch.

    For each batch: ``loss = objective(to_model(batch, model))``, then ``optimizer.zero_grad(set_to_none=True)``,
    ``loss.backward()``, ``before_step()`` (if given), ``optimizer.step()`` and ``after_step()`` (if given).
    ``loader`` is iterated afresh every epoch (a seeded shuffling DataLoader draws its next order then). The model's
    mode is left as the caller set it.

    Args:
        model: where batches are moved to (its device and floating dtype); the objective calls it.
        loader: an iterable of batches (a DataLoader).
        objective: the per-batch loss, given the moved batch; it may raise to stop (e.g. on a non-finite loss).
        optimizer: stepped once per batch.
        epochs: passes over ``loader``.
        after_step: called after every step, e.g. to project the weights back onto a constraint.
        before_step: called between ``backward`` and ``step``, e.g. to mask the gradients (SalUn).
        progress: show a progress bar over the epochs (``desc`` names it).
    """
    for _ in tqdm(range(epochs), desc=desc, leave=False, disable=not progress):
        for batch in loader:
            loss = objective(to_model(batch, model))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if before_step is not None:
                before_step()
            optimizer.step()
            if after_step is not None:
                after_step()


def make_optimizer(
    model: nn.Module, kind: str, lr: float, *, momentum: float = 0.9, weight_decay: float | None = None
) -> torch.optim.Optimizer:
    """The optimizer of an unlearning method over ``model``'s trainable parameters.

    ``kind`` ``sgd``: ``torch.optim.SGD(lr, momentum, weight_decay)`` (the reference codes' optimizer; weight decay
    default 0). ``kind`` ``adam``: ``torch.optim.Adam(lr, weight_decay)`` (weight decay default: the model's own,
    the baseline's optimiser)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay or 0.0)
    if kind == "adam":
        if weight_decay is None:
            weight_decay = float(getattr(model, "hparams", {}).get("weight_decay", 0.0) or 0.0)
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"the optimizer must be sgd or adam, got {kind!r}.")
