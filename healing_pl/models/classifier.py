"""The Classifier LightningModule: a backbone, cross-entropy, Adam, and accuracy metrics."""

from __future__ import annotations

import os

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from healing_pl.models.backbones import build_backbone


class Classifier(L.LightningModule):
    """Image classifier over a backbone, logging loss and accuracy for train / val / test.

    Accuracy is the micro average (the fraction of correct predictions, the
    paper's accuracy); per-class accuracy is logged for val and test as well.

    Args:
        backbone: ``small_cnn`` or a timm model name (``resnet50``, ``efficientnet_b0``, ...).
        num_classes: number of classes (linked from the data).
        in_chans: image channels (linked from the data).
        image_size: image side in pixels (linked from the data).
        pretrained: load timm's pretrained weights (downloads them once).
        weights: a local weights file for the timm backbone (its classifier is re-initialised).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self,
        backbone: str = "small_cnn",
        num_classes: int = 10,
        in_chans: int = 1,
        image_size: int = 28,
        pretrained: bool = False,
        weights: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if lr <= 0:
            raise ValueError(f"the learning rate must be positive, got lr={lr}.")
        self.save_hyperparameters()
        self.net = build_backbone(
            backbone,
            in_chans=in_chans,
            num_classes=num_classes,
            image_size=image_size,
            pretrained=pretrained,
            weights=weights,
            drop_rate=drop_rate,
        )
        #: prefix of every logged key, e.g. "healed/" during a healing fine-tune
        self.log_prefix = ""
        #: whether the validation loop's metrics go to the logger (a heal measures validation itself)
        self.log_validation = True
        #: the learning rate of the next fits and the option that set it (see :meth:`train_at`); the recorded
        #: hyperparameters keep the recipe the model was trained with
        self._fit_lr: float | None = None
        self._lr_option = "--model.lr"
        self.metrics = nn.ModuleDict(
            {f"{s}_acc": MulticlassAccuracy(num_classes, average="micro") for s in ("train", "val", "test")}
        )
        self.metrics.update({f"{s}_class_acc": MulticlassAccuracy(num_classes, average=None) for s in ("val", "test")})

    @property
    def fit_lr(self) -> float:
        """The learning rate the next fit's optimizer uses: the one :meth:`train_at` set, or ``hparams.lr``."""
        return float(self.hparams.lr if self._fit_lr is None else self._fit_lr)

    def train_at(self, lr: float | None, option: str) -> Classifier:
        """Run the next fits at ``lr`` (None: the model's own ``hparams.lr``), naming ``option`` (e.g.
        ``--heal.lr``) when the loss diverges. ``hparams`` are left alone: a healed checkpoint records the
        baseline's recipe, and the heal's learning rate is recorded by the heal phase."""
        if lr is not None and not lr > 0:
            raise ValueError(f"the learning rate must be positive, got {option.lstrip('-')}={lr}.")
        self._fit_lr, self._lr_option = (None, "--model.lr") if lr is None else (float(lr), option)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate-layer features (the input of the classifier layer)."""
        return self.net.embed(x)

    def _step(self, batch, stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the {stage} loss became {loss.item()}: the hyperparameters make the model diverge "
                f"(lower {self._lr_option}={self.fit_lr:g})."
            )
        p, logger = self.log_prefix, stage != "val" or self.log_validation
        acc = self.metrics[f"{stage}_acc"]
        acc(logits, y)
        shown = stage != "train"
        self.log(f"{p}{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=shown, sync_dist=True, logger=logger)
        self.log(f"{p}{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True, logger=logger)
        if stage != "train":
            self.metrics[f"{stage}_class_acc"].update(logits, y)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _log_class_acc(self, stage: str) -> None:
        metric = self.metrics[f"{stage}_class_acc"]
        per_class = metric.compute()
        logger = stage != "val" or self.log_validation
        self.log_dict({f"{self.log_prefix}{stage}/acc_class_{c}": v for c, v in enumerate(per_class)}, logger=logger)
        metric.reset()

    def on_validation_epoch_end(self):
        self._log_class_acc("val")

    def on_test_epoch_end(self):
        self._log_class_acc("test")

    def predict_step(self, batch, batch_idx):
        return self(batch[0]).argmax(1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the training recipe, so a gold standard can be retrained exactly like this model
        checkpoint["recipe"] = {"epochs": self.trainer.max_epochs, "seed": int(os.environ.get("PL_GLOBAL_SEED", 0))}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.fit_lr, weight_decay=self.hparams.weight_decay)


def read_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a Classifier checkpoint as a dict, or stop with one sentence saying what is wrong with it.

    The file is read with ``weights_only=True``: a checkpoint someone else wrote cannot run code.
    """
    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"checkpoint '{path}' {what}.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"checkpoint '{path}' is empty, not a checkpoint.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or not a torch file
        raise ValueError(f"checkpoint '{path}' is corrupt or not a checkpoint ({type(err).__name__}).") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or not isinstance(ckpt.get("hyper_parameters"), dict):
        raise ValueError(f"checkpoint '{path}' is not a healing-pl Classifier checkpoint.")
    return ckpt


def load_classifier(path: str, map_location="cpu") -> Classifier:
    """Load a Classifier checkpoint, or stop with one sentence saying what is wrong with it (see
    :func:`read_checkpoint`)."""
    ckpt = read_checkpoint(path, map_location)
    try:
        model = Classifier(**{k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")})
    except TypeError:
        raise ValueError(f"checkpoint '{path}' is not a healing-pl Classifier checkpoint.") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError:
        raise ValueError(f"checkpoint '{path}' does not match the Classifier it describes.") from None
    model.checkpoint = ckpt  # the caller may read the datamodule state or epochs from it
    return model


def check_compatible(model: Classifier, ckpt_model: Classifier | dict, path: str, dataset: str | None = None) -> None:
    """Stop when a checkpoint was trained for another model (or dataset, or image size) than the config describes.

    ``ckpt_model`` is the loaded checkpoint's Classifier or the checkpoint dict (:func:`read_checkpoint`);
    ``dataset`` is the config's dataset, compared with the one saved with the checkpoint's splits.
    """
    checkpoint = ckpt_model if isinstance(ckpt_model, dict) else getattr(ckpt_model, "checkpoint", {})
    hparams = checkpoint["hyper_parameters"] if isinstance(ckpt_model, dict) else ckpt_model.hparams
    saved_dataset = (checkpoint.get("HealingDataModule") or {}).get("dataset")
    if dataset is not None and saved_dataset is not None and saved_dataset != dataset:
        raise ValueError(
            f"checkpoint '{path}' holds another model: it was trained on another dataset, '{saved_dataset}' "
            f"(config: '{dataset}')."
        )
    keys = ("backbone", "num_classes", "in_chans", "image_size")
    mine = {k: model.hparams[k] for k in keys}
    theirs = {k: hparams.get(k) for k in keys}
    if mine["image_size"] != theirs["image_size"]:
        size, want = theirs["image_size"], mine["image_size"]
        raise ValueError(
            f"checkpoint '{path}' holds another model: it was trained on another image size, {size}x{size} pixels "
            f"(config: {want}x{want})."
        )
    if mine != theirs:
        diff = ", ".join(f"{k}={theirs[k]} (config: {mine[k]})" for k in keys if mine[k] != theirs[k])
        raise ValueError(f"checkpoint '{path}' holds another model: {diff}.")


@torch.no_grad()
def evaluate(model: nn.Module, loader) -> dict:
    """Accuracy, mean cross-entropy and per-class accuracy of ``model`` over ``loader`` (eval mode, no grad).

    Batches run on the model's device and in its floating dtype (a ``64-true`` or ``bf16-true``
    model gets inputs of its own dtype), so the evaluation happens where the model lives.
    """
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    correct, loss, n = 0, 0.0, 0
    hits: Tensor | None = None
    counts: Tensor | None = None
    for x, y in loader:
        x, y = x.to(device=param.device, dtype=param.dtype), y.to(param.device)
        logits = model(x)
        loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        right = logits.argmax(1) == y
        correct += right.sum().item()
        n += len(y)
        size = max(logits.shape[1], int(y.max()) + 1)
        batch_counts = torch.bincount(y, minlength=size)
        batch_hits = torch.bincount(y[right], minlength=size)
        counts = batch_counts if counts is None else counts + batch_counts
        hits = batch_hits if hits is None else hits + batch_hits
    model.train(was_training)
    per_class = [] if counts is None else (hits.double() / counts.clamp(min=1).double()).tolist()
    return {"acc": correct / max(n, 1), "loss": loss / max(n, 1), "acc_class": per_class}
