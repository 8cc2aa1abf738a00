"""Fine-tuning on the remain set ("FT"), the classic approximate-unlearning baseline.

The model keeps training on the remain set R only, for a few epochs, so that catastrophic forgetting wears
the forget set F away (the "Fine-tune" baseline of Golatkar et al., CVPR 2020, "Eternal Sunshine of the
Spotless Net", and of Jia et al., NeurIPS 2023, "Model Sparsity Can Simplify Machine Unlearning").

The fine-tune is the baseline's own recipe continued: a copy of the model is trained by the same quiet inner
Lightning Trainer naive retraining uses (:func:`healing_pl.unlearning.naive.fit_on`: the datamodule's seeded
shuffle and batch size, the model's optimiser — Adam at the baseline's learning rate unless ``lr`` is given — and
the outer run's accelerator, devices and precision). It is deterministic: no repeats.
"""

from __future__ import annotations

import copy

from healing_pl.unlearning.base import UNLEARNERS, Unlearner
from healing_pl.unlearning.naive import fit_on


def finetune(
    model,
    datamodule,
    forget_ids,
    *,
    epochs: int = 2,
    lr: float | None = None,
    trainer: dict | None = None,
    progress: bool = False,
):
    """A copy of ``model`` (a Classifier) fine-tuned on the remain set for ``epochs`` epochs; ``model`` is untouched.

    ``lr``: Adam's learning rate (None: the model's own, the baseline's); ``trainer``: the inner Trainer's
    accelerator, devices and precision (see :func:`~healing_pl.unlearning.naive.fit_on`).
    """
    if epochs < 1:
        raise ValueError(f"finetune needs at least 1 epoch, got {epochs}.")
    remain = datamodule.remain_ids(forget_ids)
    out = copy.deepcopy(model).train()  # Lightning keeps a module's mode: train dropout and norms as fit does
    baseline_lr = out.hparams.lr
    if lr is not None:
        out.hparams.lr = lr  # read by configure_optimizers
    fit_on(out, datamodule, remain, epochs=epochs, trainer=trainer, progress=progress)
    out.hparams.lr = baseline_lr  # the copy keeps the baseline's recipe
    return out


@UNLEARNERS.register
class Finetune(Unlearner):
    """Finetune: fine-tune on the remain set alone.

    The forget set is forgotten catastrophically (:func:`finetune`)."""

    name = "finetune"
    label = "Finetune"

    def __init__(self, epochs: int = 2, lr: float | None = None, **kwargs):
        """
        Args:
            epochs: epochs on the remain set.
            lr: Adam learning rate (None: the baseline's).
        """
        super().__init__(**kwargs)
        self._at_least({"epochs": epochs}, 1)
        self._positive({"lr": lr})
        self.epochs, self.lr = epochs, lr

    def run(self, model, datamodule, forget_ids, context, seed):
        out = finetune(
            model,
            datamodule,
            forget_ids,
            epochs=self.epochs,
            lr=self.lr,
            trainer=context.trainer,
            progress=context.progress,
        )
        return out, {}
