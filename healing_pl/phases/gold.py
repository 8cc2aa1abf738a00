"""Gold-standard phase: the model retrained from scratch on the remain set with the baseline's recipe."""

from __future__ import annotations

from dataclasses import dataclass

from healing_pl import records as rk
from healing_pl.phases.baseline import Baseline
from healing_pl.phases.evaluate import Evaluation, evaluate_sets


@dataclass(frozen=True)
class Gold:
    evaluation: Evaluation
    time_s: float  # of the training that made it (also when loaded from the cache)
    cached: bool

    def record(self) -> dict:
        return {**self.evaluation.record(), rk.GOLD_TIME_S: self.time_s, rk.GOLD_CACHED: self.cached}


def gold_phase(
    model, baseline: Baseline, datamodule, forget_ids, *, cache_dir: str | None, trainer: dict, progress: bool = False
) -> tuple[object, Gold]:
    """Train (or load from the content-hash cache) the gold standard on this rank's device; evaluate it."""
    from healing_pl.unlearning.naive import gold_standard, model_hparams

    gold, info = gold_standard(
        model_hparams(model),
        datamodule,
        forget_ids,
        epochs=baseline.epochs,
        seed=baseline.seed,
        cache_dir=cache_dir,
        trainer=trainer,
        progress=progress,
    )
    return gold, Gold(evaluate_sets(gold, datamodule, forget_ids, rk.GOLD), info["time_s"], info["cached"])
