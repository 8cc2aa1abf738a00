"""Evaluation phase: accuracy of a model on the test, remain and forget sets, and which test images it gets right.

The per-image correctness on the test set (in the test loader's fixed order) lets the report compare two
models of one seed image by image (exact McNemar, :mod:`healing_pl.report.stats`): the run writes it to
``test_correct.json`` in its folder (:func:`save_correctness`), one bit per test image per model.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field

import torch

from healing_pl import records as rk
from healing_pl.files import write_json
from healing_pl.models.classifier import evaluate

#: the file of a run folder that holds its models' per-image test correctness
CORRECTNESS_FILE = "test_correct.json"
#: its format version
CORRECTNESS_VERSION = 1


@dataclass(frozen=True)
class Evaluation:
    """Test, remain and forget accuracy of one model (``prefix``: baseline, gold, unlearned, healed), and which
    test images (in the test loader's order) it classifies correctly (one byte per image, 0 or 1)."""

    prefix: str
    test: float
    remain: float
    forget: float
    test_correct: bytes | None = field(default=None, repr=False, compare=False)

    def record(self) -> dict:
        p = self.prefix
        return {
            rk.accuracy(p, rk.TEST): self.test,
            rk.accuracy(p, rk.REMAIN): self.remain,
            rk.accuracy(p, rk.FORGET): self.forget,
        }


@torch.no_grad()
def per_image_correctness(model, loader) -> bytes:
    """Which samples of ``loader`` (in its order) ``model`` classifies correctly: one byte (0 or 1) each; on the
    model's device and in its floating dtype, in eval mode."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    parts = []
    for x, y in loader:
        x, y = x.to(device=param.device, dtype=param.dtype), y.to(param.device)
        parts.append((model(x).argmax(1) == y).to(torch.uint8).cpu())
    model.train(was_training)
    return torch.cat(parts).numpy().tobytes() if parts else b""


def evaluate_sets(model, datamodule, forget_ids, prefix: str) -> Evaluation:
    """Evaluate ``model`` (on its own device) over the full test set, the remain set R and the forget set F; the
    test accuracy is the share of test images it gets right (:func:`per_image_correctness`)."""
    remain = datamodule.remain_ids(forget_ids)
    correct = per_image_correctness(model, datamodule.test_dataloader())
    return Evaluation(
        prefix,
        sum(correct) / max(len(correct), 1),
        evaluate(model, datamodule.loader(remain))["acc"],
        evaluate(model, datamodule.loader(forget_ids))["acc"],
        correct,
    )


def _pack(correct: bytes) -> str:
    import numpy as np

    bits = np.packbits(np.frombuffer(correct, dtype=np.uint8).astype(bool))
    return base64.b64encode(bits.tobytes()).decode("ascii")


def _unpack(text: str, n: int) -> list[bool]:
    import numpy as np

    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n]
    return [bool(b) for b in bits]


def save_correctness(run_dir: str, results) -> str | None:
    """Write ``test_correct.json`` into ``run_dir``: for every :class:`Evaluation` among ``results`` (or held by one
    as its ``evaluation``: the gold standard's, the unlearned model's) that holds per-image correctness, its
    model's bits (base64 of numpy.packbits, test-loader order). Call on rank zero. Returns the path (None when no
    result holds any)."""
    evaluations = [r if isinstance(r, Evaluation) else getattr(r, "evaluation", None) for r in results]
    models = {e.prefix: e.test_correct for e in evaluations if isinstance(e, Evaluation) and e.test_correct is not None}
    if not models:
        return None
    sizes = {len(c) for c in models.values()}
    if len(sizes) != 1:
        raise ValueError(f"the models were tested on test sets of different sizes: {sorted(sizes)}.")
    payload = {
        "version": CORRECTNESS_VERSION,
        "order": "the test loader's order",
        "n": sizes.pop(),
        "models": {name: _pack(c) for name, c in sorted(models.items())},
    }
    return write_json(os.path.join(run_dir, CORRECTNESS_FILE), payload)


def load_correctness(run_dir: str) -> dict[str, list[bool]]:
    """The per-image test correctness a run saved, by model (baseline, gold, unlearned, healed); empty when the
    run saved none or the file cannot be read as one."""
    path = os.path.join(run_dir, CORRECTNESS_FILE)
    try:
        with open(path) as f:
            payload = json.load(f)
        n = int(payload["n"])
        return {name: _unpack(text, n) for name, text in payload["models"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
