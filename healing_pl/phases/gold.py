"""Gold-standard phase: the model retrained from scratch on the remain set with the baseline's recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from healing_pl import records as rk
from healing_pl.phases.baseline import Baseline
from healing_pl.phases.evaluate import Evaluation, evaluate_sets


@dataclass(frozen=True)
class Gold:
    evaluation: Evaluation
    time_s: float  # of the training that made it (also when loaded from the cache)
    cached: bool
    #: the gold standard's output distribution on each forget sample (|F| x classes, float64, CPU)
    forget_probs: torch.Tensor | None = field(default=None, repr=False, compare=False)

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
    evaluation = evaluate_sets(gold, datamodule, forget_ids, rk.GOLD)
    probs = forget_probabilities(gold, datamodule, forget_ids)
    return gold, Gold(evaluation, info["time_s"], info["cached"], probs)


@torch.no_grad()
def forget_probabilities(model, datamodule, forget_ids) -> torch.Tensor:
    """``model``'s softmax output on each forget sample, in id order (|F| x classes, float64, on the CPU); the
    model runs on its own device and dtype, in eval mode."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    parts = [
        torch.softmax(model(x.to(device=param.device, dtype=param.dtype)).double(), dim=1).cpu()
        for x, _ in datamodule.loader(torch.as_tensor(forget_ids))
    ]
    model.train(was_training)
    return torch.cat(parts)


@dataclass(frozen=True)
class GoldDistance:
    """How far one model (``prefix``: baseline, unlearned, healed) is from the gold standard on the forget set:
    ``gap``, its forget accuracy minus the gold standard's (0 = as forgotten as a retrain), and ``kl``, the mean
    KL(gold || model) of the output distributions over the forget samples, in nats (0 = the retrain's outputs)."""

    prefix: str
    gap: float
    kl: float

    def record(self) -> dict:
        return {rk.gold_distance(self.prefix, "gap"): self.gap, rk.gold_distance(self.prefix, "kl"): self.kl}


def distance_to_gold(model, datamodule, forget_ids, gold: Gold | None, forget_acc: float, prefix: str):
    """:class:`GoldDistance` of ``model`` (forget accuracy ``forget_acc``), or None without a gold standard."""
    if gold is None or gold.forget_probs is None:
        return None
    p = gold.forget_probs
    q = forget_probabilities(model, datamodule, forget_ids)
    tiny = torch.finfo(torch.float64).tiny  # 0 * log(0 / q) = 0; a zero q under a positive p stays finite
    kl = (p * (torch.log(p.clamp_min(tiny)) - torch.log(q.clamp_min(tiny)))).sum(1).mean()
    return GoldDistance(prefix, forget_acc - gold.evaluation.forget, float(kl))
