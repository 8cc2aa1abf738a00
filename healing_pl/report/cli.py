"""``healing-pl report``: read finished runs back into comparison tables.

healing-pl report runs/table4-mnist5k            # markdown tables to stdout
healing-pl report runs/ --output report.md        # ... and to a file (.md, .html or .json)
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys

from healing_pl.report.tables import healing_rows, load_records, report


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


def write_report(text: str, records: list[dict], output: str) -> None:
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    if output.endswith(".json"):
        payload = json.dumps({"healing": healing_rows(records), "runs": records}, indent=2, default=str)
    elif output.endswith(".html"):
        payload = f"<!doctype html><meta charset='utf-8'><title>healing-pl report</title><pre>{html.escape(text)}</pre>"
    else:
        payload = text + "\n"
    with open(output, "w") as f:
        f.write(payload)


def report_main(argv: list[str]) -> int:
    parser = OneLineParser(
        prog="healing-pl report", description="Tables comparing finished runs (reads their results.json)."
    )
    parser.add_argument("paths", nargs="+", help="run folders (searched recursively) or results.json files")
    parser.add_argument("--output", help="also write the report to this file (.md, .html or .json)")
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
    except (FileNotFoundError, ValueError) as err:
        print(f"healing-pl report: error: {err}", file=sys.stderr)
        return 2
    text = report(records)
    print(text)
    if args.output:
        write_report(text, records, args.output)
    return 0
