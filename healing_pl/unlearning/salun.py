"""SalUn: saliency-masked random-label unlearning.

Fan, Liu, Zhang, Wei, Wong and Liu, ICLR 2024, "SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency in Both Image Classification and Generation". Two steps, as the authors' code runs them:

1. The weight saliency mask: the gradient of the forget loss ``CE(F)`` with respect to every trainable weight
   (summed over the forget batches, model in eval mode), in absolute value; the weights are ranked by magnitude
   over the whole network and the first ``int(N * ratio)`` of N are salient. Ties are broken deterministically
   (stable sort: among equal magnitudes the earlier weight, in parameter order, ranks first), so the mask keeps
   exactly ``int(N * ratio)`` weights at every ratio (at ratio 0.75 a quarter of the weights is never salient,
   even where many gradients are exactly zero). The reference's default keeps half (``ratio = 0.5``).
2. Random labelling: every epoch, every forget sample gets a label drawn uniformly from *all* classes (it may
   equal its true label), redrawn each epoch from the seed; the model is trained on F with those labels together
   with R with its true labels (one shuffled set). After every backward pass the gradients of the non-salient
   weights are multiplied by 0 (the reference masks the gradient, not the weight: weight decay and momentum
   still act on every weight, as in the reference).

Defaults: the reference's SGD recipe: ``ratio = 0.5``, 10 epochs, lr 0.013, momentum 0.9, weight decay 5e-4,
the baseline's batch size. ``optimizer="adam"`` (``lr`` None: the baseline's) is kept as an option. Every op runs
on the model's device and in its dtype.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from healing_pl.gradients.params import eval_mode, to_model, trainable_named_parameters
from healing_pl.unlearning.base import UNLEARNERS, StochasticUnlearner, learning_rate
from healing_pl.unlearning.loop import make_optimizer, train_epochs


class Relabeled(Dataset):
    """The samples of ``dataset`` with the labels ``labels`` (same order; ``labels`` may be replaced between
    epochs)."""

    def __init__(self, dataset: Dataset, labels: torch.Tensor):
        if len(dataset) != len(labels):
            raise ValueError(f"{len(labels)} labels for {len(dataset)} samples.")
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, _ = self.dataset[index]
        return x, int(self.labels[index])


def random_labels(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` labels drawn uniformly from all ``num_classes`` classes (the true label included), as the reference."""
    if num_classes < 2:
        raise ValueError("random labels need at least 2 classes.")
    return torch.randint(0, num_classes, (n,), generator=generator)


def saliency_mask(model, forget_loader, ratio: float) -> dict[str, torch.Tensor]:
    """``{name: bool mask}``: exactly ``int(N * ratio)`` of the N trainable weights, those with the largest
    |grad CE(F)| (summed over the batches; ties: the earlier weight in parameter order)."""
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
    keep = int(magnitude.numel() * ratio)
    order = torch.sort(magnitude, descending=True, stable=True).indices
    flat = torch.zeros(magnitude.numel(), dtype=torch.bool, device=magnitude.device)
    flat[order[:keep]] = True
    masks, start = {}, 0
    for (name, _), g in zip(named, grads, strict=True):
        masks[name] = flat[start : start + g.numel()].view_as(g)
        start += g.numel()
    return masks


def salun(
    model,
    datamodule,
    forget_ids,
    *,
    lr: float,
    ratio: float = 0.5,
    epochs: int = 10,
    batch_size: int | None = None,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float | None = 5e-4,
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
    labels = torch.Generator().manual_seed(seed)
    relabeled = Relabeled(datamodule.subset(forget_ids), torch.zeros(len(forget_ids), dtype=torch.long))
    data = ConcatDataset([relabeled, datamodule.subset(remain)])
    loader = DataLoader(data, batch_size=size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    masked = [(p, mask[n].to(p.dtype)) for n, p in trainable_named_parameters(out)]
    opt = make_optimizer(out, optimizer, lr, momentum=momentum, weight_decay=weight_decay)
    out.train()

    def objective(batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(out(x), y)

    def mask_gradients() -> None:  # only the salient weights get a loss gradient
        for p, m in masked:
            if p.grad is not None:
                p.grad.mul_(m)

    for _ in range(epochs):  # the reference relabels the forget set at the start of every epoch
        relabeled.labels = random_labels(len(forget_ids), datamodule.num_classes, labels)
        train_epochs(out, loader, objective, opt, before_step=mask_gradients)
    salient = sum(int(m.sum()) for m in mask.values()) / max(1, sum(m.numel() for m in mask.values()))
    return out.eval(), {"salient_fraction": salient}


@UNLEARNERS.register
class SalUn(StochasticUnlearner):
    """SalUn (Fan et al. 2024).

    Random-label training restricted (by a gradient mask) to the weights most salient for the forget loss
    (:func:`salun`)."""

    name = "salun"
    label = "SalUn"
    strengths = {"lr": (True, 1e-4, 1e-1)}

    def __init__(
        self,
        ratio: float = 0.5,
        epochs: int = 10,
        lr: float | None = 0.013,
        optimizer: Literal["sgd", "adam"] = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        **kwargs,
    ):
        """
        Args:
            ratio: share of the weights (largest forget-loss gradients) whose gradients are kept, in (0, 1];
                exactly int(N ratio) weights; reference 0.5.
            epochs: epochs of random-label training over the forget plus remain sets; reference 10.
            lr: learning rate; reference 0.013 with SGD (None: the baseline's, meant for optimizer adam).
            optimizer: sgd (the reference) or adam (this suite's baselines' optimizer).
            momentum: SGD momentum; reference 0.9.
            weight_decay: weight decay; reference 5e-4.
        """
        super().__init__(**kwargs)
        self._positive({"lr": lr})
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"unlearn.ratio must lie in (0, 1], got {ratio}.")
        self._at_least({"epochs": epochs}, 1)
        self._non_negative({"momentum": momentum, "weight_decay": weight_decay})
        self._one_of("optimizer", optimizer, ("sgd", "adam"))
        self.ratio, self.epochs, self.lr = ratio, epochs, lr
        self.optimizer, self.momentum, self.weight_decay = optimizer, momentum, weight_decay

    def run(self, model, datamodule, forget_ids, context, seed):
        return salun(
            model,
            datamodule,
            forget_ids,
            lr=learning_rate(self.lr, model),
            ratio=self.ratio,
            epochs=self.epochs,
            optimizer=self.optimizer,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            seed=seed,
        )
