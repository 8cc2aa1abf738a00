"""SCRUB: teacher-student unlearning by alternating max- and min-steps.

Kurmanji, Triantafillou, Hayes and Triantafillou, NeurIPS 2023, "Towards Unbounded Machine Unlearning".
The teacher is the original model (frozen, eval mode); the student starts as its copy. Each epoch:

* max-steps (the first ``msteps`` epochs only): one pass over the forget set F maximising
  ``KL(teacher || student)`` on F (the student moves away from the teacher there);
* min-steps: one pass over the remain set R minimising ``gamma * CE + alpha * KL(teacher || student)``
  (the student stays the teacher on R).

The KL is the distillation loss of the paper's code: ``T**2 * KL(softmax(t / T) || softmax(s / T))`` per sample.
Defaults follow the paper's code (``T = 4``, ``alpha = 0.001``, ``gamma = 0.99``, ``msteps = 2``) with three epochs
for these small models; Adam at the baseline's learning rate and batch size replaces the paper's SGD. The batch
orders come from the seed. Every op runs on the model's device and in its dtype.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from healing_pl.gradients.params import eval_mode
from healing_pl.unlearning.base import UNLEARNERS, StochasticUnlearner, learning_rate
from healing_pl.unlearning.loop import train_epochs
from healing_pl.unlearning.neggrad_plus import adam_for


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    log_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_s, p_t, reduction="batchmean") * temperature**2


def scrub(
    model,
    datamodule,
    forget_ids,
    *,
    lr: float,
    epochs: int = 3,
    msteps: int = 2,
    alpha: float = 0.001,
    gamma: float = 0.99,
    temperature: float = 4.0,
    batch_size: int | None = None,
    seed: int = 0,
):
    """The SCRUB student of ``model`` (a new model; ``model``, the teacher, is untouched)."""
    if epochs < 1 or not 0 <= msteps <= epochs:
        raise ValueError(f"scrub needs epochs >= 1 and 0 <= msteps <= epochs, got epochs={epochs}, msteps={msteps}.")
    if temperature <= 0:
        raise ValueError(f"scrub needs a positive temperature, got {temperature}.")
    remain = datamodule.remain_ids(forget_ids)
    size = batch_size or datamodule.hparams.batch_size
    remain_loader = datamodule.loader(remain, shuffle=True, batch_size=size, seed=seed)
    forget_loader = datamodule.loader(forget_ids, shuffle=True, batch_size=size, seed=seed + 1)
    student = copy.deepcopy(model).train()
    optimizer = adam_for(student, lr)

    def teacher_logits(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    def max_step(batch) -> torch.Tensor:  # away from the teacher on F
        x, _ = batch
        teacher = teacher_logits(x)
        return -distill_kl(student(x), teacher, temperature)

    def min_step(batch) -> torch.Tensor:  # the teacher's on R
        x, y = batch
        teacher = teacher_logits(x)
        logits = student(x)
        return gamma * F.cross_entropy(logits, y) + alpha * distill_kl(logits, teacher, temperature)

    with eval_mode(model):
        for epoch in range(epochs):
            if epoch < msteps:
                train_epochs(student, forget_loader, max_step, optimizer)
            train_epochs(student, remain_loader, min_step, optimizer)
    return student.eval()


@UNLEARNERS.register
class SCRUB(StochasticUnlearner):
    """SCRUB (Kurmanji et al. 2023).

    A student distilled from the original model on the remain set (min steps) and pushed away from it on the
    forget set (max steps) (:func:`scrub`)."""

    name = "scrub"
    label = "SCRUB"

    def __init__(
        self,
        epochs: int = 3,
        msteps: int = 2,
        alpha: float = 0.001,
        gamma: float = 0.99,
        temperature: float = 4.0,
        lr: float | None = None,
        **kwargs,
    ):
        """
        Args:
            epochs: epochs (each a min-step pass over the remain set).
            msteps: the first epochs that also make a max-step pass over the forget set.
            alpha: weight of the KL to the teacher in the min-steps.
            gamma: weight of the cross-entropy in the min-steps.
            temperature: distillation temperature T.
            lr: Adam learning rate (None: the baseline's).
        """
        super().__init__(**kwargs)
        self._positive({"lr": lr})
        self.lr = lr
        self._at_least({"epochs": epochs}, 1)
        if not 0 <= msteps <= epochs:
            raise ValueError(f"unlearn.msteps must lie in [0, epochs={epochs}], got {msteps}.")
        self._non_negative({"alpha": alpha, "gamma": gamma})
        self._positive({"temperature": temperature})
        self.epochs, self.msteps, self.alpha, self.gamma, self.temperature = epochs, msteps, alpha, gamma, temperature

    def run(self, model, datamodule, forget_ids, context, seed):
        out = scrub(
            model,
            datamodule,
            forget_ids,
            lr=learning_rate(self.lr, model),
            epochs=self.epochs,
            msteps=self.msteps,
            alpha=self.alpha,
            gamma=self.gamma,
            temperature=self.temperature,
            seed=seed,
        )
        return out, {}
