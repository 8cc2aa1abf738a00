"""The output-aware adversary: the training samples the model is least sure of."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from healing_pl.adversary.selectors.base import SELECTORS, Selector, _lowest, check_choice

#: the scores :func:`margin_scores` computes
SCORES = ("margin", "logit")


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


@SELECTORS.register
class WorstLogitsSelector(Selector):
    """Output-aware: the training samples the model is least sure of.

    Ranks the candidates by :func:`margin_scores` computed from ``predict``
    alone and returns the lowest ``budget`` (lowest first, ties by lower id).
    """

    name = "worst_logits"
    label = "worst logits"
    needs_system = "output_aware"
    needs_data = "known"

    def __init__(self, score: Literal["margin", "logit"] = "margin", **kwargs):
        """
        Args:
            score: The ranking: margin (true-class logit minus the best other logit) or logit (the raw
                true-class logit); lowest first.
        """
        super().__init__(**kwargs)
        check_choice("score", score, SCORES)
        self.score = score

    def _choose(self, surface, budget):
        logits = surface.predict(surface.candidate_ids)
        scores = margin_scores(logits, surface.labels, self.score)
        return _lowest(scores, surface.candidate_ids, budget)
