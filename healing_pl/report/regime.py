"""The twin regime: when do twins beat R, and beat random spares? Paired effects against the forget-set size.

A *regime* is the heal experiments that differ only in the forget set's size (``adversary.budget`` or
``adversary.class_fraction``) and in the heal set (``heal.remain_fraction``: R plus the twins, or the twins plus a
share of R), with at least two sizes (``configs/grids/twin_regime_*.yaml``). For every size and heal set, every
compared twin setup (a twin metric that is not a control) is taken minus R and minus each control (random twins
from all spares, ``T-random``, and random spares of the request's class, ``T-random [same class]``), per seed on the
same unlearned start and the same test images, after the heal's last epoch: overall, and on the test images of
the attacked class (from the per-image results the runs saved). The verdict of a cell names what its paired
interval says: ``better`` (above 0), ``worse`` (below 0), or ``within noise`` with the minimum difference the
seeds could detect at 80% power.
"""

from __future__ import annotations

import json
from collections import defaultdict

from healing_pl import records as rk
from healing_pl.report.images import ImageSource, attacked_class, class_accuracy
from healing_pl.report.tables import Stat, experiments, is_compared, paired, references, runs_by_seed, seeds_sentence

__all__ = ["regime_series", "regime_markdown", "regime_figure"]

#: the options that make a regime's cells: the forget set's size and the heal set
SIZE_KEYS = ("adversary.budget", "adversary.class_fraction")
CELL_KEYS = (*SIZE_KEYS, "heal.remain_fraction")


def _cell(exp, images: ImageSource) -> dict:
    """One size and heal set over its seeds: every setup's paired differences, overall and on the attacked class."""
    by_seed, _ = runs_by_seed(exp)
    labels = sorted({label for runs in by_seed.values() for label in runs})
    target = next((attacked_class(r) for r in exp.records if attacked_class(r) is not None), None)
    klass: dict[int, dict] = {}
    if target is not None:
        klass = {id(r): class_accuracy(r, target, images) for runs in by_seed.values() for r in runs.values()}

    def healed_class(r):
        return (klass.get(id(r)) or {}).get(rk.HEALED)

    refs = [ref for ref in references(labels) if ref != "GS" and ref in labels]
    setups = {}
    for label in labels:
        if label == "R" or not is_compared(label) and label not in refs:
            continue
        setups[label] = {
            ref: {
                "overall": paired(by_seed, label, ref, "N/2", None),
                "class": paired(by_seed, label, ref, "N/2", None, value=healed_class),
            }
            for ref in refs
            if ref != label
        }
    flat = exp.flat()
    return {
        "forget": Stat([float(r[rk.FORGET_COUNT]) for r in exp.records if r.get(rk.FORGET_COUNT)], bounds=None),
        "class_fraction": flat.get("adversary.class_fraction"),
        "remain_fraction": flat.get("heal.remain_fraction", 1.0),
        "seeds": len(by_seed),
        "target": target,
        "setups": setups,
    }


def regime_series(records: list[dict], images: ImageSource | None = None) -> list[dict]:
    """The heal experiments grouped into regimes (two forget-set sizes or more), each ``{"title", "cells"}`` with
    cells sorted by heal set, then forget-set size."""
    images = images or ImageSource()
    groups: dict[str, list] = defaultdict(list)
    for exp in experiments(records, rk.HEAL):
        flat = exp.flat()
        rest = {k: v for k, v in flat.items() if k not in (*CELL_KEYS, "baseline.sha256", "run_dir")}
        groups[json.dumps(rest, sort_keys=True, default=str)].append(exp)
    out = []
    for members in groups.values():
        sizes = {(e.flat().get("adversary.budget"), e.flat().get("adversary.class_fraction")) for e in members}
        if len(sizes) < 2:
            continue
        cells = sorted(
            (_cell(e, images) for e in members), key=lambda c: (-(c["remain_fraction"] or 1.0), c["forget"].mean or 0.0)
        )
        if not _references(cells):  # no R and no control: nothing to pair the twin setups with
            continue
        first = members[0].records[0]
        title = (
            f"{first.get(rk.UNLEARN_METHOD)} on {first.get(rk.DATASET)}, {first.get(rk.ADVERSARY_SELECTOR)} forget "
            f"sets of {len(sizes)} sizes (group {members[0].group or '—'})"
        )
        out.append({"title": title, "cells": cells})
    return sorted(out, key=lambda s: s["title"])


def _references(cells: list[dict]) -> list[str]:
    """The setups the cells' twin setups are paired with (R, then the controls), those present only."""
    return [
        r
        for r in ("R", "T-random [same class]", "T-random")
        if any(r in d for c in cells for d in c["setups"].values())
    ]


def verdict(diff: Stat) -> str:
    """What a paired difference says: better, worse, or within noise (with the MDE), or — without an interval."""
    ci = diff.interval()
    if ci is None:
        return "—"
    if all(v == 0 for v in diff.values):
        return "equal in every seed"
    if ci[0] > 0:
        return "better"
    if ci[1] < 0:
        return "worse"
    mde = diff.mde
    return "within noise" + (f" (MDE {100 * mde:.1f})" if mde is not None else "")


def _size(cell: dict) -> str:
    forget = cell["forget"]
    n = f"{forget.mean:.0f}" if forget.values else "—"
    spread = (
        f" ({min(forget.values):.0f}–{max(forget.values):.0f})" if forget.values and len(set(forget.values)) > 1 else ""
    )
    share = f", {100 * cell['class_fraction']:.0f}% of the class" if cell["class_fraction"] else ""
    return n + spread + share


def _heal_set(cell: dict) -> str:
    fraction = cell["remain_fraction"] or 1.0
    return "R + T" if fraction >= 1.0 else f"T + {100 * fraction:.0f}% of R"


def regime_markdown(series: list[dict]) -> str:
    """One table per regime: a row per heal set, forget-set size and twin setup; its paired differences to R and
    to each control, overall and on the attacked class, with a verdict."""
    out = []
    ns = []
    for s in series:
        refs = sorted({ref for c in s["cells"] for d in c["setups"].values() for ref in d}, key=lambda r: (r != "R", r))
        head = "| heal set | forget set | n | setup |" + "".join(f" − {r}: all | − {r}: class |" for r in refs)
        out += [f"**{s['title']}**", "", head + " verdict against R (all / class) |"]
        out.append("|" + "---|" * (4 + 2 * len(refs) + 1))
        for c in s["cells"]:
            for label, diffs in sorted(c["setups"].items(), key=lambda kv: (not is_compared(kv[0]), kv[0])):
                ns.append(c["seeds"])
                cells = []
                for ref in refs:
                    d = diffs.get(ref)
                    for part in ("overall", "class"):
                        cells.append("—" if d is None or not d[part].values else _signed(d[part], c["seeds"]))
                against_r = diffs.get("R")
                words = (
                    f"{verdict(against_r['overall'])} / {verdict(against_r['class'])}" if against_r is not None else "—"
                )
                out.append(
                    f"| {_heal_set(c)} | {_size(c)} | {c['seeds']} | {label} | " + " | ".join(cells) + f" | {words} |"
                )
        out.append("")
    out.append(
        "Paired differences in points (per seed: the setup minus the reference, on the same unlearned start and the "
        "same test images, after the heal's last epoch), mean [95% interval]; all: every test image; class: the test "
        "images of the attacked class. Verdict: better or worse where the paired interval excludes 0; within noise "
        "otherwise, with the minimum difference the seeds detect at 80% power (points). " + seeds_sentence(ns)
    )
    return "\n".join(out)


def _signed(diff: Stat, n_row: int) -> str:
    return ("≈ " if diff.within_noise else "") + diff.cell(signed=True, n_row=n_row)


def regime_figure(s: dict):
    """The paired effect of every compared twin setup against the forget-set size: minus R and minus the
    same-class control, overall and on the attacked class; one line per heal set, with its 95% interval."""
    from matplotlib.figure import Figure

    refs = _references(s["cells"])[:2]
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(len(refs), 2, squeeze=False, sharex=True)
    for i, ref in enumerate(refs):
        for j, part in enumerate(("overall", "class")):
            ax = axes[i][j]
            lines: dict[tuple, list] = defaultdict(list)
            for c in s["cells"]:
                for label, diffs in c["setups"].items():
                    if not is_compared(label) or ref not in diffs or not diffs[ref][part].values:
                        continue
                    d = diffs[ref][part]
                    ci = d.interval() or (d.mean, d.mean)
                    lines[(label, _heal_set(c))].append((c["forget"].mean, 100 * d.mean, 100 * ci[0], 100 * ci[1]))
            for k, ((label, heal), points) in enumerate(sorted(lines.items())):
                points.sort()
                xs = [p[0] + 0.8 * (k - (len(lines) - 1) / 2) for p in points]  # side by side, not on top
                ax.errorbar(
                    xs,
                    [p[1] for p in points],
                    yerr=[[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]],
                    marker="o",
                    capsize=3,
                    label=f"{label}, {heal}",
                )
            ax.axhline(0.0, color="grey", lw=0.8, ls="--")
            ax.set_title(f"minus {ref}: {'all test images' if part == 'overall' else 'attacked class'}", fontsize=10)
            ax.set_ylabel("paired difference [points]")
            if i == len(refs) - 1:
                ax.set_xlabel("forget-set size [images]")
            if lines and i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.suptitle(s["title"], fontsize=10)
    return fig
