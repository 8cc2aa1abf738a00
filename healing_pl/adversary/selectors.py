"""Forget-set selectors: how an adversary picks the samples it asks to unlearn.

The threat model (paper, section 3) limits an adversary along three axes:

* a **budget**: how many samples it may name (a count, or a fraction of the
  training set; the adversary's config turns it into a count);
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
                   (and ``unlearn``, the deployed unlearning method, when
                   the adversary also knows how requests are unlearned)
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

Device and precision: every computation on the model (the oracle's
predictions, per-sample gradients, the influence direction) runs on the
model's device and in its floating dtype; samples from the dataset are moved
there (integer labels stay integer).  Only the results handed back (ids,
the oracle's logits) live on the CPU.  The per-sample gradients come from the
shared engine :mod:`healing_pl.unlearning._per_sample`.

Imports: this module imports nothing of the pipeline or of the configs (the
adversary's config imports *this* module for its registry; :func:`make_selector`
reads the attributes listed in :class:`SelectorConfig`).  The unlearning
helpers are imported inside the functions that use them, so importing the
adversary package does not import the unlearning package.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    "UnlearningAwareSelector",
    "SELECTORS",
    "SelectorConfig",
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
    """

    system_knowledge: str
    data_knowledge: str
    candidate_ids: Tensor
    labels: Tensor | None
    num_classes: int
    predict: Callable[[Tensor], Tensor] | None = None
    glass_box: GlassBox | None = None
    guess_pools: tuple[Tensor, Tensor] | None = None

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
        from healing_pl.unlearning._params import to_model

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
                f"The budget ({budget}) exceeds the {len(surface.candidate_ids)} samples the adversary may name."
            )
        ids = _as_ids(self._choose(surface, budget), "selected ids")
        # The contract every selector promises; a failure here is a bug in the selector.
        if len(ids) != budget or len(torch.unique(ids)) != budget or not torch.isin(ids, surface.candidate_ids).all():
            raise RuntimeError(f"Selector {self.name!r} broke its contract: {budget} distinct candidate ids.")
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
            raise ValueError(f"target_class {self.target_class} is outside [0, {surface.num_classes}).")
        pool = surface.candidate_ids[surface.labels == self.target_class]
        if len(pool) < budget:
            raise ValueError(
                f"Class {self.target_class} has {len(pool)} training samples, fewer than the budget of {budget}."
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
    ``loss_fn(model(x_i[None]), y_i[None])``; the gradients are over every
    trainable parameter.  ``engine="vmap"`` uses ``torch.func``
    (functional_call + vmap of a vjp), ``engine="loop"`` one backward pass per
    sample (often faster for small CNNs on few cores); both work on chunks
    whose gradients hold at most ``max_elements`` numbers.  A thin wrapper of
    :func:`healing_pl.unlearning._per_sample.per_sample_reduce`: ``x`` and
    ``y`` are moved to the model's device and floating dtype, and the values
    stay there.  The caller sets the model's mode (eval, so batch norm and
    dropout behave per sample).
    """
    from healing_pl.unlearning._per_sample import per_sample_reduce

    return per_sample_reduce(model, x, reduce, loss_fn=loss_fn, targets=y, engine=engine, max_elements=max_elements)


def per_sample_grad_norms(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, *, engine: str = "vmap") -> Tensor:
    """L2 norm of each sample's loss gradient over all trainable parameters."""
    from healing_pl.unlearning._per_sample import grad_norms

    return per_sample_grads_apply(model, loss_fn, x, y, grad_norms, engine=engine)


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
            raise ValueError(f"Unknown gradient_mode {mode!r}; expected 'grad_norm' or 'influence'.")
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
        from healing_pl.unlearning._per_sample import grad_dots, grad_norms

        box = surface.glass_box
        model = box.model
        was_training = model.training
        model.eval()
        try:
            if self.mode == "grad_norm":
                scores = self._scores(box, surface.candidate_ids, grad_norms)
            else:
                direction = self._influence_direction(box)
                scores = self._scores(box, surface.candidate_ids, grad_dots(direction))
        finally:
            model.train(was_training)
        return _lowest(-scores.cpu(), surface.candidate_ids, budget)  # ranked with the (CPU) ids

    def _scores(self, box: GlassBox, ids: Tensor, reduce) -> Tensor:
        """One score per id, on the model's device and in its dtype."""
        from healing_pl.unlearning._params import to_model

        out = []
        starts = range(0, len(ids), self.batch_size)
        if self.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"per-sample gradients ({self.mode})", leave=False)
        for start in starts:
            x, y = to_model(_stack_samples(box.dataset, ids[start : start + self.batch_size]), box.model)
            out.append(per_sample_grads_apply(box.model, box.loss_fn, x, y, reduce, engine=self.engine))
        return torch.cat(out)

    def _influence_direction(self, box: GlassBox) -> Tensor:
        """``(H + dI)^-1 g_val`` as a flat vector over the trainable parameters."""
        if box.val_ids is None or len(box.val_ids) == 0:
            raise ValueError("gradient_mode='influence' needs validation ids (val_ids) for the validation loss.")
        from torch.utils.data import DataLoader, Subset

        from healing_pl.unlearning._params import flatten, to_model, trainable_parameters
        from healing_pl.unlearning.influence import lissa_inverse_hvp

        model = box.model
        params = trainable_parameters(model)
        if not params:
            raise ValueError("The model has no parameters that require gradients.")
        g_val = [torch.zeros_like(p) for p in params]
        n_val = len(box.val_ids)
        for start in range(0, n_val, self.batch_size):
            x, y = to_model(_stack_samples(box.dataset, box.val_ids[start : start + self.batch_size]), model)
            loss = box.loss_fn(model(x), y) * (len(x) / n_val)
            for acc, g in zip(g_val, torch.autograd.grad(loss, params), strict=True):
                acc += g
        vector = flatten(g_val).detach()
        loader = DataLoader(
            Subset(box.dataset, box.train_ids.tolist()),
            batch_size=self.batch_size,
            shuffle=True,
            generator=_generator(self.seed),
        )

        def batch_loss(m: nn.Module, batch) -> Tensor:  # LiSSA's loss_fn(model, batch) form
            x, y = to_model((batch[0], batch[1]), m)  # LiSSA moves them already: then a no-op
            return box.loss_fn(m(x), y)

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
            raise ValueError("blind_guess models an adversary blind to the training set; use data_knowledge='blind'.")
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


class UnlearningAwareSelector(Selector):
    """Parameter-aware and unlearning-aware: the samples whose unlearning hurts the model most.

    The adversary holds the weights *and* knows how requests are unlearned: the method and its
    hyperparameters (:attr:`GlassBox.unlearn`, built from the deployed unlearn config).  It simulates the
    unlearning on its own copy of the model and picks greedily:

    1. **Candidate pool**: the top ``pool`` candidates of a cheaper ranking selector (``worst_logits``
       margins or ``gradient`` scores), ``3 * budget`` by default.
    2. **Greedy by simulated unlearning**: starting from the empty set S, every remaining pool candidate c
       is scored by unlearning S + {c} with the real method on a copy of the model and measuring the copy on
       the proxy set; the ``block`` most damaging candidates join S, and this repeats until S holds
       ``budget`` samples (``block = 1`` is the plain greedy; a larger block trades accuracy for speed).
       Damage is ranked by proxy accuracy (lower first), then proxy cross-entropy (higher first), then the
       pool's own rank.
    3. **Never worse than its ranking**: the pool ranking's own top ``budget`` is simulated too, and
       returned instead when it is strictly more damaging than the greedy set.

    The proxy set is the **validation split** (``glass_box.val_ids``).  It is data the adversary may know:
    the project's parameter-aware adversary already gets it (the ``gradient`` selector's influence mode
    needs it), it is held out like the test set, so damage measured there is damage the owner will see,
    and it is disjoint from the test set, so the attack never looks at the number that is reported.  A
    held-out part of the primary set was the alternative; but it was trained on (its accuracy measures
    memorisation, not what the owner sees) and holding it out would shrink the set the adversary may name.

    A stochastic method (Fisher noise, LiSSA sampling) is simulated with one fixed seed for every
    candidate (common random numbers): two candidate sets differ only in what they remove, not in the
    noise draw.  Each simulation unlearns a sorted copy of the ids, so the objective is a function of the
    set alone.

    Cost: at most ``sum_{s < S} (pool - s * block) + 2`` simulated unlearnings with ``S = ceil(budget / block)``
    steps; with the defaults (``pool = 3 * budget``, ``block = ceil(budget / 5)``) that is
    about ``13 * budget + 2`` (327 for a budget of 25), each one run of the method plus one pass over the
    validation split.  Measured on mnist5k (a 3,500-sample primary set, 500 validation samples,
    ``small_cnn``, one CPU thread of a busy 2-core machine): one simulation takes 1.6 s with the
    empirical Fisher and 15 s with the true Fisher, so the default search for a budget of 25 takes about
    9 and 80 minutes; ``aware_block = budget`` (one step: ``pool + 2`` simulations, 77) cuts that to 2 and
    19 minutes.  The selection is returned in order of addition (most damaging block first).
    """

    name = "unlearning_aware"
    system_knowledge = "parameter_aware"
    data_knowledge = "known"

    def __init__(
        self,
        ranking: Selector,
        *,
        pool: int | None = None,
        block: int | None = None,
        batch_size: int = 256,
        progress: bool = False,
    ):
        if ranking.system_knowledge == "blind" or ranking.data_knowledge != "known" or ranking.name == self.name:
            raise ValueError(f"The unlearning_aware pool needs a ranking selector, got {ranking.name!r}.")
        if pool is not None and pool < 1:
            raise ValueError(f"The unlearning_aware pool must hold at least 1 candidate, got {pool}.")
        if block is not None and block < 1:
            raise ValueError(f"The unlearning_aware block must be at least 1 sample, got {block}.")
        self.ranking = ranking
        self.pool = pool
        self.block = block
        self.batch_size = batch_size
        self.progress = progress

    def pool_size(self, budget: int, candidates: int) -> int:
        """The candidate pool's size for ``budget`` (at most the candidates there are)."""
        size = self.pool if self.pool is not None else 3 * budget
        if size < budget:
            raise ValueError(f"The unlearning_aware pool ({size} candidates) is smaller than the budget ({budget}).")
        return min(size, candidates)

    def block_size(self, budget: int) -> int:
        """Candidates added per greedy step: ``block``, or a fifth of the budget rounded up."""
        return min(self.block if self.block is not None else math.ceil(budget / 5), budget)

    def damage(self, surface: AttackSurface, ids) -> tuple[int, float]:
        """The simulated objective for forgetting ``ids``: (correct proxy predictions, proxy cross-entropy).

        Fewer correct predictions is more damage; among equals, a higher loss.
        """
        box = self._box(surface)
        return self._damage(box, self._proxy(box), _as_ids(ids, "ids"))

    def _box(self, surface: AttackSurface) -> GlassBox:
        box = surface.glass_box
        if box is None or box.unlearn is None:
            raise ValueError(
                "Selector 'unlearning_aware' needs the unlearning method to simulate (the unlearn config); "
                "the adversary was given none."
            )
        if box.val_ids is None or len(box.val_ids) == 0:
            raise ValueError(
                "Selector 'unlearning_aware' measures damage on the validation split, which is empty; "
                "set data.val above 0."
            )
        return box

    def _proxy(self, box: GlassBox) -> list[tuple[Tensor, Tensor]]:
        """The validation samples in batches (CPU); moved to each simulated model's device when used."""
        return [
            _stack_samples(box.dataset, box.val_ids[start : start + self.batch_size])
            for start in range(0, len(box.val_ids), self.batch_size)
        ]

    def _damage(self, box: GlassBox, proxy, ids: Tensor) -> tuple[int, float]:
        from healing_pl.unlearning._params import to_model

        model = box.unlearn(torch.sort(ids).values)
        was_training = model.training
        model.eval()
        correct, loss = 0, 0.0
        try:
            with torch.no_grad():
                for x, y in proxy:
                    xs, ys = to_model((x, y), model)
                    logits = model(xs).float()
                    correct += int((logits.argmax(1) == ys).sum())
                    loss += float(F.cross_entropy(logits, ys, reduction="sum"))
        finally:
            model.train(was_training)
        loss = loss / len(box.val_ids)
        return correct, (loss if math.isfinite(loss) else math.inf)

    def _choose(self, surface, budget):
        box = self._box(surface)
        size = self.pool_size(budget, len(surface.candidate_ids))
        ranked = self.ranking.select(surface, size)  # most promising first
        if size == budget:
            return ranked
        block = self.block_size(budget)
        steps = math.ceil(budget / block)
        total = sum(size - s * block for s in range(steps)) + 2
        proxy = self._proxy(box)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="unlearning-aware greedy (simulated unlearnings)", leave=False)

        seen: dict[tuple[int, ...], tuple[int, float]] = {}

        def key(ids: Tensor) -> tuple[int, float]:
            name = tuple(sorted(ids.tolist()))
            if name not in seen:
                correct, loss = self._damage(box, proxy, ids)
                seen[name] = (correct, -loss)
                if bar is not None:
                    bar.update(1)
            return seen[name]

        chosen: list[int] = []
        remaining = list(range(size))  # positions in ``ranked``
        try:
            while len(chosen) < budget:
                base = ranked[chosen]
                scored = sorted(
                    (key(torch.cat([base, ranked[r : r + 1]])), r) for r in remaining
                )  # ties: the pool's rank
                add = [r for _, r in scored[: min(block, budget - len(chosen))]]
                chosen += add
                remaining = [r for r in remaining if r not in add]
            greedy = ranked[chosen]
            top = ranked[:budget]
            if set(greedy.tolist()) != set(top.tolist()) and key(top) < key(greedy):
                return top
            return greedy
        finally:
            if bar is not None:
                bar.close()


#: Registry: config name -> selector class.
SELECTORS: dict[str, type[Selector]] = {
    RandomSelector.name: RandomSelector,
    ClassSelector.name: ClassSelector,
    WorstLogitsSelector.name: WorstLogitsSelector,
    GradientSelector.name: GradientSelector,
    BlindGuessSelector.name: BlindGuessSelector,
    UnlearningAwareSelector.name: UnlearningAwareSelector,
}


class SelectorConfig(Protocol):
    """What :func:`make_selector` and :func:`select_forget_set` read from an adversary config.

    The project's adversary config dataclass has these attributes (and
    checks them); it is not imported here, because it imports this module.
    """

    selector: str
    budget: int | float
    system_knowledge: str
    data_knowledge: str
    target_class: int | None
    score: str
    gradient_mode: str
    member_fraction: float
    seed: int
    gradient_engine: str
    batch_size: int
    influence_damping: float
    influence_scale: float
    influence_depth: int
    influence_repeats: int
    aware_pool: int | None
    aware_block: int | None
    aware_ranking: str

    def validate(self, n_train: int, num_classes: int) -> int:
        """Check the config against the data; return the budget as a count."""
        ...


class _Renamed:
    """A config seen with another selector name (the unlearning-aware pool's ranking)."""

    def __init__(self, config, selector: str):
        self._config, self.selector = config, selector

    def __getattr__(self, name):
        return getattr(self._config, name)


def make_selector(config: SelectorConfig, *, progress: bool = False) -> Selector:
    """Instantiate the selector a config names, with its options.

    ``progress`` shows progress bars for the long selectors (``gradient``, ``unlearning_aware``).
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
    if name == "unlearning_aware":
        if config.aware_ranking not in ("worst_logits", "gradient"):
            raise ValueError(f"Unknown aware_ranking {config.aware_ranking!r}; expected 'worst_logits' or 'gradient'.")
        ranking = make_selector(_Renamed(config, config.aware_ranking), progress=progress)
        return UnlearningAwareSelector(
            ranking, pool=config.aware_pool, block=config.aware_block, batch_size=config.batch_size, progress=progress
        )
    raise ValueError(f"Unknown selector {name!r}; expected one of {', '.join(SELECTORS)}.")


def select_forget_set(
    config: SelectorConfig,
    *,
    dataset,
    primary_ids,
    non_member_ids=None,
    num_classes: int | None = None,
    model: nn.Module | None = None,
    loss_fn: LossFn | None = None,
    val_ids=None,
    unlearn: Callable[[Tensor], nn.Module] | None = None,
    progress: bool = False,
) -> Tensor:
    """The pipeline's one call: validate the config, build the surface, select.

    Args:
        config: the adversary (selector, budget, knowledge, seed...).
        dataset, primary_ids, non_member_ids, num_classes, model, loss_fn,
            val_ids, unlearn: as for :func:`build_surface`.  Pass everything the
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
        unlearn=unlearn,
    )
    return make_selector(config, progress=progress).select(surface, budget)
