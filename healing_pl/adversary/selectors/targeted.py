"""The targeted adversary: random samples of one class (the paper: 25 of one class)."""

from __future__ import annotations

import torch

from healing_pl.adversary.selectors.base import SELECTORS, Selector, _generator


@SELECTORS.register
class ClassSelector(Selector):
    """Targeted: ``budget`` random samples (seeded) of one class of the training set, in draw order (or a fraction
    of that class's training samples: ``class_fraction`` 1.0 forgets the whole class)."""

    name = "class"
    label = "class"
    needs_data = "known"

    def __init__(self, target_class: int | None = None, class_fraction: float | None = None, **kwargs):
        """
        Args:
            target_class: Class the samples are taken from (required).
            class_fraction: Take this fraction of the class's training samples instead of ``budget`` (rounded to
                the nearest count; 1.0 forgets the whole class, where the gold standard knows nothing of it).
        """
        super().__init__(**kwargs)
        if target_class is None:
            raise ValueError("Selector 'class' needs a target_class.")
        if class_fraction is not None and not 0.0 < class_fraction <= 1.0:
            raise ValueError(f"adversary.class_fraction must lie in (0, 1], got {class_fraction}.")
        self.target_class = int(target_class)
        self.class_fraction = class_fraction

    def select(self, surface, budget: int):
        if self.class_fraction is not None and surface.labels is not None:
            of_class = int((surface.labels == self.target_class).sum())
            budget = max(1, int(self.class_fraction * of_class + 0.5))
        return super().select(surface, budget)

    def validate(self, n_train: int, num_classes: int) -> int:
        if not 0 <= self.target_class < num_classes:
            raise ValueError(f"target_class {self.target_class} is outside [0, {num_classes}), the task's classes.")
        return super().validate(n_train, num_classes)

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
