"""Heal phase: the fine-tune's test accuracy after every epoch, from the unlearned start (epoch 0)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from healing_pl import records as rk


@dataclass
class HealCurve:
    """Test (``accs``) and validation (``val_accs``) accuracy of the healed model after each fine-tuning epoch,
    epoch 0 being the unlearned start: record keys ``healed/test/acc_epoch_k`` and ``healed/val/acc_epoch_k``."""

    epochs: int
    lr: float
    accs: dict[int, float] = field(default_factory=dict)
    time_s: float | None = None
    val_accs: dict[int, float] = field(default_factory=dict)

    def record(self) -> dict:
        out = {rk.HEAL_EPOCHS: self.epochs, rk.HEAL_LR: self.lr, rk.HEAL_TIME_S: self.time_s}
        out.update({rk.healed_test_acc(e): a for e, a in sorted(self.accs.items())})
        out.update({rk.healed_val_acc(e): a for e, a in sorted(self.val_accs.items())})
        return out


def chance_level(classes: int, n: int) -> float:
    """The accuracy that ``n`` validation images cannot tell from guessing among ``classes``: chance (1 / classes)
    plus 3.09 binomial standard deviations (one-sided 99.9%), so a small validation set does not hide a collapse."""
    p = 1.0 / classes
    return p + 3.09 * (p * (1 - p) / max(n, 1)) ** 0.5


def check_healed(model, datamodule, start_val_acc: float | None, val_acc: float | None = None) -> None:
    """Stop with one sentence naming ``--heal.lr`` when the fine-tune left ``model`` with non-finite weights, or at
    chance on the validation set while its start (``start_val_acc``) was above chance; such a model is never
    saved as a result. ``val_acc``: the validation accuracy when already measured (None: measure it here)."""
    from healing_pl.models.classifier import evaluate

    why = None
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        why = "its weights are not finite"
    elif datamodule.splits["val"].numel():
        if val_acc is None:
            val_acc = evaluate(model, datamodule.val_dataloader())["acc"]
        chance = chance_level(datamodule.num_classes, datamodule.splits["val"].numel())
        if val_acc <= chance and (start_val_acc is None or start_val_acc > chance):
            why = f"its validation accuracy {val_acc:.4f} fell to chance level"
    if why is not None:
        lr = getattr(model, "fit_lr", None)
        at = f" (it is {lr:g})" if lr is not None else ""
        raise FloatingPointError(f"the heal diverged ({why}): lower --heal.lr{at}.")


def fine_tune(
    model, datamodule, train_ids, *, epochs: int, seed: int, lr: float | None, trainer: dict, progress: bool = False
):
    """Fine-tune ``model`` in place on ``train_ids`` (Adam at ``lr`` or the model's own) on the trainer's device;
    stop with one sentence when the fine-tune diverged (:func:`check_healed`)."""
    import lightning as L

    from healing_pl.models.classifier import evaluate
    from healing_pl.unlearning.naive import fit_on

    L.seed_everything(seed, verbose=False)
    start_val = evaluate(model, datamodule.val_dataloader())["acc"] if datamodule.splits["val"].numel() else None
    model.train_at(lr, "--heal.lr")
    fit_on(model, datamodule, torch.as_tensor(train_ids), epochs=epochs, trainer=trainer, progress=progress)
    check_healed(model, datamodule, start_val)
    return model
