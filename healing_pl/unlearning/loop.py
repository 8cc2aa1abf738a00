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
* :func:`healing_pl.unlearning.salun.salun` (cross-entropy on relabelled forget plus remain, with ``after_step``
  holding the non-salient weights at their start values).

The exception: :func:`healing_pl.unlearning.finetune.finetune` does not use it. It continues the baseline's own
recipe through the inner Lightning Trainer of naive retraining (:func:`healing_pl.unlearning.naive.fit_on`), which
runs on the outer run's accelerator, devices and *precision* (e.g. ``bf16-mixed``) and steps the model's own
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
    progress: bool = False,
    desc: str = "epochs",
) -> None:
    """Train ``model`` for ``epochs`` passes over ``loader``, one optimizer step per batch.

    For each batch: ``loss = objective(to_model(batch, model))``, then ``optimizer.zero_grad(set_to_none=True)``,
    ``loss.backward()``, ``optimizer.step()`` and ``after_step()`` (if given). ``loader`` is iterated afresh every
    epoch (a seeded shuffling DataLoader draws its next order then). The model's mode is left as the caller set it.

    Args:
        model: where batches are moved to (its device and floating dtype); the objective calls it.
        loader: an iterable of batches (a DataLoader).
        objective: the per-batch loss, given the moved batch; it may raise to stop (e.g. on a non-finite loss).
        optimizer: stepped once per batch.
        epochs: passes over ``loader``.
        after_step: called after every step, e.g. to project the weights back onto a constraint.
        progress: show a progress bar over the epochs (``desc`` names it).
    """
    for _ in tqdm(range(epochs), desc=desc, leave=False, disable=not progress):
        for batch in loader:
            loss = objective(to_model(batch, model))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
