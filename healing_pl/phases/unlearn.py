"""Unlearning phase: the configured method, with repeats, cached by content hash; and the attack strength."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import torch

from healing_pl import records as rk
from healing_pl.codehash import MODEL_CODE, code_version
from healing_pl.files import save_torch
from healing_pl.lock import compute_once
from healing_pl.models.classifier import Classifier, evaluate
from healing_pl.phases.baseline import Baseline
from healing_pl.phases.evaluate import Evaluation, evaluate_sets
from healing_pl.unlearning import Context, Unlearner, unlearn_with_repeats
from healing_pl.unlearning.naive import load_cached, model_hparams, one_process


@dataclass(frozen=True)
class Unlearned:
    """The unlearned model's figures: the representative repeat and the spread over repeats."""

    config: Unlearner
    evaluation: Evaluation
    summary: dict  # acc_mean, acc_std, time_mean_s, representative, acc_repeats, val_acc_{mean,std,repeats}
    cached: bool
    info: dict = field(default_factory=dict)  # what the method reports (e.g. SISA's retrained shards)

    def record(self) -> dict:
        s = self.summary
        return {
            **{rk.unlearn_knob(k): v for k, v in self.config.hyperparameters().items()},
            **self.evaluation.record(),
            rk.UNLEARNED_ACC_MEAN: s["acc_mean"],
            rk.UNLEARNED_ACC_STD: s["acc_std"],
            rk.UNLEARNED_TIME_S: s["time_mean_s"],
            rk.UNLEARNED_REPRESENTATIVE: s["representative"],
            rk.UNLEARNED_ACC_REPEATS: s["acc_repeats"],
            # the representative repeat is the one whose validation accuracy is closest to their mean
            rk.UNLEARNED_VAL_ACC_REPEATS: s.get("val_acc_repeats"),
            rk.UNLEARNED_VAL_ACC_MEAN: s.get("val_acc_mean"),
            rk.UNLEARNED_VAL_ACC_STD: s.get("val_acc_std"),
            rk.UNLEARNED_CACHED: self.cached,
            **{rk.method_info(self.config.method, k): v for k, v in self.info.items() if _plain(v)},
        }


@dataclass(frozen=True)
class AttackStrength:
    """Extra accuracy drop of the adversary's forget set over a random forget set of the same size."""

    random_acc: float
    drop: float
    drop_random: float

    def record(self) -> dict:
        return {
            rk.ATTACK_RANDOM_TEST_ACC: self.random_acc,
            rk.ATTACK_DROP: self.drop,
            rk.ATTACK_DROP_RANDOM: self.drop_random,
            rk.ATTACK_STRENGTH: self.drop - self.drop_random,
        }


def _plain(value) -> bool:
    return isinstance(value, (int, float, str, bool, list, dict)) or value is None


def _cache_path(cfg: Unlearner, baseline: Baseline, forget_ids) -> str | None:
    if not cfg.cache_dir or not cfg.cacheable:
        return None
    content = {
        "baseline": baseline.sha256,
        "forget": sorted(forget_ids.tolist()),
        "cfg": cfg.hyperparameters(),
        "code": code_version("healing_pl.unlearning", "healing_pl.gradients", *MODEL_CODE),
    }
    key = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:20]
    return os.path.join(cfg.cache_dir, f"unlearned-{key}.pt")


def unlearned_model(
    model, baseline: Baseline, datamodule, forget_ids, cfg: Unlearner, context: Context
) -> tuple[torch.nn.Module, dict, dict, bool]:
    """Unlearn ``forget_ids`` from ``model`` (the baseline, on its device) with repeats.

    Returns the representative model (on the baseline's device and dtype), the summary over repeats,
    the method's info and whether it came from the cache (so a grid unlearns once).
    """
    path = _cache_path(cfg, baseline, forget_ids)
    param = next(model.parameters())
    with compute_once(one_process(path)):  # two jobs of a grid on one start unlearn it once
        if path and os.path.isfile(path):
            saved = load_cached(path)
            out = Classifier(**saved["hyper_parameters"])
            out.load_state_dict(saved["state_dict"])
            return out.to(device=param.device, dtype=param.dtype).eval(), saved["summary"], {}, True
        result = unlearn_with_repeats(model, datamodule, forget_ids, cfg, context)
        if path:
            save_torch(
                {
                    "state_dict": {k: v.cpu() for k, v in result.model.state_dict().items()},
                    "hyper_parameters": model_hparams(model),
                    "summary": result.summary,
                },
                path,
            )
    return result.model.eval(), result.summary, result.info, False


def unlearn_phase(
    model, baseline: Baseline, datamodule, forget_ids, cfg: Unlearner, context: Context
) -> tuple[torch.nn.Module, Unlearned]:
    """The unlearned model and its figures."""
    out, summary, info, cached = unlearned_model(model, baseline, datamodule, forget_ids, cfg, context)
    return out, Unlearned(cfg, evaluate_sets(out, datamodule, forget_ids, rk.UNLEARNED), summary, cached, info)


def attack_strength(
    model,
    baseline: Baseline,
    datamodule,
    forget_ids,
    cfg: Unlearner,
    context: Context,
    baseline_acc: float,
    unlearned_acc: float,
) -> AttackStrength:
    """Unlearn a random forget set of the same size and compare the accuracy drops."""
    from healing_pl.adversary import SELECTORS
    from healing_pl.phases.forget import select_forget_ids

    reference = SELECTORS["random"](budget=len(forget_ids), seed=cfg.seed)
    random_ids = select_forget_ids(reference, model, datamodule)
    out, _, _, _ = unlearned_model(model, baseline, datamodule, random_ids, cfg, context)
    random_acc = evaluate(out, datamodule.test_dataloader())["acc"]
    return AttackStrength(random_acc, baseline_acc - unlearned_acc, baseline_acc - random_acc)
