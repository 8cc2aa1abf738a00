"""Realistic records for the report tests, written by the real writers: each helper builds the phase results of a
run (:mod:`healing_pl.phases`) with small values and composes them as ``RunWriter`` does
(:func:`healing_pl.phases.record.run_record`), so that a renamed record key changes these records too."""

import copy

import pytest
import torch

from healing_pl import records as rk
from healing_pl.adversary import SELECTORS
from healing_pl.callbacks.phases import Trained
from healing_pl.healing import TWIN_METRICS
from healing_pl.phases.baseline import Baseline
from healing_pl.phases.config import TwinsConfig
from healing_pl.phases.evaluate import Evaluation
from healing_pl.phases.forget import ForgetSet
from healing_pl.phases.gold import Gold
from healing_pl.phases.heal import HealCurve
from healing_pl.phases.record import run_record
from healing_pl.phases.stream import StreamResult
from healing_pl.phases.twins import TwinSet
from healing_pl.phases.unlearn import Unlearned
from healing_pl.unlearning import UNLEARNERS
from healing_pl.unlearning.base import UnlearnResult


def chosen(registry, name: str, **knobs) -> dict:
    """A chosen class of a method family as the CLI dumps it: ``{"class_path": ..., "init_args": {...}}``."""
    cls = registry[name]
    return {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": knobs}


def method(name: str, **knobs) -> dict:
    """An unlearning method (by record name) as config.yaml holds it."""
    return chosen(UNLEARNERS, name, **{"seed": 0, **knobs})


#: the nested CLI configuration of a heal run on digits, as config.yaml holds it (abridged: the trainer section and
#: the knobs at their defaults are left out)
CONFIG = {
    "seed_everything": 0,
    "trainer": {"accelerator": "cpu", "devices": "auto", "max_epochs": 10, "enable_progress_bar": False},
    "model": {"backbone": "small_cnn", "lr": 0.003, "weight_decay": 0.0},
    "data": {"dataset": "digits", "primary": 0.6, "backup": 0.15, "val": 0.1, "batch_size": 64, "seed": 0},
    "run_dir": "runs/g/heal-0",
    "wandb": {"enabled": True, "project": "healing-pl", "group": "g", "tags": [], "name": None},
    "ckpt_path": "runs/g/baseline/checkpoints/last.ckpt",
    "unlearn": method("fisher", alpha=1e-6, repeats=1, cache_dir="runs/cache"),
    "adversary": chosen(SELECTORS, "class", budget=10, target_class=3, seed=0),
    "twins": {"metric": chosen(TWIN_METRICS, "raw_l2"), "policy": "general_spare_set", "k": 3, "seed": 0},
    "heal": {"epochs": 2, "lr": None, "gold": True},
}
HPARAMS = {"backbone": "small_cnn", "lr": 0.003, "num_classes": 10, "in_chans": 1, "image_size": 8}
SHA = "a" * 64
#: primary samples of the digits split (0.6 of 1797)
PRIMARY = 1078


def config(**dotted) -> dict:
    """CONFIG with ``section__key=value`` changes (a knob of a chosen class goes into its ``init_args``)."""
    out = copy.deepcopy(CONFIG)
    for key, value in dotted.items():
        *parents, leaf = key.split("__")
        tree = out
        for p in parents:
            tree = tree[p]
        if "class_path" in tree and leaf not in ("class_path", "init_args"):
            tree = tree.setdefault("init_args", {})
        tree[leaf] = value
    return out


def twin_metric(name: str) -> dict | None:
    """``twins.metric`` as config.yaml holds it (a record name; none: null)."""
    return None if name == "none" else chosen(TWIN_METRICS, name)


def instance(registry, section: dict):
    """The object a chosen class's config section builds."""
    return registry.by_class_name(section["class_path"])(**section.get("init_args", {}))


def header(cfg: dict, run_dir: str) -> dict:
    return rk.header(
        dataset=cfg["data"]["dataset"],
        backbone=cfg["model"]["backbone"],
        run_dir=run_dir,
        world_size=1,
        device="cpu",
        precision="32-true",
        threads=1,
    )


def baseline(cfg: dict, sha: str = SHA, seed: int = 0) -> Baseline:
    return Baseline(path=cfg["ckpt_path"], sha256=sha, epochs=4, seed=seed, hparams=HPARAMS)


def _budget(cfg: dict) -> int:
    """The configured adversary's budget when it is a count (10 otherwise)."""
    budget = (cfg["adversary"].get("init_args") or {}).get("budget", 10)
    return budget if isinstance(budget, int) else 10


def forget_set(cfg: dict, count: int = 10) -> ForgetSet:
    """``count`` accepted requests of the configured adversary (all of class 3)."""
    adversary = instance(SELECTORS, cfg["adversary"])
    classes = [count if c == 3 else 0 for c in range(10)]
    return ForgetSet(torch.arange(count), adversary, count, {"member": count}, classes, PRIMARY)


def unlearned(cfg: dict, acc: float, *, time_s: float = 2.0, forget: float = 0.0, info=None) -> Unlearned:
    """The configured method's unlearned model: one repeat of test accuracy ``acc``."""
    summary = UnlearnResult(None, [acc], [time_s], 0, val_accs=[acc]).summary
    evaluation = Evaluation(rk.UNLEARNED, acc, acc, forget)
    return Unlearned(instance(UNLEARNERS, cfg["unlearn"]), evaluation, summary, False, dict(info or {}))


def heal_record(
    metric,
    test,
    val=None,
    *,
    seed=0,
    sha=SHA,
    gs=0.91,
    bl=0.94,
    init=0.50,
    cfg=None,
    run=None,
    pairs=(),
    same_class=None,
) -> dict:
    """A heal record: ``test`` and ``val`` are the accuracies after epochs 1, 2, ... (val defaults to test)."""
    val = test if val is None else val
    cfg = config() if cfg is None else copy.deepcopy(cfg)
    cfg["twins"]["metric"], cfg["seed_everything"] = twin_metric(metric), seed
    cfg["unlearn"]["init_args"]["seed"] = seed
    if same_class is not None:  # as the CLI dumps it: every run's config holds the flag
        cfg["twins"]["same_class"] = same_class
    twins = TwinsConfig(metric=metric, policy=cfg["twins"]["policy"], k=cfg["twins"]["k"], same_class=bool(same_class))
    curve = HealCurve(len(test), 0.003, {0: init}, time_s=5.0)
    for k, (t, v) in enumerate(zip(test, val), start=1):
        curve.accs[k], curve.val_accs[k] = t, v
    results = [
        baseline(cfg, sha),
        forget_set(cfg, _budget(cfg)),
        Evaluation(rk.BASELINE, bl, bl, bl),
        Gold(Evaluation(rk.GOLD, gs, gs, 0.0), 30.0, False),
        unlearned(cfg, init),
        TwinSet(twins, [dict(p) for p in pairs], 0.1, 1.0 if pairs else None, PRIMARY - 10 + len(pairs)),
        curve,
        Evaluation(rk.HEALED, test[-1], test[-1], 0.0),
    ]
    name = f"runs/g/heal-{metric}-{seed}-{sha[:4]}" + ("-same" if same_class else "")
    return run_record(rk.HEAL, header(cfg, run or name), cfg, results)


def unlearn_record(
    seed, acc, *, cfg=None, gs=0.9, bl=0.95, time_s=2.0, info=None, run=None, count=10, gold_time_s=30.0
) -> dict:
    """An unlearn record of seed ``seed`` (its baseline, data split and method seeded alike)."""
    cfg = config() if cfg is None else copy.deepcopy(cfg)
    cfg["seed_everything"] = cfg["data"]["seed"] = cfg["unlearn"]["init_args"]["seed"] = seed
    name = instance(UNLEARNERS, cfg["unlearn"]).name
    results = [
        baseline(cfg, f"{seed}" * 64, seed),
        forget_set(cfg, count),
        Evaluation(rk.BASELINE, bl, bl, bl),
        Gold(Evaluation(rk.GOLD, gs, gs, 0.0), gold_time_s, False),
        unlearned(cfg, acc, time_s=time_s, info=info),
    ]
    return run_record(rk.UNLEARN, header(cfg, run or f"runs/u/seed-{seed}/unlearn-{name}-{acc}"), cfg, results)


def fit_record(seed, acc, *, time_s=10.0, run=None) -> dict:
    """A fit record of seed ``seed``: test accuracy ``acc`` after 4 epochs."""
    cfg = config(seed_everything=seed)
    trained = Trained({"acc": acc, "loss": 0.2, "acc_class": [acc] * 10}, 4, time_s, "checkpoints/last.ckpt")
    return run_record(rk.FIT, header(cfg, run or f"runs/g/seed-{seed}/baseline"), cfg, [trained])


def stream_record(curve: list[dict], *, run=None) -> dict:
    """A stream record whose test accuracy after the baseline (round -1) and every round is ``curve``."""
    cfg = config()
    points = [{rk.CURVE_ROUND.name: i - 1, rk.CURVE_TEST_ACC.name: acc} for i, acc in enumerate(curve)]
    rounds = [{"round": p[rk.CURVE_ROUND.name], "n_requests": 2, "metrics": {}} for p in points[1:]]
    adversary = instance(SELECTORS, cfg["adversary"])
    result = StreamResult(rounds, points, 2 * len(rounds), 0, 2 * len(rounds), adversary, "ledger.jsonl")
    return run_record(rk.STREAM, header(cfg, run or "runs/s"), cfg, [baseline(cfg), result])


@pytest.fixture
def make_record():
    return heal_record
