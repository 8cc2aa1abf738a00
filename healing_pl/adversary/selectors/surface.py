"""The attack surface: what an adversary's granted knowledge lets it see.

The threat model (paper, section 3) limits an adversary along three axes:

* a **budget**: how many samples it may name (a count, or a fraction of the
  training set; :meth:`Selector.resolve_budget` turns it into a count);
* its **knowledge of the system**: ``blind`` (no access), ``output_aware``
  (it can have chosen samples classified) or ``parameter_aware`` (it holds
  the model itself);
* its **knowledge of the training set**: ``blind`` (it does not know which
  samples were trained on), ``known`` (it knows the training set) or
  ``chosen`` (it could also add samples to it; for selection this is the
  same as ``known``, the injection itself is the data module's business).

The pipeline turns these limits into an :class:`AttackSurface` with
:func:`build_surface`: the surface carries *only* what the granted knowledge
allows.  A selector declares the least knowledge it needs (its ``needs_system``
and ``needs_data`` class attributes), is granted some (its ``system_knowledge``
and ``data_knowledge`` knobs) and gets nothing else:

=================  =====================================================
granted            what the surface holds
=================  =====================================================
blind system       ``candidate_ids`` it may name, their ``labels`` when
                   the training set is known, ``num_classes``
output_aware       and ``predict(ids) -> logits`` (a closure returning
                   detached CPU logits; never the model or its weights)
parameter_aware    and ``glass_box``: the model, a loss function, the
                   dataset, the training ids and optional validation ids
                   (and ``unlearn``, the deployed unlearning method, when
                   the adversary also knows how requests are unlearned)
=================  =====================================================

Candidates: with a known (or chosen) training set they are the training
(primary) ids; with a blind one they are ids from the whole pool, members or
not, and labels are withheld.

Device and precision: the oracle's predictions run on the model's device and
in its floating dtype; samples from the dataset are moved there (integer
labels stay integer).  The logits handed back live on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from healing_pl.gradients.params import to_model

__all__ = ["SYSTEM_KNOWLEDGE", "DATA_KNOWLEDGE", "GlassBox", "AttackSurface", "build_surface"]

#: Knowledge of the system, from least to most.
SYSTEM_KNOWLEDGE: tuple[str, ...] = ("blind", "output_aware", "parameter_aware")
#: Knowledge of the training set, from least to most.
DATA_KNOWLEDGE: tuple[str, ...] = ("blind", "known", "chosen")

LossFn = Callable[[Tensor, Tensor], Tensor]


def _level(value: str, levels: Sequence[str], what: str) -> int:
    if value not in levels:
        raise ValueError(f"Unknown {what} {value!r}; expected one of {', '.join(levels)}.")
    return levels.index(value)


def _as_ids(ids, what: str) -> Tensor:
    """Return ``ids`` as a 1-D LongTensor on the CPU (a copy is not made when not needed)."""
    t = torch.as_tensor(ids)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"{what} must be integer ids, got dtype {t.dtype}.")
    return t.reshape(-1).to(device="cpu", dtype=torch.long)


def _stack_samples(dataset, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Load ``dataset[i]`` for every id into one CPU batch ``(x, y)`` (move it with ``to_model``)."""
    xs, ys = [], []
    for i in ids.tolist():
        x, y = dataset[i]
        xs.append(torch.as_tensor(x))
        ys.append(int(y))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def _dataset_targets(dataset) -> Tensor:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise ValueError("The dataset needs a `targets` attribute with the label of every pool id.")
    return torch.as_tensor(targets).reshape(-1).long()


@dataclass(frozen=True)
class GlassBox:
    """What a parameter-aware adversary holds: the model and how it was trained.

    Attributes:
        model: the attacked model (returns logits).
        loss_fn: ``loss_fn(logits, targets)`` with mean reduction.
        dataset: the pool (``dataset[i] -> (x, y)``).
        train_ids: the training (primary) ids, or None when the training
            set is blind to the adversary.
        val_ids: held-out ids for influence on the validation loss, or None.
        unlearn: ``unlearn(forget_ids) -> model``: the deployed unlearning method with its
            hyperparameters, run on a copy of ``model`` (the input is left untouched) with a fixed
            seed, for an adversary that also knows how requests are unlearned; or None.
    """

    model: nn.Module
    loss_fn: LossFn
    dataset: object
    train_ids: Tensor | None
    val_ids: Tensor | None
    unlearn: Callable[[Tensor], nn.Module] | None = None


@dataclass(frozen=True)
class AttackSurface:
    """Everything one adversary may use; built by :func:`build_surface`.

    Attributes:
        system_knowledge: granted knowledge of the system.
        data_knowledge: granted knowledge of the training set.
        candidate_ids: the ids the adversary may name (sorted, distinct).
        labels: labels aligned with ``candidate_ids`` when the training set
            is known, else None.
        num_classes: number of classes of the task.
        predict: ``predict(ids) -> logits`` (detached, on the CPU, in the
            model's floating dtype or float32 if that is narrower) for
            output-aware and parameter-aware adversaries, else None.
        glass_box: the model, loss and data for parameter-aware adversaries,
            else None.
        guess_pools: ``(members, non_members)`` among the candidates, set for
            a blind training set only.  It is the simulator's ground truth
            that lets ``blind_guess`` control how many of a blind adversary's
            guesses land in the training set (its hit rate stands for side
            knowledge, e.g. a public data set overlapping the training set);
            a selector must not use it for anything else.
        mislabelled_ids: the training samples the data owner knows to carry a wrong label (``data.mislabel``;
            sorted, empty when none): a data-cleaning request names them. Known training set only.
    """

    system_knowledge: str
    data_knowledge: str
    candidate_ids: Tensor
    labels: Tensor | None
    num_classes: int
    predict: Callable[[Tensor], Tensor] | None = None
    glass_box: GlassBox | None = None
    guess_pools: tuple[Tensor, Tensor] | None = None
    mislabelled_ids: Tensor = torch.empty(0, dtype=torch.long)

    @property
    def system_level(self) -> int:
        return SYSTEM_KNOWLEDGE.index(self.system_knowledge)

    @property
    def data_level(self) -> int:
        return DATA_KNOWLEDGE.index(self.data_knowledge)


def _make_predict(model: nn.Module, dataset, batch_size: int) -> Callable[[Tensor], Tensor]:
    """A black-box oracle over ``model``: ids in, detached CPU logits out.

    The model is only captured by the closure; the returned logits carry no
    autograd graph, so nothing reachable from them leads to the weights.
    The samples are run on the model's device in its floating dtype; the
    logits come back on the CPU in that dtype (at least float32).  The
    model's train/eval mode is restored after each call.
    """

    def predict(ids) -> Tensor:
        ids = _as_ids(ids, "predict ids")
        if len(ids) == 0:
            raise ValueError("predict needs at least one id.")
        was_training = model.training
        model.eval()
        out = []
        try:
            with torch.inference_mode():
                for start in range(0, len(ids), batch_size):
                    x, _ = _stack_samples(dataset, ids[start : start + batch_size])
                    out.append(model(to_model(x, model)))
        finally:
            model.train(was_training)
        logits = torch.cat(out).clone()  # a normal tensor, outside inference mode
        return logits.to(device="cpu", dtype=torch.promote_types(logits.dtype, torch.float32))

    return predict


def build_surface(
    *,
    system_knowledge: str,
    data_knowledge: str,
    dataset,
    primary_ids,
    non_member_ids=None,
    num_classes: int | None = None,
    model: nn.Module | None = None,
    loss_fn: LossFn | None = None,
    val_ids=None,
    batch_size: int = 256,
    unlearn: Callable[[Tensor], nn.Module] | None = None,
) -> AttackSurface:
    """Build the :class:`AttackSurface` the granted knowledge allows.

    Args:
        system_knowledge: ``blind``, ``output_aware`` or ``parameter_aware``.
        data_knowledge: ``blind``, ``known`` or ``chosen``.
        dataset: the pool; ``dataset[i] -> (x, y)`` and ``dataset.targets``.
        primary_ids: the training set D.
        non_member_ids: ids never trained on that a blind adversary may also
            name (backup/val/test); None means every pool id that is not in
            ``primary_ids``.  Ignored when the training set is known.
        num_classes: classes of the task; by default ``max(targets) + 1``.
        model: the attacked model; required for output/parameter-aware.
        loss_fn: loss for parameter-aware adversaries (default cross-entropy).
        val_ids: validation ids for parameter-aware influence scores.
        batch_size: batch size for ``predict``.
        unlearn: the unlearning simulator of a parameter-aware adversary that knows the method
            (see :class:`GlassBox`); ignored below parameter-aware.
    """
    s_level = _level(system_knowledge, SYSTEM_KNOWLEDGE, "system knowledge")
    d_level = _level(data_knowledge, DATA_KNOWLEDGE, "data knowledge")
    targets = _dataset_targets(dataset)
    pool_size = len(targets)
    primary = torch.unique(_as_ids(primary_ids, "primary_ids"))
    if len(primary) == 0:
        raise ValueError("The training set (primary_ids) is empty.")
    if primary.min() < 0 or primary.max() >= pool_size:
        raise ValueError(f"primary_ids must lie in [0, {pool_size}), the pool's id range.")
    if num_classes is None:
        num_classes = int(targets.max()) + 1

    guess_pools = None
    if d_level >= DATA_KNOWLEDGE.index("known"):
        candidates = primary
        labels = targets[candidates]
    else:
        is_member = torch.zeros(pool_size, dtype=torch.bool)
        is_member[primary] = True
        if non_member_ids is None:
            outsiders = torch.nonzero(~is_member).reshape(-1)
        else:
            outsiders = torch.unique(_as_ids(non_member_ids, "non_member_ids"))
            if len(outsiders) and (outsiders.min() < 0 or outsiders.max() >= pool_size):
                raise ValueError(f"non_member_ids must lie in [0, {pool_size}), the pool's id range.")
            if is_member[outsiders].any():
                raise ValueError("non_member_ids overlaps the training set (primary_ids).")
        candidates = torch.sort(torch.cat([primary, outsiders])).values
        labels = None
        guess_pools = (primary, outsiders)

    predict = None
    glass_box = None
    if s_level >= SYSTEM_KNOWLEDGE.index("output_aware"):
        if model is None:
            raise ValueError(f"A {system_knowledge} adversary needs the model to query.")
        predict = _make_predict(model, dataset, batch_size)
    if s_level >= SYSTEM_KNOWLEDGE.index("parameter_aware"):
        glass_box = GlassBox(
            model=model,
            loss_fn=loss_fn if loss_fn is not None else F.cross_entropy,
            dataset=dataset,
            train_ids=primary if d_level >= DATA_KNOWLEDGE.index("known") else None,
            val_ids=None if val_ids is None else torch.unique(_as_ids(val_ids, "val_ids")),
            unlearn=unlearn,
        )
    mislabelled = getattr(dataset, "mislabelled_ids", None)  # a mislabelled pool (healing_pl.data.datasets)
    if mislabelled is None or d_level < DATA_KNOWLEDGE.index("known"):
        mislabelled = torch.empty(0, dtype=torch.long)
    return AttackSurface(
        mislabelled_ids=torch.as_tensor(mislabelled, dtype=torch.long),
        system_knowledge=system_knowledge,
        data_knowledge=data_knowledge,
        candidate_ids=candidates,
        labels=labels,
        num_classes=int(num_classes),
        predict=predict,
        glass_box=glass_box,
        guess_pools=guess_pools,
    )
