"""Comparison tables from finished runs' ``results.json`` records.

``healing_table`` reproduces the shape of the paper's Table 4: per dataset and
unlearning method, the baseline (BL), the gold standard (GS), the unlearned
start (Init), and the best and worst healed test accuracy over the heal
setups (R, T-<metric>) after 1 epoch and after N/2 epochs, with Best-GS.
"""

from __future__ import annotations

import glob
import json
import os
from collections import defaultdict


def load_records(paths: list[str]) -> list[dict]:
    """Every ``results.json`` under ``paths`` (folders searched recursively, or files)."""
    files: list[str] = []
    for path in paths:
        if os.path.isfile(path):
            files.append(path)
        elif os.path.isdir(path):
            files += glob.glob(os.path.join(path, "**", "results.json"), recursive=True)
        else:
            raise FileNotFoundError(f"'{path}' is neither a results.json file nor a folder.")
    records = []
    for file in sorted(set(files)):
        with open(file) as f:
            try:
                record = json.load(f)
            except json.JSONDecodeError:
                raise ValueError(f"'{file}' is not valid JSON; the run may have been interrupted.") from None
            except UnicodeDecodeError:
                raise ValueError(f"'{file}' is not a text file, so not a results record.") from None
        if not isinstance(record, dict):
            raise ValueError(f"'{file}' is not a results record (a JSON object), but a {type(record).__name__}.")
        record.setdefault("run_dir", os.path.dirname(file))
        records.append(record)
    return records


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _delta(value) -> str:
    return "—" if value is None else f"{100 * value:+.2f}"


def healing_rows(records: list[dict]) -> list[dict]:
    """One row per (dataset, backbone, method, forget set): the Table 4 figures."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("phase") == "heal":
            key = (
                r.get("dataset"),
                r.get("backbone"),
                r.get("unlearn/method"),
                r.get("adversary/selector"),
                tuple(r.get("forget/ids", [])),
            )
            groups[key].append(r)
    rows = []
    for (dataset, backbone, method, selector, _), runs in sorted(groups.items(), key=lambda kv: kv[0][:4]):
        first = runs[0]
        n_half = first.get("heal/epochs")
        row = {
            "dataset": dataset,
            "backbone": backbone,
            "method": method,
            "selector": selector,
            "forget": first.get("forget/count"),
            "BL": first.get("baseline/test/acc"),
            "GS": first.get("gold/test/acc"),
            "Init": first.get("unlearned/test/acc"),
            "Init mean": first.get("unlearned/acc_mean"),
            "Init std": first.get("unlearned/acc_std"),
            "N/2": n_half,
            "setups": {},
        }
        for col, epoch in (("1", 1), ("N/2", n_half)):
            scored = [(r.get(f"healed/test/acc_epoch_{epoch}"), r.get("heal/setup")) for r in runs]
            scored = [(a, s) for a, s in scored if a is not None]
            for acc, setup in scored:
                row["setups"].setdefault(setup, {})[col] = acc
            if scored:
                best = max(scored, key=lambda t: (t[0], t[1]))
                worst = min(scored, key=lambda t: (t[0], t[1]))
                row[f"best {col}"], row[f"best {col} setup"], row[f"worst {col}"] = best[0], best[1], worst[0]
                row[f"best-GS {col}"] = None if row["GS"] is None else best[0] - row["GS"]
        rows.append(row)
    return rows


def healing_table(records: list[dict]) -> str:
    """Markdown: the Table 4 summary, then every heal setup's accuracy."""
    rows = healing_rows(records)
    if not rows:
        return "no heal runs found."
    out = [
        "| dataset (model) | method | forget set | BL | GS | Init (mean ± std) | best 1 ep | worst 1 ep "
        "| best N/2 ep | worst N/2 ep | Best−GS 1 ep | Best−GS N/2 ep |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        init = f"{_pct(r['Init'])} ({_pct(r['Init mean'])} ± {_pct(r['Init std'])})"
        out.append(
            f"| {r['dataset']} ({r['backbone']}) | {r['method']} | {r['forget']} × {r['selector']} "
            f"| {_pct(r['BL'])} | {_pct(r['GS'])} | {init} "
            f"| {_pct(r.get('best 1'))} ({r.get('best 1 setup')}) | {_pct(r.get('worst 1'))} "
            f"| {_pct(r.get('best N/2'))} ({r.get('best N/2 setup')}) | {_pct(r.get('worst N/2'))} "
            f"| {_delta(r.get('best-GS 1'))} | {_delta(r.get('best-GS N/2'))} |"
        )
    out.append("")
    out.append("Every heal setup (test accuracy %, after 1 epoch / after N/2 epochs):")
    out.append("")
    methods = [f"{r['dataset']} {r['method']}" for r in rows]
    out.append("| setup | " + " | ".join(methods) + " |")
    out.append("|---|" + "---|" * len(methods))
    setups = sorted({s for r in rows for s in r["setups"]}, key=lambda s: (s != "R", s))
    for s in setups:
        cells = []
        for r in rows:
            acc = r["setups"].get(s, {})
            cells.append(f"{_pct(acc.get('1'))} / {_pct(acc.get('N/2'))}")
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def unlearning_table(records: list[dict]) -> str:
    """Markdown: one row per unlearn run (Tables 2, 3 and 6 shape)."""
    runs = [r for r in records if r.get("phase") == "unlearn"]
    if not runs:
        return "no unlearn runs found."
    out = [
        "| dataset | method | forget set | BL | unlearned (mean ± std) | GS | random set | attack strength "
        "| time [s] | run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        runs,
        key=lambda r: (
            r.get("dataset") or "",
            r.get("unlearn/method") or "",
            r.get("adversary/selector") or "",
            r.get("forget/count") or 0,
        ),
    ):
        mean = r.get("unlearned/acc_mean")
        spread = f" ({_pct(mean)} ± {_pct(r.get('unlearned/acc_std'))})" if mean is not None else ""
        out.append(
            f"| {r.get('dataset')} | {r.get('unlearn/method')} "
            f"| {r.get('forget/count')} × {r.get('adversary/selector')} "
            f"| {_pct(r.get('baseline/test/acc'))} | {_pct(r.get('unlearned/test/acc'))}{spread} "
            f"| {_pct(r.get('gold/test/acc'))} | {_pct(r.get('attack/random_forget/test/acc'))} "
            f"| {_delta(r.get('attack/strength'))} | {r.get('unlearned/time_s', 0):.1f} "
            f"| {os.path.basename(str(r.get('run_dir')))} |"
        )
    return "\n".join(out)


def fit_table(records: list[dict]) -> str:
    runs = [r for r in records if r.get("phase") == "fit"]
    if not runs:
        return "no fit runs found."
    out = ["| dataset | backbone | test acc | train time [s] | run |", "|---|---|---|---|---|"]
    for r in runs:
        out.append(
            f"| {r.get('dataset')} | {r.get('backbone')} | {_pct(r.get('test/acc'))} "
            f"| {r.get('train/time_s', 0):.1f} | {os.path.basename(str(r.get('run_dir')))} |"
        )
    return "\n".join(out)


def report(records: list[dict]) -> str:
    parts = []
    if any(r.get("phase") == "fit" for r in records):
        parts += ["## Baselines", "", fit_table(records), ""]
    if any(r.get("phase") == "unlearn" for r in records):
        parts += ["## Unlearning", "", unlearning_table(records), ""]
    if any(r.get("phase") == "heal" for r in records):
        parts += ["## Healing (the paper's Table 4 shape; accuracies in %)", "", healing_table(records), ""]
    return "\n".join(parts) if parts else "no finished runs found."
