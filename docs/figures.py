"""The figures and study tables of docs/reproduction.md, from the grids' results.json files.

    python docs/figures.py RUNS   # RUNS holds heal-lr-mnist5k/, spares-mnist5k/, streams-mnist5k/, ...

Writes docs/figures/spares.png and docs/figures/streams.png and prints the heal-lr choice and the two study
tables (markdown, mean ± 95% CI over seeds, Student t) that docs/reproduction.md quotes. Every number comes
from a record.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from healing_pl import records as rk  # noqa: E402
from healing_pl.report.tables import Stat, load_records  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _records(runs: str, grid: str, phase: str) -> list[dict]:
    folder = os.path.join(runs, grid)
    return [r for r in load_records([folder]) if r.get(rk.PHASE) == phase] if os.path.isdir(folder) else []


def _final(record: dict, split: str = "test") -> float | None:
    epochs = record.get(rk.HEAL_EPOCHS)
    return None if epochs is None else record.get(rk.healed_acc(split, epochs))


def _cell(stat: Stat) -> str:
    return stat.cell() + (f" (n={stat.n})" if stat.n else "")


def spares(runs: str) -> str:
    records = _records(runs, "spares-mnist5k", rk.HEAL)
    if not records:
        return "no spares-mnist5k records."
    by = defaultdict(lambda: defaultdict(Stat))
    gold, start = Stat(), Stat()
    for r in records:
        size = int(r[rk.EXPERIMENT]["config"]["twins"]["spares"])
        by[r[rk.HEAL_SETUP]][size].values.append(_final(r))
        by[r[rk.HEAL_SETUP] + " (val)"][size].values.append(_final(r, "val"))
    for r in {r[rk.EXPERIMENT_SEEDS]["seed_everything"]: r for r in records}.values():  # one per seed
        gold.values.append(r[rk.GOLD_TEST_ACC])
        start.values.append(r[rk.UNLEARNED_TEST_ACC])
    table4 = os.path.join(runs, "table4-mnist5k-seeds")
    r_alone = Stat()
    if os.path.isdir(table4):
        for r in load_records([table4]):
            if r.get(rk.PHASE) == rk.HEAL and r.get(rk.UNLEARN_METHOD) == "fisher" and r.get(rk.HEAL_SETUP) == "R":
                r_alone.values.append(_final(r))
    sizes = sorted(next(iter(by.values())))
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for shift, setup in ((0.97, "T-feat_cosine"), (1.03, "T-random")):  # side by side, so both bars show
        stats = [by[setup][s] for s in sizes]
        ax.errorbar(
            [s * shift for s in sizes],
            [100 * s.mean for s in stats],
            yerr=[100 * (s.half or 0) for s in stats],
            marker="o",
            capsize=3,
            label=setup,
        )
    ax.axhline(100 * gold.mean, color="k", ls="--", lw=1, label=f"GS {100 * gold.mean:.2f}")
    if r_alone.values:
        ax.axhline(100 * r_alone.mean, color="grey", ls=":", lw=1, label=f"R alone {100 * r_alone.mean:.2f}")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{s}\n({100 * s / 3000:.0f}% of D)" for s in sizes])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("spares the twin search may use")
    ax.set_ylabel("healed test accuracy after N/2 epochs [%]")
    ax.set_title("Spare-set size (Fisher, 25 class-7 requests; mean ± 95% CI, 3 seeds)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "figures", "spares.png"))
    lines = [
        f"Unlearned start {_cell(start)}, GS {_cell(gold)}, R alone {_cell(r_alone)} (table4-mnist5k-seeds).",
        "",
        "| spares (% of D) | T-feat_cosine test | T-feat_cosine val | T-random test | T-random val |",
        "|---|---|---|---|---|",
    ]
    for s in sizes:
        cells = [_cell(by[k][s]) for k in ("T-feat_cosine", "T-feat_cosine (val)", "T-random", "T-random (val)")]
        lines.append(f"| {s} ({100 * s / 3000:.1f}%) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def streams(runs: str) -> str:
    records = _records(runs, "streams-mnist5k", rk.STREAM)
    if not records:
        return "no streams-mnist5k records."
    curves = defaultdict(lambda: defaultdict(Stat))
    for r in records:
        stream = r[rk.EXPERIMENT]["config"]["stream"]
        key = (stream["benign_ratio"], bool(stream["heal"]))
        for point in r[rk.STREAM_CURVE]:
            curves[key][point[rk.CURVE_ROUND]].values.append(point[rk.CURVE_TEST_ACC])
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    lines = ["| benign share | healing | rounds | final test acc | lowest round |", "|---|---|---|---|---|"]
    for (ratio, heal), by_round in sorted(curves.items()):
        rounds = sorted(by_round)
        stats = [by_round[i] for i in rounds]
        ax.errorbar(
            [i + 1 for i in rounds],
            [100 * s.mean for s in stats],
            yerr=[100 * (s.half or 0) for s in stats],
            marker="o" if heal else "x",
            ls="-" if heal else "--",
            capsize=2,
            label=f"{100 * ratio:.0f}% benign, {'healed' if heal else 'not healed'}",
        )
        lowest = min(stats[1:], key=lambda s: s.mean)
        lines.append(
            f"| {100 * ratio:.0f}% | {'yes' if heal else 'no'} | {len(rounds) - 1} | {_cell(stats[-1])} "
            f"| {_cell(lowest)} |"
        )
    ax.set_xlabel("round (0: the baseline)")
    ax.set_ylabel("test accuracy [%]")
    ax.set_title("Mixed request streams (10 worst-logits requests, Fisher; mean ± 95% CI, 3 seeds)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "figures", "streams.png"))
    return "\n".join(lines)


def heal_lr(runs: str) -> str:
    """The heal-lr choice: mean validation accuracy after N/2 epochs per lr (over setups and seeds), with test."""
    records = _records(runs, "heal-lr-mnist5k", rk.HEAL)
    if not records:
        return "no heal-lr-mnist5k records."
    val, test = defaultdict(Stat), defaultdict(Stat)
    for r in records:
        for key in (r[rk.HEAL_LR], (r[rk.HEAL_LR], r[rk.HEAL_SETUP])):
            val[key].values.append(_final(r, "val"))
            test[key].values.append(_final(r))
    lrs = sorted({r[rk.HEAL_LR] for r in records})
    chosen = max(lrs, key=lambda lr: val[lr].mean)
    lines = ["| heal.lr | setup | val (chooses) | test (reported) |", "|---|---|---|---|"]
    for lr in lrs:
        setups = sorted({k[1] for k in val if isinstance(k, tuple) and k[0] == lr})
        for setup in setups:
            lines.append(f"| {lr:g} | {setup} | {_cell(val[(lr, setup)])} | {_cell(test[(lr, setup)])} |")
        mark = " **(chosen)**" if lr == chosen else ""
        lines.append(f"| {lr:g}{mark} | both | {_cell(val[lr])} | {_cell(test[lr])} |")
    return "\n".join(lines)


def table6(runs: str) -> str:
    """Table 6's shape: per grid and method, the unlearning repeats' mean test accuracy, their standard deviation
    and time (each seed's repeats are one value; mean ± 95% CI over seeds)."""
    lines = [
        "| forget set | method | seeds | repeats' mean acc | repeats' std (mean) | time [s] | collapsed repeats |",
        "|---|---|---|---|---|---|---|",
    ]
    for grid, label in (("table4-mnist5k-seeds", "25 × class 7"), ("table5-mnist5k", "worst 25 logits")):
        by = defaultdict(dict)  # method -> seed -> record (every heal run of a seed shares the unlearned model)
        for r in _records(runs, grid, rk.HEAL):
            by[r[rk.UNLEARN_METHOD]].setdefault(r[rk.EXPERIMENT_SEEDS]["seed_everything"], r)
        for method, seeds in sorted(by.items()):
            recs = list(seeds.values())
            mean = Stat([r[rk.UNLEARNED_ACC_MEAN] for r in recs])
            std = Stat([r[rk.UNLEARNED_ACC_STD] for r in recs])
            time_s = Stat([r[rk.UNLEARNED_TIME_S] for r in recs])
            collapsed = sum(a < 0.2 for r in recs for a in r[rk.UNLEARNED_ACC_REPEATS])
            total = sum(len(r[rk.UNLEARNED_ACC_REPEATS]) for r in recs)
            lines.append(
                f"| {label} | {method} | {len(recs)} | {mean.cell()} | {100 * std.mean:.2f} | {time_s.mean:.1f} "
                f"| {collapsed} of {total} |"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not os.path.isdir(argv[0]):
        print("usage: python docs/figures.py RUNS (the folder holding the grids' output folders)", file=sys.stderr)
        return 2
    os.makedirs(os.path.join(HERE, "figures"), exist_ok=True)
    print("## Heal lr (chosen on validation)\n\n" + heal_lr(argv[0]))
    print("\n## Table 6\n\n" + table6(argv[0]))
    print("\n## Spare-set size\n\n" + spares(argv[0]) + "\n\n## Mixed streams\n\n" + streams(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
