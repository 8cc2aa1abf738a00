"""Baseline phase: load the checkpoint written by ``healing-pl fit`` and adopt its splits and recipe."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from healing_pl import records as rk
from healing_pl.models.classifier import Classifier, check_compatible, load_classifier
from healing_pl.unlearning.naive import model_hparams


@dataclass(frozen=True)
class Baseline:
    """The baseline checkpoint: where it is, its content hash and its training recipe.

    ``hparams`` are the model's as trained (the gold standard repeats them), whatever a later phase
    changes on the fitted model (e.g. the heal fine-tune's learning rate).
    """

    path: str
    sha256: str
    epochs: int  # the paper's N
    seed: int
    hparams: dict

    def record(self) -> dict:
        return {rk.BASELINE_CHECKPOINT: self.path, rk.BASELINE_SHA256: self.sha256, rk.BASELINE_EPOCHS: self.epochs}


def load_baseline(ckpt_path: str | None, model: Classifier, datamodule) -> Baseline:
    """Load the baseline's weights into ``model``, its splits into ``datamodule``; return its recipe.

    Reading only: every rank may call it. A missing, corrupt or foreign checkpoint stops with one sentence.
    """
    if not ckpt_path:
        raise ValueError("pass the baseline checkpoint with --ckpt_path (written by healing-pl fit).")
    saved = load_classifier(ckpt_path)
    check_compatible(model, saved, ckpt_path, dataset=datamodule.hparams.dataset)
    state = saved.checkpoint.get(type(datamodule).__qualname__)
    if state is None:
        raise ValueError(f"checkpoint '{ckpt_path}' holds no data splits; train the baseline with healing-pl fit.")
    datamodule.load_state_dict(state)
    model.load_state_dict(saved.state_dict())
    recipe = dict(saved.checkpoint.get("recipe") or {})
    with open(ckpt_path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    return Baseline(
        path=ckpt_path,
        sha256=sha256,
        epochs=int(recipe.get("epochs", 10)),
        seed=int(recipe.get("seed", 0)),
        hparams=model_hparams(saved),
    )
