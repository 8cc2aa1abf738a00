"""SalUn: saliency-masked random-label unlearning.

Fan, Liu, Zhang, Wei, Wong and Liu, ICLR 2024, "SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency in Both Image Classification and Generation". Two steps:

1. The weight saliency mask: the gradient of the forget loss ``CE(F)`` with respect to every trainable weight
   (summed over the forget batches, model in eval mode), in absolute value; the ``ratio`` share of all weights
   with the largest magnitudes (one threshold over the whole network) is salient. The paper's default keeps half
   (``ratio = 0.5``).
2. Random labelling: every forget sample gets a random wrong label (drawn once, uniformly among the other
   classes, from the seed), and the model is fine-tuned on F with those labels together with R with its true
   labels (one shuffled set) for a few epochs; only the salient weights change (the others are held at their
   values after every step).

Defaults: ``ratio = 0.5``, two epochs (the paper: 10 on CIFAR-10 at its SGD rate), Adam at the baseline's learning
rate and batch size. Every op runs on the model's device and in its dtype.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from healing_pl.gradients.params import eval_mode, to_model, trainable_named_parameters
from healing_pl.unlearning.base import UNLEARNERS, StochasticUnlearner, learning_rate
from healing_pl.unlearning.loop import train_epochs
from healing_pl.unlearning.neggrad_plus import adam_for


class Relabeled(Dataset):
    """The samples of ``dataset`` with the labels ``labels`` (same order)."""

    def __init__(self, dataset: Dataset, labels: torch.Tensor):
        if len(dataset) != len(labels):
            raise ValueError(f"{len(labels)} labels for {len(dataset)} samples.")
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, _ = self.dataset[index]
        return x, int(self.labels[index])


def random_wrong_labels(targets: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """For each label, a label drawn uniformly among the ``num_classes - 1`` other classes (seeded)."""
    if num_classes < 2:
        raise ValueError("random labels need at least 2 classes.")
    shift = torch.randint(1, num_classes, (len(targets),), generator=torch.Generator().manual_seed(seed))
    return (targets.long() + shift) % num_classes


def saliency_mask(model, forget_loader, ratio: float) -> dict[str, torch.Tensor]:
    """``{name: bool mask}``: the ``ratio`` share of trainable weights with the largest |grad CE(F)|."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"salun needs a saliency ratio in (0, 1], got {ratio}.")
    named = trainable_named_parameters(model)
    params = [p for _, p in named]
    grads = [torch.zeros_like(p) for p in params]
    with eval_mode(model):
        for batch in forget_loader:
            x, y = to_model(batch, model)
            for g, d in zip(grads, torch.autograd.grad(F.cross_entropy(model(x), y), params), strict=True):
                g.add_(d)
    magnitude = torch.cat([g.abs().flatten() for g in grads])
    keep = max(1, int(round(ratio * magnitude.numel())))
    threshold = torch.kthvalue(magnitude, magnitude.numel() - keep + 1).values  # the keep-th largest
    return {name: g.abs() >= threshold for (name, _), g in zip(named, grads, strict=True)}


def salun(
    model,
    datamodule,
    forget_ids,
    *,
    lr: float,
    ratio: float = 0.5,
    epochs: int = 2,
    batch_size: int | None = None,
    seed: int = 0,
):
    """A copy of ``model`` unlearned by SalUn (``model`` untouched); returns it and the share of salient weights."""
    if epochs < 1:
        raise ValueError(f"salun needs at least 1 epoch, got {epochs}.")
    forget_ids = datamodule.check_members(forget_ids)
    remain = datamodule.remain_ids(forget_ids)
    size = batch_size or datamodule.hparams.batch_size
    out = copy.deepcopy(model)
    mask = saliency_mask(out, datamodule.loader(forget_ids, batch_size=size), ratio)
    labels = random_wrong_labels(datamodule.targets[forget_ids], datamodule.num_classes, seed)
    data = ConcatDataset([Relabeled(datamodule.subset(forget_ids), labels), datamodule.subset(remain)])
    loader = DataLoader(data, batch_size=size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    named = trainable_named_parameters(out)
    frozen = [(p, mask[n], p.detach().clone()) for n, p in named]
    optimizer = adam_for(out, lr)
    out.train()

    def objective(batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(out(x), y)

    def hold_non_salient() -> None:  # only the salient weights change
        with torch.no_grad():
            for p, m, start in frozen:
                p.copy_(torch.where(m, p, start))

    train_epochs(out, loader, objective, optimizer, epochs=epochs, after_step=hold_non_salient)
    salient = sum(int(m.sum()) for m in mask.values()) / max(1, sum(m.numel() for m in mask.values()))
    return out.eval(), {"salient_fraction": salient}


@UNLEARNERS.register
class SalUn(StochasticUnlearner):
    """SalUn (Fan et al. 2024).

    Random-label fine-tuning restricted to the weights most salient for the forget loss (:func:`salun`)."""

    name = "salun"
    label = "SalUn"

    def __init__(self, ratio: float = 0.5, epochs: int = 2, lr: float | None = None, **kwargs):
        """
        Args:
            ratio: share of the weights (largest forget-loss gradients) that random labelling updates, in (0, 1].
            epochs: epochs of random-label fine-tuning over the forget plus remain sets.
            lr: Adam learning rate (None: the baseline's).
        """
        super().__init__(**kwargs)
        self._positive({"lr": lr})
        self.lr = lr
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"unlearn.ratio must lie in (0, 1], got {ratio}.")
        self._at_least({"epochs": epochs}, 1)
        self.ratio, self.epochs = ratio, epochs

    def run(self, model, datamodule, forget_ids, context, seed):
        return salun(
            model,
            datamodule,
            forget_ids,
            lr=learning_rate(self.lr, model),
            ratio=self.ratio,
            epochs=self.epochs,
            seed=seed,
        )
