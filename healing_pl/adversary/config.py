"""The adversary's configuration, as read from YAML or the command line.

jsonargparse reads :class:`AdversaryConfig` as a nested group, e.g.
``--adversary.selector worst_logits --adversary.system_knowledge output_aware
--adversary.budget 0.01``; the ``Args`` section of the class docstring is the
``--help`` text.  The config checks itself on construction (names, ranges,
knowledge) and against the data with :meth:`AdversaryConfig.validate`, which
also turns the budget into a count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Union

from healing_pl.adversary.selectors import DATA_KNOWLEDGE, SELECTORS, SYSTEM_KNOWLEDGE

__all__ = ["AdversaryConfig"]


@dataclass
class AdversaryConfig:
    """Who attacks, with what knowledge and how many unlearn requests.

    Args:
        selector: How the forget set is picked: random (blind), class
            (targeted, needs target_class), worst_logits (output-aware),
            gradient (parameter-aware) or blind_guess (blind to the
            training set).
        budget: Number of samples to unlearn: an int >= 1 is a count, a
            float in (0, 1] a fraction of the training set size (rounded to
            the nearest count).
        system_knowledge: Knowledge of the system: blind (no access),
            output_aware (can have samples classified) or parameter_aware
            (holds the model).
        data_knowledge: Knowledge of the training set: blind (does not know
            it), known, or chosen (could also add samples; selects like
            known).
        target_class: Class the 'class' selector takes its samples from.
        score: worst_logits ranking: margin (true-class logit minus the best
            other logit) or logit (the raw true-class logit); lowest first.
        gradient_mode: gradient ranking: grad_norm (per-sample loss gradient
            norm) or influence (predicted rise of the validation loss when
            the sample is removed, via LiSSA).
        member_fraction: blind_guess: fraction of its guesses that really are
            training samples; the rest are non-members.
        seed: Seed of every random choice the adversary makes.
        gradient_engine: Per-sample gradients with torch.func vmap or a
            plain loop (often faster for small CNNs on a few CPU cores).
        batch_size: Batch size for predictions and per-sample gradients.
        influence_damping: LiSSA damping d in (H + d I)^-1.
        influence_scale: LiSSA scale s; must exceed half the largest
            eigenvalue of H + d I.
        influence_depth: LiSSA recursion depth.
        influence_repeats: LiSSA repeats averaged.
    """

    selector: str = "random"
    budget: Union[int, float] = 25
    system_knowledge: Literal["blind", "output_aware", "parameter_aware"] = "blind"
    data_knowledge: Literal["blind", "known", "chosen"] = "known"
    target_class: Optional[int] = None
    score: Literal["margin", "logit"] = "margin"
    gradient_mode: Literal["grad_norm", "influence"] = "grad_norm"
    member_fraction: float = 0.5
    seed: int = 0
    gradient_engine: Literal["vmap", "loop"] = "vmap"
    batch_size: int = 256
    influence_damping: float = 0.01
    influence_scale: float = 25.0
    influence_depth: int = 200
    influence_repeats: int = 1

    def __post_init__(self) -> None:
        self._check_choice("selector", self.selector, tuple(SELECTORS))
        self._check_choice("system_knowledge", self.system_knowledge, SYSTEM_KNOWLEDGE)
        self._check_choice("data_knowledge", self.data_knowledge, DATA_KNOWLEDGE)
        self._check_choice("score", self.score, ("margin", "logit"))
        self._check_choice("gradient_mode", self.gradient_mode, ("grad_norm", "influence"))
        self._check_choice("gradient_engine", self.gradient_engine, ("vmap", "loop"))

        budget = self.budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise ValueError(f"The budget must be a count or a fraction, got {budget!r}.")
        if isinstance(budget, int) and budget < 1:
            raise ValueError(f"The budget must be at least 1 sample, got {budget}.")
        if isinstance(budget, float) and not 0.0 < budget <= 1.0:
            raise ValueError(
                f"A fractional budget must lie in (0, 1], got {budget}; use an int for a count."
            )
        if not 0.0 <= self.member_fraction <= 1.0:
            raise ValueError(f"member_fraction must lie in [0, 1], got {self.member_fraction}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}.")

        needs = SELECTORS[self.selector]
        if SYSTEM_KNOWLEDGE.index(self.system_knowledge) < SYSTEM_KNOWLEDGE.index(
            needs.system_knowledge
        ):
            raise ValueError(
                f"Selector {self.selector!r} needs system_knowledge {needs.system_knowledge!r} "
                f"or more, but {self.system_knowledge!r} was granted."
            )
        if DATA_KNOWLEDGE.index(self.data_knowledge) < DATA_KNOWLEDGE.index(needs.data_knowledge):
            raise ValueError(
                f"Selector {self.selector!r} needs data_knowledge {needs.data_knowledge!r} "
                f"or more, but {self.data_knowledge!r} was granted."
            )
        if self.selector == "blind_guess" and self.data_knowledge != "blind":
            raise ValueError(
                "Selector 'blind_guess' models an adversary that does not know the training "
                "set, so it needs data_knowledge='blind'."
            )
        if self.selector == "class" and self.target_class is None:
            raise ValueError("Selector 'class' needs a target_class.")

    @staticmethod
    def _check_choice(field: str, value, choices) -> None:
        if value not in choices:
            raise ValueError(f"Unknown {field} {value!r}; expected one of {', '.join(choices)}.")

    def resolve_budget(self, n_train: int) -> int:
        """The budget as a count of samples for a training set of ``n_train``."""
        if isinstance(self.budget, float):
            count = int(math.floor(self.budget * n_train + 0.5))
            if count < 1:
                raise ValueError(
                    f"A budget of {self.budget} of {n_train} training samples is less than "
                    f"1 sample."
                )
        else:
            count = int(self.budget)
        if count > n_train:
            raise ValueError(
                f"The budget ({count} samples) exceeds the training set ({n_train} samples)."
            )
        return count

    def validate(self, n_train: int, num_classes: int) -> int:
        """Check the config against the data; return the budget as a count."""
        if self.target_class is not None and not 0 <= self.target_class < num_classes:
            raise ValueError(
                f"target_class {self.target_class} is outside [0, {num_classes}), "
                f"the task's classes."
            )
        return self.resolve_budget(n_train)
