"""The ``healing-pl`` entry point: ``grid``, ``report``, ``ledger`` and ``calibrate`` here, the rest through the CLI.

healing-pl fit | validate | test | unlearn | heal | stream ...   (healing_pl.cli)
healing-pl grid configs/grids/<grid>.yaml                         (healing_pl.experiments.grid)
healing-pl report runs/<folder>                                   (healing_pl.report.cli)
healing-pl calibrate --config ... --ckpt_path ... --target_drop D (healing_pl.experiments.calibrate)
"""

from __future__ import annotations

import gc
import sys


def settle_imports() -> None:
    """Hand everything imported so far to the garbage collector's permanent generation (``gc.freeze``), then let
    it collect again (the program turns it off while it imports: :func:`main`).

    torch, Lightning and their imports leave about 740,000 objects that live as long as the process. Left to the
    collector, they are walked by the full collections the import itself triggers (seven while importing the CLI:
    0.5 to 0.9 s of its 4.5 s), by every full collection after, and by the interpreter's shutdown (measured: 1.3 s
    of a command's exit, 0.2 s frozen); a forked child (a grid run, a ``ddp_fork`` rank) copies every memory page
    whose objects a collection touches. Frozen, they are skipped; reference counting still frees whatever is
    released. This is the pattern Python's documentation gives for ``gc.freeze``.
    """
    gc.freeze()
    gc.enable()


def main(args=None) -> int:
    """Run ``healing-pl`` with ``args`` (default: the command line); return the exit status.

    Run as the program (``args`` None: the console script, ``python -m healing_pl.main``), it imports the command's
    module with the garbage collector off, then freezes what it imported (:func:`settle_imports`). A process that
    calls it with its own ``args`` (a notebook, a test) keeps its collector as it set it.
    """
    argv = sys.argv[1:] if args is None else list(args)
    program = args is None
    if program:
        gc.disable()
    try:
        run, rest = _outside_cli(argv[0] if argv else None), argv[1:]
        if run is None:
            from healing_pl.cli import run_cli

            run, rest = run_cli, args
    finally:
        if program:
            settle_imports()
    code = run(rest)
    if code == 0 and argv in (["-h"], ["--help"]):  # the top-level help also names the commands outside the CLI
        print(MORE)
    return code


def _outside_cli(command):
    """The function of the remaining arguments that runs ``command``, when it is a subcommand outside the CLI."""
    if command == "grid":
        from healing_pl.experiments.grid import grid_main

        return grid_main
    if command == "ledger":
        from healing_pl.adversary.ledger import ledger_main

        return ledger_main
    if command == "calibrate":
        from healing_pl.experiments.calibrate import calibrate_main

        return calibrate_main
    if command == "report":
        from healing_pl.report.cli import report_main

        return report_main
    return None


MORE = """
more subcommands:
    grid                Run a grid spec: the baseline, every run of its axes (resumable), then the report
                        (healing-pl grid SPEC.yaml --help).
    report              Comparison tables from finished runs' results.json (healing-pl report RUNS --help).
    ledger              Check a run's hash-chained request ledger (healing-pl ledger verify RUN).
    calibrate           The unlearning strength (Fisher alpha, influence scale) whose mean validation-accuracy
                        drop is closest to --target_drop, as a config snippet (healing-pl calibrate --help)."""


if __name__ == "__main__":
    sys.exit(main())
