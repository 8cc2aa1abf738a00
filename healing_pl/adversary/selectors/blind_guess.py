"""The adversary blind to the training set: it guesses which samples were trained on."""

from __future__ import annotations

import math

import torch

from healing_pl.adversary.selectors.base import SELECTORS, Selector, _generator


@SELECTORS.register
class BlindGuessSelector(Selector):
    """Blind adversary without training-set knowledge: it guesses.

    It submits samples it believes were trained on; ``member_fraction`` of
    them (rounded to the nearest count) really are members, the rest are
    non-members (backup/val/test ids).  Members and non-members are drawn
    at random (seeded) from ``surface.guess_pools`` and then shuffled
    together, so the order reveals nothing.

    Its training-set knowledge is ``blind`` and not a knob (``--adversary.data_knowledge`` is refused):
    a default the CLI carries over from another adversary cannot turn it into a known one.
    """

    name = "blind_guess"
    label = "blind guess"

    def __init__(self, member_fraction: float = 0.5, **kwargs):
        """
        Args:
            member_fraction: Fraction of its guesses that really are training samples; the rest are
                non-members.
        """
        super().__init__(data_knowledge="blind", **kwargs)  # not a knob: always blind (a TypeError if given)
        if not 0.0 <= member_fraction <= 1.0:
            raise ValueError(f"member_fraction must lie in [0, 1], got {member_fraction}.")
        self.member_fraction = member_fraction

    @classmethod
    def knob_names(cls) -> list[str]:
        return [k for k in super().knob_names() if k != "data_knowledge"]  # fixed: always blind

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
