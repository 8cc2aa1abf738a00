"""Where the report reads images and per-image results: the pool a run folder names, its test labels, and each
model's accuracy on the test images of the attacked class (from ``test_correct.json``)."""

from __future__ import annotations

import json
import os

import yaml

from healing_pl import records as rk

__all__ = ["ImageSource", "attacked_class", "class_accuracy", "run_folder"]


def attacked_class(record: dict) -> int | None:
    """The class the forget set attacks: the adversary's target class, else the one class every forget sample
    belongs to (None when the forget set spans several classes)."""
    target = record.get(rk.ADVERSARY_TARGET_CLASS)
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    counts = record.get(rk.FORGET_CLASSES)
    held = [k for k, c in enumerate(counts or []) if c]
    return held[0] if len(held) == 1 else None


def class_accuracy(record: dict, target: int, images: ImageSource) -> dict[str, float]:
    """Per model of a run (baseline, gold, unlearned, healed): its accuracy on the test images of class
    ``target``, from the per-image correctness the run saved (``test_correct.json``) and the labels of its test
    set (``splits.json`` and the dataset); empty when the run saved either not, or the dataset cannot be read."""
    from healing_pl.phases.evaluate import load_correctness

    folder = run_folder(record)
    correct = load_correctness(folder)
    if not correct:
        return {}
    try:
        labels = images.test_labels(folder)
    except (OSError, ValueError, ImportError, KeyError, IndexError, TypeError):
        return {}
    if labels is None or any(len(c) != len(labels) for c in correct.values()):
        return {}
    idx = [i for i, y in enumerate(labels) if y == target]
    if not idx:
        return {}
    return {model: sum(bool(c[i]) for i in idx) / len(idx) for model, c in correct.items()}


class ImageSource:
    """Loads pool samples of the datasets that run folders name in their ``config.yaml`` (cached per dataset)."""

    def __init__(self):
        self.pools: dict[tuple, object] = {}

    def pool(self, folder: str):
        path = os.path.join(folder, "config.yaml")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"'{folder}' holds no config.yaml to name its dataset")
        with open(path) as f:
            data = (yaml.safe_load(f) or {}).get("data") or {}
        key = (data.get("dataset"), data.get("root"), data.get("image_size"), data.get("channels"))
        if key not in self.pools:
            from healing_pl.data.datasets import build_pool

            self.pools[key] = build_pool(key[0], root=key[1], download=False, image_size=key[2], channels=key[3])
        return self.pools[key]

    def test_labels(self, folder: str) -> list[int] | None:
        """The labels of a run's test set in its test loader's order: the pool samples its ``splits.json`` names
        as test, or the dataset's official test split when it names none; None without a ``splits.json``."""
        path = os.path.join(folder, "splits.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            ids = (json.load(f).get("splits") or {}).get("test") or []
        pool = self.pool(folder)
        targets = pool.train.targets[ids] if ids else pool.test.targets
        return [int(y) for y in targets]


def run_folder(record: dict) -> str:
    """The folder of a run record (where its results.json lies)."""
    return os.path.dirname(record.get(rk.FILE) or os.path.join(str(record[rk.RUN_DIR]), "x"))
