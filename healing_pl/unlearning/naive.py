"""Naive unlearning: retrain from scratch on the remain set with the baseline's recipe.

Its result is the Gold Standard (GS). Gold standards are cached on disk by a
content hash of everything that determines them (data split, forget ids,
model hyperparameters, epochs, batch size, seeds), so a sweep trains each
GS once.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import lightning as L
import torch

from healing_pl.models.classifier import Classifier


def model_hparams(model: Classifier) -> dict:
    """The constructor arguments of ``model`` (without Lightning's private keys)."""
    return {k: v for k, v in model.hparams.items() if not k.startswith("_")}


def fit_on(model: Classifier, datamodule, train_ids, *, epochs: int, progress: bool = False) -> Classifier:
    """Train ``model`` in place on ``train_ids`` with a quiet Lightning Trainer (no logger, no validation).

    Inner trainings (gold standards, fine-tunes) open no W&B run of their own:
    their figures are logged through the outer run.
    """
    previous = datamodule.train_ids
    datamodule.set_train_ids(train_ids)
    try:
        trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                            enable_model_summary=False, enable_progress_bar=progress,
                            limit_val_batches=0, num_sanity_val_steps=0, devices=1)
        trainer.fit(model, datamodule=datamodule)
    finally:
        datamodule.train_ids = previous
    return model.cpu().eval()


def train_classifier(hparams: dict, datamodule, train_ids, *, epochs: int, seed: int,
                     progress: bool = False) -> Classifier:
    """Train a fresh ``Classifier(**hparams)`` on ``train_ids``: the baseline's recipe.

    Seeds everything with ``seed`` right before building the model, as
    ``healing-pl fit`` does, so a retrain on the remain set is the same run as
    a ``fit`` on it with that seed.
    """
    L.seed_everything(seed, verbose=False)
    return fit_on(Classifier(**hparams), datamodule, train_ids, epochs=epochs, progress=progress)


def gold_key(hparams: dict, datamodule, forget_ids, *, epochs: int, seed: int) -> str:
    """Content hash of what determines a gold standard."""
    content = {
        "dataset": datamodule.hparams.dataset,
        "primary": hashlib.sha256(datamodule.primary_ids.numpy().tobytes()).hexdigest(),
        "forget": sorted(int(i) for i in torch.as_tensor(forget_ids).tolist()),
        "model": {k: hparams[k] for k in sorted(hparams)},
        "epochs": epochs, "batch_size": datamodule.hparams.batch_size,
        "data_seed": datamodule.hparams.seed, "seed": seed,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:20]


def gold_standard(hparams: dict, datamodule, forget_ids, *, epochs: int, seed: int,
                  cache_dir: str | None = "runs/cache", progress: bool = False) -> tuple[Classifier, dict]:
    """The GS for ``forget_ids``: loaded from the cache when present, else trained (and cached).

    Returns the model and ``{"key", "cached", "time_s"}`` (time of the training that made it).
    """
    remain = datamodule.remain_ids(forget_ids)
    key = gold_key(hparams, datamodule, forget_ids, epochs=epochs, seed=seed)
    path = os.path.join(cache_dir, f"gold-{key}.pt") if cache_dir else None
    if path and os.path.isfile(path):
        saved = torch.load(path, map_location="cpu", weights_only=False)
        model = Classifier(**saved["hyper_parameters"])
        model.load_state_dict(saved["state_dict"])
        return model.eval(), {"key": key, "cached": True, "time_s": saved["time_s"]}
    start = time.perf_counter()
    model = train_classifier(hparams, datamodule, remain, epochs=epochs, seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + ".tmp"
        torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "time_s": seconds}, tmp)
        os.replace(tmp, path)
    return model, {"key": key, "cached": False, "time_s": seconds}


def naive_unlearn(model: Classifier, datamodule, forget_ids, *, epochs: int, seed: int,
                  cache_dir: str | None = "runs/cache", progress: bool = False) -> Classifier:
    """Naive unlearning of ``forget_ids``: the gold standard (the input model is only read for its recipe)."""
    gold, _ = gold_standard(model_hparams(model), datamodule, forget_ids, epochs=epochs, seed=seed,
                            cache_dir=cache_dir, progress=progress)
    return gold
