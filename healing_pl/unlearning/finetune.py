"""Fine-tuning on the remain set ("FT"), the classic approximate-unlearning baseline.

The model keeps training on the remain set R only, for a few epochs, so that catastrophic forgetting wears
the forget set F away (the "Fine-tune" baseline of Golatkar et al., CVPR 2020, "Eternal Sunshine of the
Spotless Net", and of Jia et al., NeurIPS 2023, "Model Sparsity Can Simplify Machine Unlearning", whose code
SalUn reuses).

``optimizer="sgd"`` (the default) runs it as the reference code does: SGD at lr 0.01, momentum 0.9, weight
decay 5e-4, 10 epochs over R in the datamodule's seeded shuffle and batch size, the model in train mode, in the
model's dtype (:func:`healing_pl.unlearning.loop.train_epochs`; no precision plugin).

``optimizer="adam"`` continues the baseline's own recipe instead: a copy of the model is trained by the same quiet
inner Lightning Trainer naive retraining uses (:func:`healing_pl.unlearning.naive.fit_on`: the model's optimiser —
Adam at the baseline's learning rate unless ``lr`` is given — and the outer run's accelerator, devices and
precision). Both are deterministic: no repeats.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch.nn.functional as F

from healing_pl.unlearning.base import UNLEARNERS, Unlearner
from healing_pl.unlearning.loop import make_optimizer, train_epochs
from healing_pl.unlearning.naive import fit_on


def finetune(
    model,
    datamodule,
    forget_ids,
    *,
    epochs: int = 10,
    lr: float | None = 0.01,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    trainer: dict | None = None,
    progress: bool = False,
):
    """A copy of ``model`` (a Classifier) fine-tuned on the remain set for ``epochs`` epochs; ``model`` is untouched.

    ``optimizer`` sgd: SGD(lr, momentum, weight_decay) in a plain loop; adam: the baseline's Lightning recipe with
    ``lr`` (None: the model's own) and ``trainer``'s accelerator, devices and precision
    (see :func:`~healing_pl.unlearning.naive.fit_on`).
    """
    if epochs < 1:
        raise ValueError(f"finetune needs at least 1 epoch, got {epochs}.")
    remain = datamodule.remain_ids(forget_ids)
    out = copy.deepcopy(model).train()  # Lightning keeps a module's mode: train dropout and norms as fit does
    if optimizer == "sgd":
        if lr is None:
            raise ValueError("finetune with optimizer sgd needs a learning rate.")
        loader = datamodule.loader(remain, shuffle=True, batch_size=datamodule.hparams.batch_size)
        opt = make_optimizer(out, "sgd", lr, momentum=momentum, weight_decay=weight_decay)
        train_epochs(out, loader, lambda b: F.cross_entropy(out(b[0]), b[1]), opt, epochs=epochs, progress=progress)
        return out.eval()
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
    strengths = {"lr": (True, 1e-4, 1e-1)}

    def __init__(
        self,
        epochs: int = 10,
        lr: float | None = 0.01,
        optimizer: Literal["sgd", "adam"] = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        **kwargs,
    ):
        """
        Args:
            epochs: epochs on the remain set; reference 10.
            lr: learning rate; reference 0.01 with SGD (None: the baseline's, only with optimizer adam).
            optimizer: sgd (the reference: a plain loop in the model's dtype) or adam (the baseline's own recipe
                through the inner Lightning Trainer, on the outer run's precision).
            momentum: SGD momentum; reference 0.9 (sgd only).
            weight_decay: SGD weight decay; reference 5e-4 (sgd only; adam uses the model's own).
        """
        super().__init__(**kwargs)
        self._at_least({"epochs": epochs}, 1)
        self._positive({"lr": lr})
        self._non_negative({"momentum": momentum, "weight_decay": weight_decay})
        self._one_of("optimizer", optimizer, ("sgd", "adam"))
        if optimizer == "sgd" and lr is None:
            raise ValueError(
                "unlearn.lr must be set when unlearn.optimizer is sgd (None means the baseline's Adam rate)."
            )
        self.epochs, self.lr, self.optimizer, self.momentum, self.weight_decay = (
            epochs,
            lr,
            optimizer,
            momentum,
            weight_decay,
        )

    def run(self, model, datamodule, forget_ids, context, seed):
        out = finetune(
            model,
            datamodule,
            forget_ids,
            epochs=self.epochs,
            lr=self.lr,
            optimizer=self.optimizer,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            trainer=context.trainer,
            progress=context.progress,
        )
        return out, {}
