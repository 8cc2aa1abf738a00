"""Evaluation phase: accuracy of a model on the test, remain and forget sets."""

from __future__ import annotations

from dataclasses import dataclass

from healing_pl import records as rk
from healing_pl.models.classifier import evaluate


@dataclass(frozen=True)
class Evaluation:
    """Test, remain and forget accuracy of one model (``prefix``: baseline, gold, unlearned, healed)."""

    prefix: str
    test: float
    remain: float
    forget: float

    def record(self) -> dict:
        p = self.prefix
        return {
            rk.accuracy(p, rk.TEST): self.test,
            rk.accuracy(p, rk.REMAIN): self.remain,
            rk.accuracy(p, rk.FORGET): self.forget,
        }


def evaluate_sets(model, datamodule, forget_ids, prefix: str) -> Evaluation:
    """Evaluate ``model`` (on its own device) over the full test set, the remain set R and the forget set F."""
    remain = datamodule.remain_ids(forget_ids)
    return Evaluation(
        prefix,
        evaluate(model, datamodule.test_dataloader())["acc"],
        evaluate(model, datamodule.loader(remain))["acc"],
        evaluate(model, datamodule.loader(forget_ids))["acc"],
    )
