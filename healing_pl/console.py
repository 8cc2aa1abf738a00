"""The terminal: which warnings and tip lines are silenced, repeat announcements and progress bars.

Layer 0 beside :mod:`healing_pl.tracking` (W&B): anything may import it, it imports nothing of the package.
"""

from __future__ import annotations

import logging
import sys

#: known warnings that say nothing about the run: library internals, and choices made on purpose
KNOWN_WARNINGS = (
    # Lightning's own pytree helper on torch >= 2.10 (not our code, nothing a user can change)
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # inner trainings (gold standard, a stream's fine-tunes) skip validation on purpose
    r"You defined a `validation_step` but have no `val_dataloader`\. Skipping val loop",
    # the CLI passes its arguments itself (``run_cli(args)``)
    r".*LightningCLI's args parameter",
)
#: Lightning's info lines that advertise other products ("💡 Tip: ... litlogger / litmodels")
_LIGHTNING_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith("💡 Tip")


def quiet_console() -> None:
    """Silence Lightning's tip lines and the :data:`KNOWN_WARNINGS` (every other warning still shows).

    Idempotent; the CLI calls it first, and a spawned rank when it receives the W&B logger.
    """
    import warnings

    for pattern in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in _LIGHTNING_INFO_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in log.filters):
            log.addFilter(_DropTips())


def announce_repeat(index: int, repeats: int, label: str = "", enabled: bool = True) -> None:
    """Print ``"<label> repeat i/N"`` on stderr before repeat ``index`` (1-based) of several (nothing for one)."""
    if enabled and repeats > 1:
        prefix = f"{label} " if label else ""
        print(f"{prefix}repeat {index}/{repeats}", file=sys.stderr, flush=True)


def progress_bar(iterable=None, *, desc: str, total: int | None = None, enabled: bool = True):
    """A tqdm bar over ``iterable`` on stderr (cleared when done); a plain pass-through when not ``enabled``."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False, dynamic_ncols=True)


def labelled_progress_bar(label: str):
    """A Lightning progress bar whose training bar reads ``"<label>, epoch e/N"`` (e.g. the gold standard's
    inner training): ``Trainer(callbacks=[labelled_progress_bar("gold standard")], enable_progress_bar=True)``."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    class LabelledProgressBar(TQDMProgressBar):
        def on_train_epoch_start(self, trainer, *args) -> None:
            super().on_train_epoch_start(trainer, *args)
            total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
            self.train_progress_bar.set_description(f"{label}, epoch {trainer.current_epoch + 1}{total}")

    return LabelledProgressBar()
