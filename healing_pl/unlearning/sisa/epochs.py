"""The epochs of each SISA slice stage.

Epochs per slice
----------------
Stage ``r`` sees ``(r + 1) / R`` of the shard, so with ``e`` epochs per stage a
sample of slice ``j`` is trained on ``(R - j) e`` times and a shard's samples on
``e (R + 1) / 2`` times on average.  :func:`slice_epochs` offers two rules
for the baseline's ``N`` epochs (:data:`EPOCH_RULES`):

* ``passes`` (the default): ``e = ceil(2N / (R + 1))``, the smallest whole
  count with at least the baseline's ``N`` passes per sample.  Bourtoule et
  al. keep the training time of slicing equal to that without it the same
  way: their public code (cleverhans-lab/machine-unlearning, ``sisa.py``)
  trains slice stages for ``2N / (R + 1)`` epochs on average.  For N = 10,
  R = 5: 4 epochs per stage, 12 passes (the baseline's 10, plus rounding);
  N = 5: 2 (6 passes); N = 3: 1 (3 passes).
* ``per_slice``: ``e = max(1, round(N / R))``, the former rule: for N = 10,
  R = 5, 2 epochs per stage, i.e. 6 passes per sample against the baseline's
  10 (the shards are undertrained).
"""

from __future__ import annotations

import math

#: rules for the epochs of each slice stage (see :func:`slice_epochs`)
EPOCH_RULES = ("passes", "per_slice")


def slice_epochs(epochs: int, slices: int, rule: str | int = "passes") -> int:
    """Epochs of each slice stage for a baseline of ``epochs`` epochs and ``slices`` slices.

    ``rule``: ``passes`` (``ceil(2 epochs / (slices + 1))``: every shard sample gets at least ``epochs`` passes
    on average, see the module docstring), ``per_slice`` (``max(1, round(epochs / slices))``) or a count.
    """
    if isinstance(rule, bool) or not isinstance(rule, (int, str)):
        raise ValueError(f"the SISA epoch rule must be one of {', '.join(EPOCH_RULES)} or a count, got {rule!r}.")
    if isinstance(rule, int):
        if rule < 1:
            raise ValueError(f"epochs_per_slice must be at least 1, got {rule}.")
        return rule
    if rule not in EPOCH_RULES:
        raise ValueError(f"unknown SISA epoch rule {rule!r}; choose one of {', '.join(EPOCH_RULES)} or a count.")
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}.")
    if int(slices) != slices or slices < 1:
        raise ValueError(f"slices must be at least 1, got {slices}.")
    if rule == "passes":
        return max(1, math.ceil(2 * int(epochs) / (int(slices) + 1)))
    return max(1, round(int(epochs) / int(slices)))
