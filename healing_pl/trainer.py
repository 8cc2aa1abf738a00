"""The Trainer of healing-pl: Lightning's Trainer plus the phase subcommands."""

from __future__ import annotations

import time

import lightning as L


class HealingTrainer(L.Trainer):
    """A Lightning Trainer that also times ``fit`` (for the paper's Table 1)."""

    fit_seconds: float = 0.0

    @staticmethod
    def extra_subcommands() -> dict[str, set[str]]:
        """Subcommands beyond fit/validate/test/predict and the arguments the CLI fills in."""
        return {}

    def fit(self, *args, **kwargs):
        """Train the model (a baseline on the primary set), then test it."""
        start = time.perf_counter()
        try:
            return super().fit(*args, **kwargs)
        finally:
            self.fit_seconds = time.perf_counter() - start
