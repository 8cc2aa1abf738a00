"""The paper's Figures 1 and 2: test accuracy and unlearning time against the deletion fraction.

A *series* is the unlearn experiments that differ only in the adversary's budget (e.g. ``configs/paper/
table1_sisa.yaml``: SISA at 5, 10, 20 and 30% random deletions), with at least two fractions. Each point is
one fraction over its seeds: the baseline (BL), the unlearned model and the gold standard (GS, a retrain
without the forget set) on the same test images, the paired difference unlearned − GS per seed, and the wall
times of the unlearning and of the retrain. The fraction is the share of the training set forgotten
(``forget/count`` / ``primary/count``).
"""

from __future__ import annotations

import json
from collections import defaultdict

from healing_pl import records as rk
from healing_pl.report import stats
from healing_pl.report.tables import Stat, difference, experiments, seeds_sentence

__all__ = ["deletion_series", "deletion_markdown", "deletion_figure"]


def _numbers(records: list[dict], key) -> list[float]:
    return [value for r in records if (value := rk.number(r, key)) is not None]


def _point(records: list[dict]) -> dict:
    fractions = {r[rk.FORGET_COUNT] / r[rk.PRIMARY_COUNT] for r in records if r.get(rk.PRIMARY_COUNT)}
    paired = [r for r in records if rk.number(r, rk.UNLEARNED_TEST_ACC) is not None]
    paired = [r for r in paired if rk.number(r, rk.GOLD_TEST_ACC) is not None]
    return {
        "budget": (records[0].get(rk.EXPERIMENT) or {}).get("config", {}).get("adversary", {}).get("budget"),
        "fraction": sum(fractions) / len(fractions) if fractions else None,
        "n": len(records),
        "BL": Stat(_numbers(records, rk.BASELINE_TEST_ACC)),
        "unlearned": Stat(_numbers(records, rk.UNLEARNED_TEST_ACC)),
        "GS": Stat(_numbers(records, rk.GOLD_TEST_ACC)),
        "unlearned - GS": difference(_numbers(paired, rk.UNLEARNED_TEST_ACC), _numbers(paired, rk.GOLD_TEST_ACC)),
        "unlearn time": Stat(_numbers(records, rk.UNLEARNED_TIME_S), bounds=stats.POSITIVE),
        "GS time": Stat(_numbers(records, rk.GOLD_TIME_S), bounds=stats.POSITIVE),
        "runs": [
            {
                "run": r.get(rk.RUN_DIR),
                "unlearned": rk.number(r, rk.UNLEARNED_TEST_ACC),
                "GS": rk.number(r, rk.GOLD_TEST_ACC),
                "unlearn time": rk.number(r, rk.UNLEARNED_TIME_S),
                "GS time": rk.number(r, rk.GOLD_TIME_S),
            }
            for r in records
        ],
    }


def deletion_series(records: list[dict]) -> list[dict]:
    """The unlearn experiments grouped into series over the deletion fraction (two fractions or more), each
    ``{"title", "method", "dataset", "points"}`` with points sorted by fraction."""
    groups: dict[str, list] = defaultdict(list)
    for exp in experiments(records, rk.UNLEARN):
        flat = exp.flat()
        if not isinstance(flat.get("adversary.budget"), float) or any(
            r.get(rk.PRIMARY_COUNT) is None for r in exp.records
        ):
            continue
        rest = {k: v for k, v in flat.items() if k not in ("adversary.budget", "baseline.sha256", "run_dir")}
        groups[json.dumps(rest, sort_keys=True, default=str)].append(exp)
    out = []
    for members in groups.values():
        points = sorted((_point(e.records) for e in members), key=lambda p: p["fraction"] or 0.0)
        if len({p["budget"] for p in points}) < 2:
            continue
        first = members[0].records[0]
        method, dataset = first.get(rk.UNLEARN_METHOD), first.get(rk.DATASET)
        selector = first.get(rk.ADVERSARY_SELECTOR)
        out.append(
            {
                "title": f"{method} on {dataset}, {selector} forget sets ({', '.join(e.id for e in members)})",
                "method": method,
                "dataset": dataset,
                "points": points,
            }
        )
    return sorted(out, key=lambda s: s["title"])


def _seconds(stat: Stat) -> str:
    return stat.cell(scale=1.0, digits=1) if stat.values else "—"


def deletion_markdown(series: list[dict]) -> str:
    """One table per series: a row per deletion fraction."""
    out = []
    for s in series:
        out += [
            f"**{s['title']}**",
            "",
            f"| deletion | n | BL | {s['method']} | GS | {s['method']} − GS (paired) | {s['method']} time [s] "
            "| GS time [s] |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in s["points"]:
            share = f"{100 * p['fraction']:.1f}%" if p["fraction"] is not None else "—"
            out.append(
                f"| {share} | {p['n']} | {p['BL'].cell(n_row=p['n'])} | {p['unlearned'].cell(n_row=p['n'])} "
                f"| {p['GS'].cell(n_row=p['n'])} | {p['unlearned - GS'].cell(signed=True, n_row=p['n'])} "
                f"| {_seconds(p['unlearn time'])} | {_seconds(p['GS time'])} |"
            )
        out.append("")
    ns = [p["n"] for s in series for p in s["points"]]
    out.append(
        "Deletion: the share of the training set forgotten. Accuracies in % on the test set; over seeds: mean "
        "[95% interval] (Student t, kept inside its range); the difference to GS is paired per seed (same seed, "
        "same test images). Times: wall seconds of one unlearning and of the retrain. " + seeds_sentence(ns)
    )
    return "\n".join(out)


def deletion_figure(s: dict):
    """Figure 1 (accuracy) and Figure 2 (unlearning time) of one series, side by side: every run as a dot, the
    mean over seeds as a line, BL dashed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    acc_ax, time_ax = fig.subplots(1, 2)
    xs = [100 * (p["fraction"] or 0.0) for p in s["points"]]
    styles = {"unlearned": ("C0", s["method"]), "GS": ("C2", "GS (retrain)")}
    for key, (colour, label) in styles.items():
        means = [100 * p[key].mean if p[key].values else float("nan") for p in s["points"]]
        acc_ax.plot(xs, means, "-o", color=colour, label=label, markersize=4)
        for x, p in zip(xs, s["points"]):
            dots = [100 * v for v in p[key].values]
            acc_ax.plot([x] * len(dots), dots, ".", color=colour, alpha=0.35, markersize=5)
    bl = [100 * p["BL"].mean for p in s["points"] if p["BL"].values]
    if bl:
        acc_ax.axhline(sum(bl) / len(bl), color="0.4", linestyle="--", linewidth=1, label="BL")
    acc_ax.set(xlabel="deletion fraction [% of the training set]", ylabel="test accuracy [%]", title="accuracy")
    acc_ax.legend(fontsize=8)
    for key, colour, label in (("unlearn time", "C0", f"{s['method']} unlearning"), ("GS time", "C2", "retrain")):
        means = [p[key].mean if p[key].values else float("nan") for p in s["points"]]
        time_ax.plot(xs, means, "-o", color=colour, label=label, markersize=4)
        for x, p in zip(xs, s["points"]):
            time_ax.plot([x] * len(p[key].values), p[key].values, ".", color=colour, alpha=0.35, markersize=5)
    time_ax.set(xlabel="deletion fraction [% of the training set]", ylabel="wall time [s]", title="time")
    time_ax.set_ylim(bottom=0)
    time_ax.legend(fontsize=8)
    n = max(p["n"] for p in s["points"])
    fig.suptitle(f"{s['title']}; n = {n} seed(s) per fraction", fontsize=9)
    return fig
