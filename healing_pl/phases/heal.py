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


def fine_tune(
    model, datamodule, train_ids, *, epochs: int, seed: int, lr: float | None, trainer: dict, progress: bool = False
):
    """Fine-tune ``model`` in place on ``train_ids`` (Adam at ``lr`` or the model's own) on the trainer's device."""
    import lightning as L

    from healing_pl.unlearning.naive import fit_on

    L.seed_everything(seed, verbose=False)
    if lr is not None:
        model.hparams.lr = lr
    return fit_on(model, datamodule, torch.as_tensor(train_ids), epochs=epochs, trainer=trainer, progress=progress)
