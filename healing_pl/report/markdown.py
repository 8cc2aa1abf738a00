"""The markdown report: every table of :mod:`healing_pl.report.tables`, the deletion-fraction series of
:mod:`healing_pl.report.deletion` and the twin regimes of :mod:`healing_pl.report.regime`, in one document."""

from __future__ import annotations

import sys

from healing_pl import records as rk
from healing_pl.report.deletion import deletion_markdown, deletion_series
from healing_pl.report.regime import regime_markdown, regime_series
from healing_pl.report.tables import (
    derived_warning,
    fit_table,
    healing_table,
    methods_table,
    mixed_warning,
    unlearning_table,
)

__all__ = ["report"]


def report(records: list[dict], source: str | None = None, stderr=None) -> str:
    """The markdown report; a folder of several experiments (or of records without an identity) is said in
    one line each on ``stderr`` (default: sys.stderr)."""
    stream = sys.stderr if stderr is None else stderr
    for line in (derived_warning(records), mixed_warning(records, source)):
        if line:
            print(line, file=stream)
    parts = []
    if any(r.get(rk.PHASE) == rk.FIT for r in records):
        parts += ["## Baselines", "", fit_table(records), ""]
    if any(r.get(rk.PHASE) == rk.UNLEARN for r in records):
        parts += ["## Unlearning", "", unlearning_table(records), ""]
        series = deletion_series(records)
        if series:
            parts += ["## Against the deletion fraction (the paper's Figures 1–2)", "", deletion_markdown(series), ""]
    if any(r.get(rk.PHASE) == rk.HEAL for r in records):
        parts += ["## Healing (the paper's Table 4 shape; accuracies in %)", "", healing_table(records), ""]
        regimes = regime_series(records)
        if regimes:
            parts += [
                "## The twin regime (paired effects against the forget-set size)",
                "",
                regime_markdown(regimes),
                "",
            ]
    if any(r.get(rk.PHASE) in (rk.HEAL, rk.UNLEARN) for r in records):
        parts += ["## Methods (forget quality before and after healing)", "", methods_table(records), ""]
    return "\n".join(parts) if parts else "no finished runs found."
