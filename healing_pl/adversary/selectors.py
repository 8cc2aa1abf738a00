"""Forget-set selectors: how an adversary picks the samples it asks to unlearn.

The threat model (paper, section 3) limits an adversary along three axes:

* a **budget**: how many samples it may name (a count, or a fraction of the
  training set, see :class:`~healing_pl.adversary.config.AdversaryConfig`);
* its **knowledge of the system**: ``blind`` (no access), ``output_aware``
  (it can have chosen samples classified) or ``parameter_aware`` (it holds
  the model itself);
* its **knowledge of the training set**: ``blind`` (it does not know which
  samples were trained on), ``known`` (it knows the training set) or
  ``chosen`` (it could also add samples to it; for selection this is the
  same as ``known``, the injection itself is the data module's business).

The pipeline turns these limits into an :class:`AttackSurface` with
:func:`build_surface`: the surface carries *only* what the granted knowledge
allows.  A selector declares the knowledge it needs (``system_knowledge`` and
``data_knowledge`` class attributes) and gets nothing else:

=================  =====================================================
granted            what the surface holds
=================  =====================================================
blind system       ``candidate_ids`` it may name, their ``labels`` when
                   the training set is known, ``num_classes``
output_aware       and ``predict(ids) -> logits`` (a closure returning
                   detached CPU logits; never the model or its weights)
parameter_aware    and ``glass_box``: the model, a loss function, the
                   dataset, the training ids and optional validation ids
=================  =====================================================

Candidates: with a known (or chosen) training set they are the training
(primary) ids; with a blind one they are ids from the whole pool, members or
not, and labels are withheld.

Every selector returns exactly ``budget`` distinct ids from its candidates
as a ``LongTensor`` **in selection order**: most harmful first for the
ranking selectors (``worst_logits``, ``gradient``), draw order for the random
ones.  The same surface and seed always give the same ids.

Registry: :data:`SELECTORS` maps a config name to a selector class; a new
adversary is one class plus one line there.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover - import for type hints only
    from healing_pl.adversary.config import AdversaryConfig

__all__ = [
    "SYSTEM_KNOWLEDGE",
    "DATA_KNOWLEDGE",
    "GlassBox",
    "AttackSurface",
    "build_surface",
    "Selector",
    "RandomSelector",
    "ClassSelector",
    "WorstLogitsSelector",
    "GradientSelector",
    "BlindGuessSelector",
    "SELECTORS",
    "make_selector",
    "select_forget_set",
    "per_sample_grad_norms",
    "per_sample_grads_apply",
    "margin_scores",
]

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


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _stack_samples(dataset, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Load ``dataset[i]`` for every id into one batch ``(x, y)``."""
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


# --------------------------------------------------------------------------- #
# Attack surface
# --------------------------------------------------------------------------- #


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
    """

    model: nn.Module
    loss_fn: LossFn
    dataset: object
    train_ids: Optional[Tensor]
    val_ids: Optional[Tensor]


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
        predict: ``predict(ids) -> logits`` (detached, CPU, float) for
            output-aware and parameter-aware adversaries, else None.
        glass_box: the model, loss and data for parameter-aware adversaries,
            else None.
        guess_pools: ``(members, non_members)`` among the candidates, set for
            a blind training set only.  It is the simulator's ground truth
            that lets ``blind_guess`` control how many of a blind adversary's
            guesses land in the training set (its hit rate stands for side
            knowledge, e.g. a public data set overlapping the training set);
            a selector must not use it for anything else.
    """

    system_knowledge: str
    data_knowledge: str
    candidate_ids: Tensor
    labels: Optional[Tensor]
    num_classes: int
    predict: Optional[Callable[[Tensor], Tensor]] = None
    glass_box: Optional[GlassBox] = None
    guess_pools: Optional[tuple[Tensor, Tensor]] = None

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
    The model's train/eval mode is restored after each call.
    """

    def predict(ids) -> Tensor:
        ids = _as_ids(ids, "predict ids")
        if len(ids) == 0:
            raise ValueError("predict needs at least one id.")
        device = _model_device(model)
        was_training = model.training
        model.eval()
        out = []
        try:
            with torch.inference_mode():
                for start in range(0, len(ids), batch_size):
                    x, _ = _stack_samples(dataset, ids[start : start + batch_size])
                    out.append(model(x.to(device)).float().cpu())
        finally:
            model.train(was_training)
        return torch.cat(out).clone()  # a normal tensor, outside inference mode

    return predict


def build_surface(
    *,
    system_knowledge: str,
    data_knowledge: str,
    dataset,
    primary_ids,
    non_member_ids=None,
    num_classes: Optional[int] = None,
    model: Optional[nn.Module] = None,
    loss_fn: Optional[LossFn] = None,
    val_ids=None,
    batch_size: int = 256,
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
                raise ValueError(
                    f"non_member_ids must lie in [0, {pool_size}), the pool's id range."
                )
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
        )
    return AttackSurface(
        system_knowledge=system_knowledge,
        data_knowledge=data_knowledge,
        candidate_ids=candidates,
        labels=labels,
        num_classes=int(num_classes),
        predict=predict,
        glass_box=glass_box,
        guess_pools=guess_pools,
    )


# --------------------------------------------------------------------------- #
# Selectors
# --------------------------------------------------------------------------- #


class Selector(ABC):
    """Base class: checks knowledge and budget, and the contract of the answer.

    Subclasses set ``name``, the knowledge they need, and implement
    :meth:`_choose`.
    """

    name: ClassVar[str]
    #: minimum knowledge of the system this selector needs
    system_knowledge: ClassVar[str] = "blind"
    #: minimum knowledge of the training set this selector needs
    data_knowledge: ClassVar[str] = "blind"

    def select(self, surface: AttackSurface, budget: int) -> Tensor:
        """Return ``budget`` distinct candidate ids, in selection order."""
        if surface.system_level < SYSTEM_KNOWLEDGE.index(self.system_knowledge):
            raise ValueError(
                f"Selector {self.name!r} needs system knowledge {self.system_knowledge!r}, "
                f"but the adversary is {surface.system_knowledge!r}."
            )
        if surface.data_level < DATA_KNOWLEDGE.index(self.data_knowledge):
            raise ValueError(
                f"Selector {self.name!r} needs training-set knowledge {self.data_knowledge!r}, "
                f"but the adversary's is {surface.data_knowledge!r}."
            )
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"The budget must be a whole number of samples >= 1, got {budget!r}.")
        if budget > len(surface.candidate_ids):
            raise ValueError(
                f"The budget ({budget}) exceeds the {len(surface.candidate_ids)} samples "
                f"the adversary may name."
            )
        ids = _as_ids(self._choose(surface, budget), "selected ids")
        # The contract every selector promises; a failure here is a bug in the selector.
        if (
            len(ids) != budget
            or len(torch.unique(ids)) != budget
            or not torch.isin(ids, surface.candidate_ids).all()
        ):
            raise RuntimeError(
                f"Selector {self.name!r} broke its contract: {budget} distinct candidate ids."
            )
        return ids

    @abstractmethod
    def _choose(self, surface: AttackSurface, budget: int) -> Tensor:
        """Pick ``budget`` ids; the base class has checked knowledge and budget."""


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def _lowest(scores: Tensor, ids: Tensor, k: int) -> Tensor:
    """The ``k`` ids with the lowest scores; ties go to the lower id."""
    order = torch.argsort(ids)  # stable sort below keeps id order among equal scores
    scores, ids = scores[order], ids[order]
    ranked = torch.sort(scores, stable=True).indices
    return ids[ranked[:k]]


class RandomSelector(Selector):
    """Blind: ``budget`` uniformly random candidates (seeded), in draw order."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _choose(self, surface, budget):
        perm = torch.randperm(len(surface.candidate_ids), generator=_generator(self.seed))
        return surface.candidate_ids[perm[:budget]]


class ClassSelector(Selector):
    """Targeted: ``budget`` random samples of one class (the paper: 25 of one class)."""

    name = "class"
    data_knowledge = "known"

    def __init__(self, target_class: int, seed: int = 0):
        if target_class is None:
            raise ValueError("The 'class' selector needs a target_class.")
        self.target_class = int(target_class)
        self.seed = seed

    def _choose(self, surface, budget):
        if not 0 <= self.target_class < surface.num_classes:
            raise ValueError(
                f"target_class {self.target_class} is outside [0, {surface.num_classes})."
            )
        pool = surface.candidate_ids[surface.labels == self.target_class]
        if len(pool) < budget:
            raise ValueError(
                f"Class {self.target_class} has {len(pool)} training samples, fewer than the "
                f"budget of {budget}."
            )
        perm = torch.randperm(len(pool), generator=_generator(self.seed))
        return pool[perm[:budget]]


def margin_scores(logits: Tensor, labels: Tensor, score: str = "margin") -> Tensor:
    """Per-sample confidence in the true class; low means fragile.

    ``margin``: true-class logit minus the best other logit (negative when
    misclassified); ``logit``: the raw true-class logit.
    """
    true = logits.gather(1, labels.reshape(-1, 1)).reshape(-1)
    if score == "logit":
        return true
    if score != "margin":
        raise ValueError(f"Unknown score {score!r}; expected 'margin' or 'logit'.")
    others = logits.clone()
    others.scatter_(1, labels.reshape(-1, 1), float("-inf"))
    return true - others.max(dim=1).values


class WorstLogitsSelector(Selector):
    """Output-aware: the training samples the model is least sure of.

    Ranks the candidates by :func:`margin_scores` computed from ``predict``
    alone and returns the lowest ``budget`` (lowest first, ties by lower id).
    """

    name = "worst_logits"
    system_knowledge = "output_aware"
    data_knowledge = "known"

    def __init__(self, score: str = "margin"):
        if score not in ("margin", "logit"):
            raise ValueError(f"Unknown score {score!r}; expected 'margin' or 'logit'.")
        self.score = score

    def _choose(self, surface, budget):
        logits = surface.predict(surface.candidate_ids)
        scores = margin_scores(logits, surface.labels, self.score)
        return _lowest(scores, surface.candidate_ids, budget)


def _grad_params(model: nn.Module) -> dict[str, Tensor]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("The model has no parameters that require gradients.")
    return params


def per_sample_grads_apply(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    reduce: Callable[[dict[str, Tensor]], Tensor],
    *,
    engine: str = "vmap",
    max_elements: int = 2**25,
) -> Tensor:
    """Compute every sample's loss gradient and ``reduce`` it to one number each.

    ``reduce`` gets a dict name -> gradient with a leading batch dimension and
    returns one value per sample.  The loss of one sample is
    ``loss_fn(model(x_i[None]), y_i[None])``.  ``engine="vmap"`` uses
    ``torch.func`` (functional_call + vmap(grad)) on chunks that hold at most
    ``max_elements`` gradient numbers; ``engine="loop"`` runs one backward
    pass per sample (often faster for small CNNs on few cores).  The caller
    sets the model's mode (eval, so batch norm and dropout behave per sample).
    """
    params = _grad_params(model)
    n_params = sum(p.numel() for p in params.values())
    if engine == "loop":
        out = []
        names = list(params)
        for i in range(len(x)):
            loss = loss_fn(model(x[i : i + 1]), y[i : i + 1])
            grads = torch.autograd.grad(loss, [params[n] for n in names])
            out.append(reduce({n: g.unsqueeze(0) for n, g in zip(names, grads)}))
        return torch.cat(out)
    if engine != "vmap":
        raise ValueError(f"Unknown gradient engine {engine!r}; expected 'vmap' or 'loop'.")

    from torch.func import functional_call, grad, vmap

    detached = {n: p.detach() for n, p in params.items()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def sample_loss(p, xi, yi):
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return loss_fn(logits, yi.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    chunk = max(1, min(len(x), max_elements // max(n_params, 1)))
    out = []
    for start in range(0, len(x), chunk):
        grads = per_sample(detached, x[start : start + chunk], y[start : start + chunk])
        out.append(reduce(grads).detach())
    return torch.cat(out)


def _grad_norms(grads: dict[str, Tensor]) -> Tensor:
    return torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))


def per_sample_grad_norms(
    model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, *, engine: str = "vmap"
) -> Tensor:
    """L2 norm of each sample's loss gradient over all trainable parameters."""
    return per_sample_grads_apply(model, loss_fn, x, y, _grad_norms, engine=engine)


class GradientSelector(Selector):
    """Parameter-aware: the training samples with the most leverage on the model.

    ``mode="grad_norm"``: largest per-sample gradient norm of the loss.

    ``mode="influence"``: largest predicted *increase of the validation loss
    when the sample is removed*, ``g_val^T (H + dI)^-1 g_i`` (Koh & Liang's
    ``I_up,loss = -g_val^T H^-1 g_i`` is the effect of *up-weighting*; removing
    a sample is up-weighting by ``-1/n``, so the samples whose removal hurts
    most are those with the most negative ``I_up,loss``, i.e. the most helpful
    ones).  ``g_val`` is the mean-loss gradient over the validation ids, H the
    Hessian of the training loss, applied with LiSSA
    (:func:`healing_pl.unlearning.influence.lissa_inverse_hvp`).

    Largest first; ties by lower id.  The model is put in eval mode while
    scoring and restored afterwards.
    """

    name = "gradient"
    system_knowledge = "parameter_aware"
    data_knowledge = "known"

    def __init__(
        self,
        mode: str = "grad_norm",
        *,
        engine: str = "vmap",
        batch_size: int = 256,
        damping: float = 0.01,
        scale: float = 25.0,
        depth: int = 200,
        repeats: int = 1,
        seed: int = 0,
        progress: bool = False,
    ):
        if mode not in ("grad_norm", "influence"):
            raise ValueError(
                f"Unknown gradient_mode {mode!r}; expected 'grad_norm' or 'influence'."
            )
        if engine not in ("vmap", "loop"):
            raise ValueError(f"Unknown gradient engine {engine!r}; expected 'vmap' or 'loop'.")
        self.mode = mode
        self.engine = engine
        self.batch_size = batch_size
        self.damping = damping
        self.scale = scale
        self.depth = depth
        self.repeats = repeats
        self.seed = seed
        self.progress = progress

    def _choose(self, surface, budget):
        box = surface.glass_box
        model = box.model
        was_training = model.training
        model.eval()
        try:
            if self.mode == "grad_norm":
                scores = self._scores(box, surface.candidate_ids, _grad_norms)
            else:
                direction = self._influence_direction(box)
                scores = self._scores(box, surface.candidate_ids, self._dot_reduce(direction))
        finally:
            model.train(was_training)
        return _lowest(-scores, surface.candidate_ids, budget)

    @staticmethod
    def _dot_reduce(direction: Tensor):
        def dot(grads):
            flat = torch.cat([g.flatten(1) for g in grads.values()], dim=1)
            return flat @ direction.to(flat.device, flat.dtype)

        return dot

    def _scores(self, box: GlassBox, ids: Tensor, reduce) -> Tensor:
        device = _model_device(box.model)
        out = []
        starts = range(0, len(ids), self.batch_size)
        if self.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"per-sample gradients ({self.mode})", leave=False)
        for start in starts:
            x, y = _stack_samples(box.dataset, ids[start : start + self.batch_size])
            out.append(
                per_sample_grads_apply(
                    box.model, box.loss_fn, x.to(device), y.to(device), reduce, engine=self.engine
                ).float().cpu()
            )
        return torch.cat(out)

    def _influence_direction(self, box: GlassBox) -> Tensor:
        """``(H + dI)^-1 g_val`` as a flat vector over the trainable parameters."""
        if box.val_ids is None or len(box.val_ids) == 0:
            raise ValueError(
                "gradient_mode='influence' needs validation ids (val_ids) for the validation loss."
            )
        from torch.utils.data import DataLoader, Subset

        from healing_pl.unlearning.influence import lissa_inverse_hvp

        model, device = box.model, _model_device(box.model)
        params = list(_grad_params(model).values())
        g_val = [torch.zeros_like(p) for p in params]
        n_val = len(box.val_ids)
        for start in range(0, n_val, self.batch_size):
            x, y = _stack_samples(box.dataset, box.val_ids[start : start + self.batch_size])
            loss = box.loss_fn(model(x.to(device)), y.to(device)) * (len(x) / n_val)
            for acc, g in zip(g_val, torch.autograd.grad(loss, params)):
                acc += g
        vector = torch.cat([g.reshape(-1) for g in g_val]).detach()
        loader = DataLoader(
            Subset(box.dataset, box.train_ids.tolist()),
            batch_size=self.batch_size,
            shuffle=True,
            generator=_generator(self.seed),
        )

        def batch_loss(m: nn.Module, batch) -> Tensor:  # LiSSA's loss_fn(model, batch) form
            return box.loss_fn(m(batch[0]), batch[1])

        return lissa_inverse_hvp(
            model,
            batch_loss,
            loader,
            vector,
            damping=self.damping,
            scale=self.scale,
            depth=self.depth,
            repeats=self.repeats,
            progress=self.progress,
        ).detach()


class BlindGuessSelector(Selector):
    """Blind adversary without training-set knowledge: it guesses.

    It submits samples it believes were trained on; ``member_fraction`` of
    them (rounded to the nearest count) really are members, the rest are
    non-members (backup/val/test ids).  Members and non-members are drawn
    at random (seeded) from ``surface.guess_pools`` and then shuffled
    together, so the order reveals nothing.
    """

    name = "blind_guess"

    def __init__(self, member_fraction: float = 0.5, seed: int = 0):
        if not 0.0 <= member_fraction <= 1.0:
            raise ValueError(f"member_fraction must lie in [0, 1], got {member_fraction}.")
        self.member_fraction = member_fraction
        self.seed = seed

    def _choose(self, surface, budget):
        if surface.guess_pools is None:
            raise ValueError(
                "blind_guess models an adversary blind to the training set; "
                "use data_knowledge='blind'."
            )
        members, outsiders = surface.guess_pools
        n_members = int(math.floor(self.member_fraction * budget + 0.5))
        n_outsiders = budget - n_members
        if n_members > len(members) or n_outsiders > len(outsiders):
            raise ValueError(
                f"blind_guess needs {n_members} members and {n_outsiders} non-members, "
                f"but only {len(members)} and {len(outsiders)} exist."
            )
        g = _generator(self.seed)
        picked = torch.cat(
            [
                members[torch.randperm(len(members), generator=g)[:n_members]],
                outsiders[torch.randperm(len(outsiders), generator=g)[:n_outsiders]],
            ]
        )
        return picked[torch.randperm(budget, generator=g)]


#: Registry: config name -> selector class.
SELECTORS: dict[str, type[Selector]] = {
    RandomSelector.name: RandomSelector,
    ClassSelector.name: ClassSelector,
    WorstLogitsSelector.name: WorstLogitsSelector,
    GradientSelector.name: GradientSelector,
    BlindGuessSelector.name: BlindGuessSelector,
}


def make_selector(config: "AdversaryConfig", *, progress: bool = False) -> Selector:
    """Instantiate the selector a config names, with its options.

    ``progress`` shows progress bars for the long selectors (``gradient``).
    """
    name = config.selector
    if name == "random":
        return RandomSelector(seed=config.seed)
    if name == "class":
        return ClassSelector(config.target_class, seed=config.seed)
    if name == "worst_logits":
        return WorstLogitsSelector(score=config.score)
    if name == "gradient":
        return GradientSelector(
            config.gradient_mode,
            engine=config.gradient_engine,
            batch_size=config.batch_size,
            damping=config.influence_damping,
            scale=config.influence_scale,
            depth=config.influence_depth,
            repeats=config.influence_repeats,
            seed=config.seed,
            progress=progress,
        )
    if name == "blind_guess":
        return BlindGuessSelector(config.member_fraction, seed=config.seed)
    raise ValueError(f"Unknown selector {name!r}; expected one of {', '.join(SELECTORS)}.")


def select_forget_set(
    config: "AdversaryConfig",
    *,
    dataset,
    primary_ids,
    non_member_ids=None,
    num_classes: Optional[int] = None,
    model: Optional[nn.Module] = None,
    loss_fn: Optional[LossFn] = None,
    val_ids=None,
    progress: bool = False,
) -> Tensor:
    """The pipeline's one call: validate the config, build the surface, select.

    Args:
        config: the adversary (selector, budget, knowledge, seed...).
        dataset, primary_ids, non_member_ids, num_classes, model, loss_fn,
            val_ids: as for :func:`build_surface`.  Pass everything the
            pipeline has: only what ``config.system_knowledge`` and
            ``config.data_knowledge`` allow reaches the selector.
        progress: progress bars for the long selectors.

    Returns:
        ``budget`` distinct ids in selection order (see the module docstring).
    """
    primary = torch.unique(_as_ids(primary_ids, "primary_ids"))
    if num_classes is None:
        num_classes = int(_dataset_targets(dataset).max()) + 1
    budget = config.validate(n_train=len(primary), num_classes=num_classes)
    surface = build_surface(
        system_knowledge=config.system_knowledge,
        data_knowledge=config.data_knowledge,
        dataset=dataset,
        primary_ids=primary,
        non_member_ids=non_member_ids,
        num_classes=num_classes,
        model=model,
        loss_fn=loss_fn,
        val_ids=val_ids,
        batch_size=config.batch_size,
    )
    return make_selector(config, progress=progress).select(surface, budget)
