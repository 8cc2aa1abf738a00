"""The ``healing-pl`` entry point: ``grid``, ``report``, ``ledger`` and ``calibrate`` here, the rest through the CLI.

healing-pl fit | validate | test | unlearn | heal | stream ...   (healing_pl.cli)
healing-pl grid configs/grids/<grid>.yaml                         (healing_pl.experiments.grid)
healing-pl report runs/<folder>                                   (healing_pl.report.cli)
healing-pl calibrate --config ... --ckpt_path ... --target_drop D (healing_pl.experiments.calibrate)
"""

from __future__ import annotations

import sys


def main(args=None) -> int:
    """Run ``healing-pl`` with ``args`` (default: the command line); return the exit status."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "grid":
        from healing_pl.experiments.grid import grid_main

        return grid_main(argv[1:])
    if argv and argv[0] == "ledger":
        from healing_pl.adversary.ledger import ledger_main

        return ledger_main(argv[1:])
    if argv and argv[0] == "calibrate":
        from healing_pl.experiments.calibrate import calibrate_main

        return calibrate_main(argv[1:])
    if argv and argv[0] == "report":
        from healing_pl.report.cli import report_main

        return report_main(argv[1:])
    from healing_pl.cli import run_cli

    code = run_cli(args)
    if code == 0 and argv in (["-h"], ["--help"]):  # the top-level help also names the commands outside the CLI
        print(MORE)
    return code


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
