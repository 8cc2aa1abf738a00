"""Data cleaning: requests for the training samples known to carry a wrong label (``data.mislabel``)."""

from __future__ import annotations

import torch

from healing_pl.adversary.selectors.base import SELECTORS, Selector, _generator


@SELECTORS.register
class MislabelledSelector(Selector):
    """Names ``budget`` of the training samples whose label is wrong (seeded draw; all of them with a budget of
    their count). Not an attack: the setting where forgetting is measurable, because the baseline memorised
    the wrong labels and the gold standard, retrained without them, predicts their true class."""

    name = "mislabelled"
    label = "mislabelled"
    needs_data = "known"

    def _choose(self, surface, budget):
        flagged = surface.mislabelled_ids[torch.isin(surface.mislabelled_ids, surface.candidate_ids)]
        if len(flagged) < budget:
            raise ValueError(
                f"the training set holds {len(flagged)} mislabelled samples (data.mislabel), fewer than the "
                f"budget of {budget}."
            )
        perm = torch.randperm(len(flagged), generator=_generator(self.seed))
        return flagged[perm[:budget]]
