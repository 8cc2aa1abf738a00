"""SCRUB: teacher-student unlearning by alternating max- and min-steps.

Kurmanji, Triantafillou, Hayes and Triantafillou, NeurIPS 2023, "Towards Unbounded Machine Unlearning".
The teacher is the original model (frozen, eval mode); the student starts as its copy (train mode). Each epoch
``e = 1..epochs``, as the authors' code runs it:

* the learning rate is ``lr * decay_rate ** k``, with k the number of the reference's decay epochs (3, 5, 9) that
  ``e`` is past (epochs 4 and 5 at ``lr / 10`` with the defaults);
* max-steps (the first ``msteps`` epochs only): one pass over the forget set F in batches of ``forget_batch``,
  minimising ``-KL(teacher || student)`` on F (the student moves away from the teacher there);
* min-steps: one pass over the remain set R in batches of ``batch_size``, minimising
  ``gamma * CE + alpha * KL(teacher || student)`` (the student stays the teacher on R).

The KL is the reference's distillation loss: ``T**2 * KL(softmax(t / T) || softmax(s / T))``, summed over the
batch and divided by its size. One optimizer (SGD with momentum and weight decay, as the reference) takes both
kinds of step.

Defaults: the reference's **small-set** settings (its configuration for forget sets of tens to hundreds of
samples): ``alpha = 0.5``, ``gamma = 1``, ``T = 4``, ``msteps = 3``, 5 epochs, forget batch 32, remain batch 128,
SGD at ``lr = 5e-4``, momentum 0.9, weight decay 5e-4, decay rate 0.1. The reference's **large-scale** preset is
reachable by knobs: ``--unlearn.alpha 0.001 --unlearn.gamma 0.99 --unlearn.msteps 2 --unlearn.forget_batch 512``.

The first max-step is inert: while the student equals the teacher, KL(teacher || student) is at its minimum (0)
and its gradient is exactly zero, so the first forget batch of epoch 1 moves nothing except through weight decay
(and momentum carries nothing yet). Later max-steps act once a min-step or weight decay has moved the student.
This is the reference's behaviour, kept as it is.

**SCRUB+R** (``rewind=True``), the paper's rewinding variant for selective unlearning, where a forget set pushed
to a *higher* error than unseen data of its kind is itself a membership signal: the student's weights are kept
after every epoch; the *reference point* is the final student's error on held-out images of the forget set's
classes (the validation split, matched to the forget set's class histogram, :meth:`matched_ids`: never the test
set); if the final forget error is above it, the student is rewound to the epoch whose forget error is closest to
the reference (ties: the later epoch), else the final student is kept. The chosen epoch and the reference are
reported (``rewind_epoch``, ``rewind_reference``; ``rewind_epoch`` equals ``epochs`` when nothing was rewound).

``optimizer="adam"`` (with ``lr`` None: the baseline's Adam learning rate) is kept as an option for models that
are trained with Adam; the batch orders come from the seed. Every op runs on the model's device and in its dtype.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F

from healing_pl.gradients.params import eval_mode
from healing_pl.models.classifier import evaluate
from healing_pl.unlearning.base import UNLEARNERS, StochasticUnlearner, learning_rate
from healing_pl.unlearning.loop import make_optimizer, train_epochs

#: the reference's learning-rate decay epochs: after each, the learning rate is multiplied by ``decay_rate``
DECAY_EPOCHS = (3, 5, 9)


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    log_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_s, p_t, reduction="batchmean") * temperature**2


def max_step_loss(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """The max-step loss on a forget batch: ``-distill_kl`` (minimising it moves the student away)."""
    return -distill_kl(student_logits, teacher_logits, temperature)


def min_step_loss(student_logits, teacher_logits, labels, *, alpha: float, gamma: float, temperature: float):
    """The min-step loss on a remain batch: ``gamma * CE + alpha * distill_kl``."""
    return gamma * F.cross_entropy(student_logits, labels) + alpha * distill_kl(
        student_logits, teacher_logits, temperature
    )


def epoch_lr(lr: float, epoch: int, decay_rate: float) -> float:
    """The reference's step schedule: ``lr * decay_rate ** (number of DECAY_EPOCHS below epoch)`` (epoch from 1)."""
    return lr * decay_rate ** sum(epoch > e for e in DECAY_EPOCHS)


def scrub(
    model,
    datamodule,
    forget_ids,
    *,
    lr: float,
    epochs: int = 5,
    msteps: int = 3,
    alpha: float = 0.5,
    gamma: float = 1.0,
    temperature: float = 4.0,
    batch_size: int | None = 128,
    forget_batch: int = 32,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float | None = 5e-4,
    decay_rate: float = 0.1,
    seed: int = 0,
    rewind: bool = False,
):
    """The SCRUB student of ``model`` (a new model; ``model``, the teacher, is untouched) and what it reports:
    with ``rewind`` (SCRUB+R) the student rewound as the module docstring says, and ``{"rewind_epoch",
    "rewind_reference"}``; without it ``{}``."""
    if epochs < 1 or not 0 <= msteps <= epochs:
        raise ValueError(f"scrub needs epochs >= 1 and 0 <= msteps <= epochs, got epochs={epochs}, msteps={msteps}.")
    if temperature <= 0:
        raise ValueError(f"scrub needs a positive temperature, got {temperature}.")
    remain = datamodule.remain_ids(forget_ids)
    size = batch_size or datamodule.hparams.batch_size
    remain_loader = datamodule.loader(remain, shuffle=True, batch_size=size, seed=seed)
    forget_loader = datamodule.loader(forget_ids, shuffle=True, batch_size=forget_batch, seed=seed + 1)
    student = copy.deepcopy(model).train()
    opt = make_optimizer(student, optimizer, lr, momentum=momentum, weight_decay=weight_decay)

    def teacher_logits(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    def max_step(batch) -> torch.Tensor:  # away from the teacher on F
        x, _ = batch
        return max_step_loss(student(x), teacher_logits(x), temperature)

    def min_step(batch) -> torch.Tensor:  # the teacher's on R
        x, y = batch
        return min_step_loss(student(x), teacher_logits(x), y, alpha=alpha, gamma=gamma, temperature=temperature)

    reference_ids = datamodule.matched_ids(forget_ids, "val", seed) if rewind else None
    if rewind and reference_ids.numel() == 0:
        raise ValueError(
            "SCRUB+R (unlearn.rewind) needs validation images of the forget set's classes for its reference "
            "error, but the validation split has none."
        )
    kept = []
    with eval_mode(model):
        for epoch in range(1, epochs + 1):
            for group in opt.param_groups:
                group["lr"] = epoch_lr(lr, epoch, decay_rate)
            if epoch <= msteps:
                train_epochs(student, forget_loader, max_step, opt)
            train_epochs(student, remain_loader, min_step, opt)
            if rewind:
                kept.append({k: v.detach().clone() for k, v in student.state_dict().items()})
    if not rewind:
        return student.eval(), {}
    return rewound(student, kept, datamodule, forget_ids, reference_ids)


def error(model, datamodule, ids) -> float:
    """The error rate of ``model`` on the pool samples ``ids``."""
    return 1.0 - evaluate(model, datamodule.loader(ids))["acc"]


def rewound(student, kept: list[dict], datamodule, forget_ids, reference_ids):
    """SCRUB+R's choice among the per-epoch states ``kept`` (the last is the final student's): the final student
    when its forget error is at most the reference (its error on ``reference_ids``), else the epoch whose forget
    error is closest to the reference (ties: the later). Returns the student in that state and what it reports."""
    reference = error(student, datamodule, reference_ids)
    epoch = len(kept)
    if error(student, datamodule, forget_ids) > reference:
        gaps = []
        for state in kept:
            student.load_state_dict(state)
            gaps.append(abs(error(student, datamodule, forget_ids) - reference))
        epoch = max(range(len(kept)), key=lambda i: (-gaps[i], i)) + 1
    student.load_state_dict(kept[epoch - 1])
    return student.eval(), {"rewind_epoch": epoch, "rewind_reference": reference}


@UNLEARNERS.register
class SCRUB(StochasticUnlearner):
    """SCRUB (Kurmanji et al. 2023).

    A student distilled from the original model on the remain set (min steps) and pushed away from it on the
    forget set (max steps) (:func:`scrub`). Defaults: the reference's small-set settings; its large-scale preset
    is alpha 0.001, gamma 0.99, msteps 2, forget_batch 512. The first max step is inert (student = teacher).
    ``rewind`` gives SCRUB+R (rewinding to the epoch whose forget error matches held-out validation images)."""

    name = "scrub"
    label = "SCRUB"
    strengths = {"lr": (True, 1e-4, 1e-1)}

    def __init__(
        self,
        epochs: int = 5,
        msteps: int = 3,
        alpha: float = 0.5,
        gamma: float = 1.0,
        temperature: float = 4.0,
        lr: float | None = 5e-4,
        batch_size: int = 128,
        forget_batch: int = 32,
        optimizer: Literal["sgd", "adam"] = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        decay_rate: float = 0.1,
        rewind: bool = False,
        **kwargs,
    ):
        """
        Args:
            epochs: epochs (each a min-step pass over the remain set); reference (small-set) 5.
            msteps: the first epochs that also make a max-step pass over the forget set; reference 3 (large-scale
                preset 2).
            alpha: weight of the KL to the teacher in the min-steps; reference 0.5 (large-scale 0.001).
            gamma: weight of the cross-entropy in the min-steps; reference 1 (large-scale 0.99).
            temperature: distillation temperature T; reference 4.
            lr: learning rate; reference 5e-4 with SGD (None: the baseline's, meant for optimizer adam).
            batch_size: remain-set batch of the min-steps; reference 128.
            forget_batch: forget-set batch of the max-steps; reference 32 (the small-set range is 16-64;
                large-scale preset 512).
            optimizer: sgd (the reference) or adam (this suite's baselines' optimizer; weight decay 0 unless set).
            momentum: SGD momentum; reference 0.9.
            weight_decay: weight decay; reference 5e-4.
            decay_rate: the learning rate is multiplied by this after epochs 3, 5 and 9 (the reference's
                schedule); 1 turns the schedule off.
            rewind: SCRUB+R: rewind to the epoch whose forget-set error is closest to the error on validation
                images of the forget set's classes, when the final forget error exceeds it (the paper's variant for
                selective unlearning; off by default, as in the reference's SCRUB runs).
        """
        super().__init__(**kwargs)
        self._positive({"lr": lr, "temperature": temperature, "decay_rate": decay_rate})
        self._at_least({"epochs": epochs, "batch_size": batch_size, "forget_batch": forget_batch}, 1)
        if not 0 <= msteps <= epochs:
            raise ValueError(f"unlearn.msteps must lie in [0, epochs={epochs}], got {msteps}.")
        self._non_negative({"alpha": alpha, "gamma": gamma, "momentum": momentum, "weight_decay": weight_decay})
        self._one_of("optimizer", optimizer, ("sgd", "adam"))
        self.epochs, self.msteps, self.alpha, self.gamma, self.temperature = epochs, msteps, alpha, gamma, temperature
        self.lr, self.batch_size, self.forget_batch = lr, batch_size, forget_batch
        self.optimizer, self.momentum, self.weight_decay, self.decay_rate = (
            optimizer,
            momentum,
            weight_decay,
            decay_rate,
        )
        self.rewind = rewind

    def run(self, model, datamodule, forget_ids, context, seed):
        return scrub(
            model,
            datamodule,
            forget_ids,
            lr=learning_rate(self.lr, model),
            epochs=self.epochs,
            msteps=self.msteps,
            alpha=self.alpha,
            gamma=self.gamma,
            temperature=self.temperature,
            batch_size=self.batch_size,
            forget_batch=self.forget_batch,
            optimizer=self.optimizer,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            decay_rate=self.decay_rate,
            seed=seed,
            rewind=self.rewind,
        )
