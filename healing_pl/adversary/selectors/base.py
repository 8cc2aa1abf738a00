"""The adversary family: the :class:`Selector` base class, its registry and the pipeline's one call.

Every adversary is a registered subclass of :class:`Selector` in a module of its own; its constructor
arguments are its knobs, which the CLI offers as ``--adversary <Class> --adversary.<knob> value`` (and
``--adversary.help <Class>`` lists them). The base class's knobs are the threat model every adversary has:
its budget, the knowledge it is granted, its seed and its batch size. A selector implements
:meth:`Selector._choose`; the base class checks knowledge and budget before, and the contract of the
answer after.

Every selector returns exactly ``budget`` distinct ids from its candidates as a ``LongTensor`` **in
selection order**: most harmful first for the ranking selectors (``worst_logits``, ``gradient``), draw
order for the random ones. The same surface and seed always give the same ids.

Imports: nothing of the pipeline, the configs or the unlearning package (the unlearning-aware selector
gets its simulation passed in through the surface).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from healing_pl import records as rk
from healing_pl.adversary.selectors.surface import (
    DATA_KNOWLEDGE,
    SYSTEM_KNOWLEDGE,
    AttackSurface,
    LossFn,
    _as_ids,
    _dataset_targets,
    build_surface,
)
from healing_pl.registry import Knobs, Registry

__all__ = ["SELECTORS", "Selector", "select_forget_set"]

#: every registered adversary, by record name
SELECTORS: Registry = Registry("adversary", "--adversary")


def check_choice(knob: str, value, choices: Sequence[str]) -> None:
    """Stop with one sentence when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"Unknown {knob} {value!r}; expected one of {', '.join(choices)}.")


class Selector(Knobs, ABC):
    """An adversary: picks the forget set it asks to unlearn (abstract: pick a registered subclass with
    ``--adversary <Class>``)."""

    #: record name of the adversary (``adversary/selector`` in results.json, ledgers, reports)
    name: ClassVar[str]
    #: how tables and figures name the adversary
    label: ClassVar[str]
    #: the least knowledge of the system this selector needs
    needs_system: ClassVar[str] = "blind"
    #: the least knowledge of the training set this selector needs
    needs_data: ClassVar[str] = "blind"
    #: it simulates the deployed unlearning (the pipeline passes it an unlearning simulator)
    simulates_unlearning: ClassVar[bool] = False
    #: show progress bars for the long selections (set by :func:`select_forget_set`)
    progress: bool = False

    def __init__(
        self,
        *,
        budget: int | float = 25,
        system_knowledge: Literal["blind", "output_aware", "parameter_aware"] | None = None,
        data_knowledge: Literal["blind", "known", "chosen"] = "known",
        seed: int = 0,
        batch_size: int = 256,
    ):
        """
        Args:
            budget: Number of samples to unlearn: an int >= 1 is a count, a float in (0, 1] a fraction of
                the training set size (rounded to the nearest count).
            system_knowledge: Knowledge of the system: blind (no access), output_aware (can have samples
                classified) or parameter_aware (holds the model); None: the least the selector needs.
            data_knowledge: Knowledge of the training set: blind (does not know it), known, or chosen
                (could also add samples; selects like known).
            seed: Seed of every random choice the adversary makes.
            batch_size: Batch size for predictions and per-sample gradients.
        """
        SELECTORS.check(self)
        if system_knowledge is not None:
            check_choice("system_knowledge", system_knowledge, SYSTEM_KNOWLEDGE)
        check_choice("data_knowledge", data_knowledge, DATA_KNOWLEDGE)
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise ValueError(f"The budget must be a count or a fraction, got {budget!r}.")
        if isinstance(budget, int) and budget < 1:
            raise ValueError(f"The budget must be at least 1 sample, got {budget}.")
        if isinstance(budget, float) and not 0.0 < budget <= 1.0:
            raise ValueError(f"A fractional budget must lie in (0, 1], got {budget}; use an int for a count.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size!r}.")
        system_knowledge = self.needs_system if system_knowledge is None else system_knowledge
        if SYSTEM_KNOWLEDGE.index(system_knowledge) < SYSTEM_KNOWLEDGE.index(self.needs_system):
            raise ValueError(
                f"Selector {self.name!r} needs system_knowledge {self.needs_system!r} "
                f"or more, but {system_knowledge!r} was granted."
            )
        if DATA_KNOWLEDGE.index(data_knowledge) < DATA_KNOWLEDGE.index(self.needs_data):
            raise ValueError(
                f"Selector {self.name!r} needs data_knowledge {self.needs_data!r} "
                f"or more, but {data_knowledge!r} was granted."
            )
        self.budget = budget
        self.system_knowledge = system_knowledge
        self.data_knowledge = data_knowledge
        self.seed = seed
        self.batch_size = batch_size

    # ----------------------------------------------------------------- budget and data
    def resolve_budget(self, n_train: int) -> int:
        """The budget as a count of samples for a training set of ``n_train``."""
        if isinstance(self.budget, float):
            count = int(math.floor(self.budget * n_train + 0.5))
            if count < 1:
                raise ValueError(f"A budget of {self.budget} of {n_train} training samples is less than 1 sample.")
        else:
            count = int(self.budget)
        if count > n_train:
            raise ValueError(f"The budget ({count} samples) exceeds the training set ({n_train} samples).")
        return count

    def validate(self, n_train: int, num_classes: int) -> int:
        """Check the adversary against the data; return the budget as a count."""
        return self.resolve_budget(n_train)

    # ----------------------------------------------------------------- selection
    def select(self, surface: AttackSurface, budget: int) -> Tensor:
        """Return ``budget`` distinct candidate ids, in selection order."""
        if surface.system_level < SYSTEM_KNOWLEDGE.index(self.needs_system):
            raise ValueError(
                f"Selector {self.name!r} needs system knowledge {self.needs_system!r}, "
                f"but the adversary is {surface.system_knowledge!r}."
            )
        if surface.data_level < DATA_KNOWLEDGE.index(self.needs_data):
            raise ValueError(
                f"Selector {self.name!r} needs training-set knowledge {self.needs_data!r}, "
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

    # ----------------------------------------------------------------- knobs and records
    def record(self) -> dict:
        """What results.json records of the adversary."""
        return {
            rk.ADVERSARY_SELECTOR: self.name,
            rk.ADVERSARY_BUDGET: self.budget,
            rk.ADVERSARY_SYSTEM_KNOWLEDGE: self.system_knowledge,
            rk.ADVERSARY_DATA_KNOWLEDGE: self.data_knowledge,
            rk.ADVERSARY_TARGET_CLASS: getattr(self, "target_class", None),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.knobs().items())})"


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


def select_forget_set(
    selector: Selector,
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
    """The pipeline's one call: check the adversary against the data, build its surface, select.

    Args:
        selector: the adversary (a registered :class:`Selector`: budget, knowledge, seed and its knobs).
        dataset, primary_ids, non_member_ids, num_classes, model, loss_fn, val_ids, unlearn: as for
            :func:`~healing_pl.adversary.selectors.surface.build_surface`. Pass everything the pipeline
            has: only what ``selector.system_knowledge`` and ``selector.data_knowledge`` allow reaches the
            selector.
        progress: progress bars for the long selectors (sets ``selector.progress``).

    Returns:
        ``budget`` distinct ids in selection order.
    """
    if not isinstance(selector, Selector):
        raise TypeError(f"select_forget_set needs a Selector, got {type(selector).__name__}.")
    primary = torch.unique(_as_ids(primary_ids, "primary_ids"))
    if num_classes is None:
        num_classes = int(_dataset_targets(dataset).max()) + 1
    budget = selector.validate(n_train=len(primary), num_classes=num_classes)
    surface = build_surface(
        system_knowledge=selector.system_knowledge,
        data_knowledge=selector.data_knowledge,
        dataset=dataset,
        primary_ids=primary,
        non_member_ids=non_member_ids,
        num_classes=num_classes,
        model=model,
        loss_fn=loss_fn,
        val_ids=val_ids,
        batch_size=selector.batch_size,
        unlearn=unlearn,
    )
    selector.progress = progress
    return selector.select(surface, budget)
