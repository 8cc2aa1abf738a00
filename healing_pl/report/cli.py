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
    parser = argparse.ArgumentParser(
        prog="healing-pl report", description="Tables comparing finished runs (reads their results.json)."
    )
    parser.add_argument("paths", nargs="+", help="run folders (searched recursively) or results.json files")
    parser.add_argument("--output", help="also write the report to this file (.md, .html or .json)")
    args = parser.parse_args(argv)
    try:
        records = load_records(args.paths)
    except (FileNotFoundError, ValueError) as err:
        print(f"healing-pl report: error: {err}", file=sys.stderr)
        return 2
    text = report(records)
    print(text)
    if args.output:
        write_report(text, records, args.output)
    return 0
