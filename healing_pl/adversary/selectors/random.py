"""The blind adversary: a uniformly random forget set."""

from __future__ import annotations

import torch

from healing_pl.adversary.selectors.base import SELECTORS, Selector, _generator


@SELECTORS.register
class RandomSelector(Selector):
    """Blind: ``budget`` uniformly random candidates (seeded), in draw order."""

    name = "random"
    label = "random"

    def _choose(self, surface, budget):
        perm = torch.randperm(len(surface.candidate_ids), generator=_generator(self.seed))
        return surface.candidate_ids[perm[:budget]]
