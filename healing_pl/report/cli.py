"""``healing-pl report``: read finished runs back into comparison tables.

healing-pl report runs/table4-mnist5k            # markdown tables to stdout
healing-pl report runs/ --output report.md        # ... and to a file (.md, .json, or .html: the dashboard)
healing-pl report runs/ --wandb-report            # ... and a W&B Report of the same views (saved when online)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from healing_pl.files import write_atomic
from healing_pl.report.markdown import report
from healing_pl.report.tables import healing_tables, load_records, methods_tables, to_json


class OneLineParser(argparse.ArgumentParser):
    """argparse, whose errors are one line on stderr (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'.\n")


def check_output(output: str) -> None:
    """Stop before anything is written when ``output`` cannot be written as a file."""
    if os.path.isdir(output):
        raise ValueError(f"--output '{output}' is a folder, not a file.")
    parent = os.path.dirname(os.path.normpath(output)) or "."
    while not os.path.exists(parent):
        parent = os.path.dirname(parent) or "."
    if not os.path.isdir(parent):
        raise ValueError(f"--output '{output}' cannot be written: '{parent}' is a file, not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(output) and not os.access(output, os.W_OK)):
        raise ValueError(f"--output '{output}' cannot be written: it lies in a read-only folder.")


def probe_output(output: str) -> None:
    """Stop when the folder of ``output`` refuses a new file (a read-only or virtual file system: /proc)."""
    import secrets

    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        return  # created by the write, under a parent check_output found writable
    probe = os.path.join(folder, f".report-probe-{secrets.token_hex(4)}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.remove(probe)
    except OSError as err:
        raise ValueError(f"--output '{output}' cannot be written: {os.strerror(err.errno or 5).lower()}.") from None


def check_record_types(records: list[dict]) -> None:
    """Stop at the first declared record key whose value has the wrong type (one sentence naming the file)."""
    from healing_pl import records as rk

    for record in records:
        methods = [v for k, v in record.items() if k == rk.UNLEARN_METHOD.name and isinstance(v, str)]
        for name, value in record.items():
            key = rk.lookup(name, methods)
            if key is not None and value is not None and not key.accepts(value):
                types = key.type if isinstance(key.type, tuple) else (key.type,)
                raise ValueError(
                    f"'{record.get(rk.FILE.name)}' is not a results record: {name} holds {json.dumps(value)[:40]}, "
                    f"not a {' or '.join(t.__name__ for t in types)}."
                )


def write_report(text: str, records: list[dict], output: str, source: str | None = None) -> None:
    """Write the report as markdown, JSON (tables with every statistic, and the runs) or the HTML dashboard."""
    if output.endswith(".json"):
        found = to_json(healing_tables(records))
        payload = json.dumps(
            {
                "tables": found,
                "healing": [row for t in found for row in t["rows"]],
                "methods": to_json(methods_tables(records)),
                "runs": records,
            },
            indent=2,
            default=str,
        )
    elif output.endswith((".html", ".htm")):
        from healing_pl.report.dashboard import dashboard_html

        payload = dashboard_html(records, source)
    else:
        payload = text + "\n"
    write_atomic(output, payload)


def write_figures(records: list[dict], folder: str) -> list[str]:
    """The report's figures as PNG files in ``folder``; returns their paths (none: no series to draw)."""
    import io

    from healing_pl.report.deletion import deletion_figure, deletion_series
    from healing_pl.report.regime import regime_figure, regime_series

    figures = [(f"deletion-{k}.png", deletion_figure(s)) for k, s in enumerate(deletion_series(records))]
    figures += [(f"regime-{k}.png", regime_figure(s)) for k, s in enumerate(regime_series(records))]
    paths = []
    for name, figure in figures:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120)
        path = os.path.join(folder, name)
        os.makedirs(folder, exist_ok=True)
        write_atomic(path, buffer.getvalue())
        paths.append(path)
    return paths


def report_main(argv: list[str]) -> int:
    parser = OneLineParser(
        prog="healing-pl report", description="Tables comparing finished runs (reads their results.json)."
    )
    parser.add_argument("paths", nargs="+", help="run folders (searched recursively) or results.json files")
    parser.add_argument(
        "--output", help="also write the report to this file: .md, .json, or .html (a self-contained dashboard)"
    )
    parser.add_argument(
        "--figures",
        metavar="DIR",
        help="also write the report's figures as PNG files into DIR (deletion-<k>.png: accuracy and unlearning "
        "time against the deletion fraction, the paper's Figures 1-2; regime-<k>.png: the paired twin effect "
        "against the forget-set size)",
    )
    parser.add_argument(
        "--wandb-report",
        nargs="?",
        const="",
        metavar="SPEC.json",
        help="also build a W&B Report of the same views; its spec is written to SPEC.json (default: "
        "wandb_report.json in the first run folder) and the report is saved when W&B is online",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error, already printed as one line (2)
        return exit_.code if isinstance(exit_.code, int) else 0
    try:
        if args.output:
            check_output(args.output)
        records = load_records(args.paths)
        if not records:
            raise FileNotFoundError(f"no results found: no results.json under {', '.join(args.paths)}.")
        check_record_types(records)
        if args.output:
            probe_output(args.output)
    except (FileNotFoundError, ValueError) as err:
        print(f"healing-pl report: error: {err}", file=sys.stderr)
        return 2
    source = ", ".join(args.paths)
    text = report(records, source)
    print(text)
    if args.output:
        try:
            write_report(text, records, args.output, source)
        except OSError as err:
            print(
                f"healing-pl report: error: --output '{args.output}' cannot be written: {err.strerror}.",
                file=sys.stderr,
            )
            return 2
        print(f"report written to {args.output}")
    if args.figures:
        try:
            paths = write_figures(records, args.figures)
            for path in paths:
                print(f"figure written to {path}")
            if not paths:
                print(
                    "no figures written: no unlearn experiments differ only in the deletion fraction, and no heal "
                    "experiments only in the forget-set size."
                )
        except OSError as err:
            print(
                f"healing-pl report: error: --figures '{args.figures}' cannot be written: {err.strerror}.",
                file=sys.stderr,
            )
            return 2
    if args.wandb_report is not None:
        from healing_pl.report.wandb_report import publish

        first = args.paths[0]
        spec = args.wandb_report or os.path.join(
            first if os.path.isdir(first) else os.path.dirname(first) or ".", "wandb_report.json"
        )
        print(publish(records, spec, source))
    return 0
