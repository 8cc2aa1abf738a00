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
from contextlib import contextmanager

import lightning as L
import torch

from healing_pl.codehash import MODEL_CODE, code_version
from healing_pl.console import labelled_progress_bar
from healing_pl.files import save_torch
from healing_pl.lock import compute_once
from healing_pl.models.classifier import Classifier
from healing_pl.unlearning.base import UNLEARNERS, Unlearner


def model_hparams(model: Classifier) -> dict:
    """The constructor arguments of ``model`` (without Lightning's private keys)."""
    return {k: v for k, v in model.hparams.items() if not k.startswith("_")}


def fit_on(
    model: Classifier,
    datamodule,
    train_ids,
    *,
    epochs: int,
    trainer: dict | None = None,
    progress: bool = False,
    label: str | None = None,
) -> Classifier:
    """Train ``model`` in place on ``train_ids`` with a quiet Lightning Trainer (no logger, no validation).

    ``trainer`` holds the Trainer's accelerator, devices and precision (the outer trainer's, so an
    inner training runs where the experiment runs; default: one CPU). The loader is the one
    ``healing-pl fit`` trains with (the datamodule's seed, batch size and shuffle), so a retrain on
    the remain set is the same run as a ``fit`` on it. Inner trainings open no W&B run of their own:
    their figures are logged through the outer run. The model stays on the trainer's device. With
    ``progress``, a ``label`` names the bar ("gold standard, epoch 3/10").
    """
    ids = torch.as_tensor(train_ids, dtype=torch.long)
    if ids.numel() == 0:
        raise ValueError("the training set is empty.")
    loader = datamodule.loader(ids, shuffle=True, batch_size=datamodule.hparams.batch_size)
    settings = {"accelerator": "cpu", "devices": 1, **(trainer or {})}
    inner = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=[labelled_progress_bar(label)] if progress and label else None,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        **settings,
    )
    with local_metrics(model):
        inner.fit(model, train_dataloaders=loader)
    return model.eval()


def _not_distributed() -> bool:
    return False


@contextmanager
def local_metrics(model):
    """Within: the model's torchmetrics metrics compute from this process's values alone. An inner training runs
    on rank zero while the other ranks of a DDP run wait for its result (``phases.distributed.rank_zero_run``); a
    metric that synchronised over the process group at the end of an epoch would wait for them forever."""
    from torchmetrics import Metric

    metrics = [m for m in model.modules() if isinstance(m, Metric)]
    saved = [m.distributed_available_fn for m in metrics]
    for m in metrics:
        m.distributed_available_fn = _not_distributed
    try:
        yield
    finally:
        for m, fn in zip(metrics, saved, strict=True):
            m.distributed_available_fn = fn


def train_classifier(
    hparams: dict,
    datamodule,
    train_ids,
    *,
    epochs: int,
    seed: int,
    trainer: dict | None = None,
    progress: bool = False,
    label: str | None = None,
) -> Classifier:
    """Train a fresh ``Classifier(**hparams)`` on ``train_ids``: the baseline's recipe.

    Seeds everything with ``seed`` right before building the model, as
    ``healing-pl fit`` does, so a retrain on the remain set is the same run as
    a ``fit`` on it with that seed.
    """
    L.seed_everything(seed, verbose=False)
    model = Classifier(**hparams)
    return fit_on(model, datamodule, train_ids, epochs=epochs, trainer=trainer, progress=progress, label=label)


def gold_key(hparams: dict, datamodule, forget_ids, *, epochs: int, seed: int) -> str:
    """Content hash of what determines a gold standard."""
    content = {
        "dataset": datamodule.hparams.dataset,
        "primary": hashlib.sha256(datamodule.primary_ids.numpy().tobytes()).hexdigest(),
        "forget": sorted(int(i) for i in torch.as_tensor(forget_ids).tolist()),
        "model": {k: hparams[k] for k in sorted(hparams)},
        "epochs": epochs,
        "batch_size": datamodule.hparams.batch_size,
        "data_seed": datamodule.hparams.seed,
        "seed": seed,
        "code": code_version(__name__, *MODEL_CODE),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:20]


def load_cached(path: str) -> dict:
    """A cache file's payload, read with ``weights_only=True``; a file that is not plain weights (a planted
    pickle, a torn write) stops with one sentence and runs nothing."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"cache file '{path}' cannot be loaded as plain weights ({type(err).__name__}); delete it to recompute."
        ) from None
    if not isinstance(payload, dict) or "state_dict" not in payload or "hyper_parameters" not in payload:
        raise ValueError(f"cache file '{path}' is not a healing-pl cache entry; delete it to recompute.")
    return payload


def one_process(path: str | None) -> str | None:
    """``path``, or None inside a multi-process run: its ranks compute together, and one rank waiting on another's
    :func:`~healing_pl.lock.compute_once` would stall their collectives (rank zero writes the entry alone)."""
    import torch.distributed as dist

    return None if dist.is_available() and dist.is_initialized() else path


def gold_standard(
    hparams: dict,
    datamodule,
    forget_ids,
    *,
    epochs: int,
    seed: int,
    cache_dir: str | None = "runs/cache",
    trainer: dict | None = None,
    progress: bool = False,
) -> tuple[Classifier, dict]:
    """The GS for ``forget_ids``: loaded from the cache when present, else trained (and cached).

    ``trainer``: accelerator, devices and precision of the training (see :func:`fit_on`); a cached
    model is moved to that device. Returns the model and ``{"key", "cached", "time_s"}`` (time of
    the training that made it).
    """
    remain = datamodule.remain_ids(forget_ids)
    key = gold_key(hparams, datamodule, forget_ids, epochs=epochs, seed=seed)
    path = os.path.join(cache_dir, f"gold-{key}.pt") if cache_dir else None
    with compute_once(one_process(path)):
        if path and os.path.isfile(path):
            saved = load_cached(path)
            model = Classifier(**saved["hyper_parameters"])
            model.load_state_dict(saved["state_dict"])
            return place_like(model.eval(), trainer), {"key": key, "cached": True, "time_s": saved["time_s"]}
        start = time.perf_counter()
        model = train_classifier(
            hparams,
            datamodule,
            remain,
            epochs=epochs,
            seed=seed,
            trainer=trainer,
            progress=progress,
            label="gold standard",
        )
        seconds = time.perf_counter() - start
        if path:
            save_torch(
                {
                    "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                    "hyper_parameters": hparams,
                    "time_s": seconds,
                },
                path,
            )
    return model, {"key": key, "cached": False, "time_s": seconds}


def naive_unlearn(
    model: Classifier,
    datamodule,
    forget_ids,
    *,
    epochs: int,
    seed: int,
    cache_dir: str | None = "runs/cache",
    trainer: dict | None = None,
    progress: bool = False,
) -> Classifier:
    """Naive unlearning of ``forget_ids``: the gold standard (the input model is only read for its recipe)."""
    gold, _ = gold_standard(
        model_hparams(model),
        datamodule,
        forget_ids,
        epochs=epochs,
        seed=seed,
        cache_dir=cache_dir,
        trainer=trainer,
        progress=progress,
    )
    return gold


def place_like(model: Classifier, trainer: dict | None) -> Classifier:
    """Move a model loaded on the CPU to the device (and floating dtype) an inner trainer would use."""
    if not trainer:
        return model
    device = trainer_device(trainer)
    dtype = PRECISION_DTYPES.get(str(trainer.get("precision", "32-true")))
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


#: Lightning's "true" precisions convert the model's parameters to this dtype
PRECISION_DTYPES = {
    "64-true": torch.float64,
    "64": torch.float64,
    "32-true": torch.float32,
    "32": torch.float32,
    "16-true": torch.float16,
    "bf16-true": torch.bfloat16,
}


def trainer_device(trainer: dict) -> torch.device:
    """The device a Trainer built from ``trainer`` (accelerator and a one-device list) trains on."""
    accelerator = str(trainer.get("accelerator", "cpu"))
    devices = trainer.get("devices", 1)
    index = devices[0] if isinstance(devices, (list, tuple)) and devices else None
    if accelerator == "cpu":
        return torch.device("cpu")
    return torch.device(accelerator, index) if index is not None else torch.device(accelerator)


@UNLEARNERS.register
class Naive(Unlearner):
    """Naive: retrain from scratch on the remain set (the gold standard).

    The baseline's recipe, cached by content hash in cache_dir."""

    name = "naive"
    label = "Naive"
    cacheable = False  # the gold standard keeps its own cache

    def divergence_hint(self) -> str:
        return "lower the baseline's --model.lr"

    def run(self, model, datamodule, forget_ids, context, seed):
        # the gold standard repeats the baseline's recipe (its seed), whatever the method's seed
        gold, info = gold_standard(
            model_hparams(model),
            datamodule,
            forget_ids,
            epochs=context.epochs,
            seed=context.seed,
            cache_dir=self.cache_dir,
            trainer=context.trainer,
            progress=context.progress,
        )
        return gold, {"gold_cached": info["cached"]}
