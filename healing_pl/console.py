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
    # ... and log nowhere on purpose: their figures reach the outer run's logger, not a logger of their own
    r"You called `self\.log\(.*logger=True\)` but have no logger configured",
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


def duration(seconds: float) -> str:
    """``"42s"``, ``"3m05s"`` or ``"1h02m"``."""
    seconds = int(round(max(seconds, 0.0)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_seconds(finished: int, total: int, elapsed_s: float) -> float | None:
    """Time left when ``finished`` of ``total`` runs took ``elapsed_s`` of wall time so far (at their mean pace,
    parallel workers included); None before the first run finished."""
    if finished <= 0:
        return None
    return elapsed_s / finished * max(total - finished, 0)


def run_line(
    index: int, total: int, name: str, elapsed_s: float | None, result: str, eta_s: float | None, width: int = 0
) -> str:
    """One finished run of a grid: ``[3/12] heal-Fisher-RawL2   14s  healed 96.1%  ETA 2m10s`` (elapsed None:
    ``-``, a run another runner ran; no ETA after the last run)."""
    count = f"[{index}/{total}]".ljust(2 * len(str(total)) + 3)
    elapsed = "-" if elapsed_s is None else duration(elapsed_s)
    eta = f"  ETA {duration(eta_s)}" if eta_s is not None and index < total else ""
    return f"{count} {name.ljust(width)}  {elapsed:>6}  {result}{eta}".rstrip()


class GridConsole:
    """A grid's terminal: one line per finished run on stdout (name, its elapsed time, its result, the ETA from
    the runs finished so far), a progress bar on stderr while runs go (a terminal only) and the total at the end.

        console = GridConsole(total=len(runs), width=max(len(r.name) for r in runs))
        console.running(["heal-a", "heal-b"])              # the bar's text: what runs now
        console.finished("heal-a", 14.2, "healed 96.1%")   # one line, the bar advances
        console.close()                                    # "12 runs in 3m05s"
    """

    def __init__(self, total: int, *, width: int = 0, enabled: bool | None = None):
        import time

        from tqdm.auto import tqdm

        self.total, self.width, self.count, self.failed = total, width, 0, 0
        self._clock = time.monotonic
        self.start = self._clock()
        disable = not sys.stderr.isatty() if enabled is None else not enabled
        self.bar = tqdm(total=total, desc="grid", unit="run", disable=disable, leave=False, dynamic_ncols=True)

    def running(self, names: list[str], waiting: str = "") -> None:
        """The bar's text: the runs going now, and what it waits for (runs other runners hold)."""
        text = ", ".join(names)
        if len(text) > 60:
            text = text[:57] + "..."
        self.bar.set_postfix_str("; ".join(part for part in (text, waiting) if part), refresh=True)

    def note(self, text: str) -> None:
        """One line on stderr beside the bar (what the grid waits for)."""
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)

    def finished(self, name: str, elapsed_s: float | None, result: str, failed: bool = False) -> str:
        """Print the line of a run that finished (or failed: ``failed``) and advance the bar; return the line."""
        from tqdm.auto import tqdm

        self.count += 1
        self.failed += bool(failed)
        eta = eta_seconds(self.count, self.total, self._clock() - self.start)
        line = run_line(self.count, self.total, name, elapsed_s, result, eta, self.width)
        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()
        self.bar.update(1)
        return line

    def close(self) -> str:
        """Close the bar and print the total (runs, failures, wall time); return that line."""
        self.bar.close()
        failed = f", {self.failed} failed" if self.failed else ""
        line = f"{self.count} run{'s' if self.count != 1 else ''} in {duration(self._clock() - self.start)}{failed}"
        print(line, flush=True)
        return line
