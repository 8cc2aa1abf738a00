"""Realistic heal records for the report tests: the keys and identity a real ``healing-pl heal`` writes."""

import copy

import pytest

from healing_pl.phases.baseline import Baseline
from healing_pl.phases.identity import identity_record

#: the nested CLI configuration of a heal run on digits, as config.yaml holds it (abridged trainer section)
CONFIG = {
    "seed_everything": 0,
    "trainer": {"accelerator": "cpu", "devices": "auto", "max_epochs": 10, "enable_progress_bar": False},
    "model": {"backbone": "small_cnn", "lr": 0.003, "weight_decay": 0.0},
    "data": {"dataset": "digits", "primary": 0.6, "backup": 0.15, "val": 0.1, "batch_size": 64, "seed": 0},
    "run_dir": "runs/g/heal-0",
    "wandb": {"enabled": True, "project": "healing-pl", "group": "g", "tags": [], "name": None},
    "ckpt_path": "runs/g/baseline/checkpoints/last.ckpt",
    "unlearn": {"method": "fisher", "repeats": 1, "seed": 0, "alpha": 1e-6, "depth": 100, "cache_dir": "runs/cache"},
    "adversary": {"selector": "class", "budget": 10, "target_class": 3, "seed": 0},
    "twins": {"metric": "raw_l2", "policy": "general_spare_set", "k": 3, "seed": 0},
    "heal": {"epochs": 2, "lr": None, "gold": True},
}
HPARAMS = {"backbone": "small_cnn", "lr": 0.003, "num_classes": 10, "in_chans": 1, "image_size": 8}
SHA = "a" * 64


def config(**dotted) -> dict:
    """CONFIG with ``section__key=value`` changes."""
    out = copy.deepcopy(CONFIG)
    for key, value in dotted.items():
        *parents, leaf = key.split("__")
        tree = out
        for p in parents:
            tree = tree[p]
        tree[leaf] = value
    return out


def heal_record(metric, test, val=None, *, seed=0, sha=SHA, gs=0.91, bl=0.94, init=0.50, cfg=None, run=None):
    """A heal record: ``test`` and ``val`` are the accuracies after epochs 1 and 2 (val defaults to test)."""
    val = test if val is None else val
    cfg = config(twins__metric=metric, seed_everything=seed, unlearn__seed=seed) if cfg is None else copy.deepcopy(cfg)
    cfg["twins"]["metric"], cfg["seed_everything"], cfg["unlearn"]["seed"] = metric, seed, seed
    baseline = Baseline(path=cfg["ckpt_path"], sha256=sha, epochs=4, seed=0, hparams=HPARAMS)
    record = {
        "phase": "heal",
        "dataset": cfg["data"]["dataset"],
        "backbone": "small_cnn",
        "run_dir": run or f"runs/g/heal-{metric}-{seed}-{sha[:4]}",
        "adversary/selector": "class",
        "forget/count": 10,
        "baseline/sha256": sha,
        "baseline/test/acc": bl,
        "gold/test/acc": gs,
        "unlearned/test/acc": init,
        "unlearn/method": cfg["unlearn"]["method"],
        "heal/epochs": len(test),
        "heal/setup": "R" if metric == "none" else f"T-{metric}",
        "twins/policy": cfg["twins"]["policy"],
    }
    for k, (t, v) in enumerate(zip(test, val), start=1):
        record[f"healed/test/acc_epoch_{k}"], record[f"healed/val/acc_epoch_{k}"] = t, v
    record["healed/test/acc_epoch_0"] = init
    return record | identity_record("heal", cfg, [baseline])


@pytest.fixture
def make_record():
    return heal_record
