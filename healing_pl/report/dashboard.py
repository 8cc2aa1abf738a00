"""A self-contained HTML dashboard of finished runs: which healing setup, by how much, how sure.

``healing-pl report RUNS --output dashboard.html`` writes it. Figures are inline: the forest plots are SVG
drawn here, the others matplotlib PNGs as base64 data URIs; the style sheet is inline, nothing is fetched
from elsewhere and the page holds no script: the file can be mailed. It reads without horizontal scrolling
down to 900 px: wide tables scroll inside their own box or sit collapsed (``<details>``) below the figures.

One meaning of an interval everywhere: ``[low, high]`` is the 95% interval of a mean over seeds (for a
difference, paired by seed: Student t on the per-seed differences, kept inside the range,
:mod:`healing_pl.report.stats`); the page prints no ``±``; every figure names its n (seeds), and one seed
says "n = 1: no uncertainty" instead of an interval.

Per experiment (heal runs, the tables' rows): a one-sentence headline with the paired difference of the twin
setup chosen on validation against R (or, when no twin setup differs from R, the largest difference the
intervals allow and the minimum detectable difference); forest plots of every setup minus R, minus each
control (T-random) and minus GS; accuracy vs heal epoch (epoch 0: the unlearned start) with 95% bands, the
full curve and the epochs after the start on an axis fitted to them; the attacked class: each model's
accuracy on its test images (from the per-image results the runs saved, ``test_correct.json``, and their
test split), each setup minus R and minus GS there, paired, and on the forget set the accuracy and the
distance to the gold standard (``<model>/forget/gap_gs``, ``kl_gs``); the cost of healing against
retraining; the twins as one image grid, collapsed. Then the full tables (collapsed), the methods view (one row per
unlearning method), the adversary comparison (unlearn runs) and stream curves.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections import defaultdict

from healing_pl import records as rk
from healing_pl.report import stats
from healing_pl.report.deletion import deletion_figure, deletion_markdown, deletion_series
from healing_pl.report.images import ImageSource, attacked_class, class_accuracy, run_folder
from healing_pl.report.regime import regime_figure, regime_markdown, regime_series
from healing_pl.report.tables import (
    Stat,
    derived_warning,
    difference,
    fit_table,
    healing_tables,
    is_compared,
    methods_markdown,
    methods_tables,
    mixed_warning,
    table_markdown,
    unlearning_table,
)

#: forget/twin pairs drawn per twin grid
GRID_PAIRS = 8

#: what every interval of the page means (said once, at the top)
INTERVALS = (
    "n: seeds. [low, high]: the 95% interval of a mean over seeds; for a difference of two setups, paired by "
    "seed (same unlearned start, same test images): Student t on the per-seed differences, kept inside the "
    "range. Accuracies and differences in percentage points. n = 1: no uncertainty (single values, no interval)."
)

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;padding:0 1em;
max-width:1360px;color:#222;overflow-wrap:anywhere}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
h4{margin:1.2em 0 .4em}
.wide{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;overflow-wrap:normal}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.ci{display:block;color:#555;font-size:.9em;white-space:nowrap}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em 1em}
.note{color:#555;font-size:.9em}
.legend{background:#f6f8fa;border-left:4px solid #8aa;padding:.5em 1em;font-size:.9em}
.headline{font-size:1.15em;font-weight:600;background:#eef4fb;border-left:4px solid #2a6fb0;padding:.5em 1em}
.exp{border-top:2px solid #ddd;margin-top:1.5em}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,560px),1fr));gap:.5em 1.5em}
.full{grid-column:1/-1}
figure{margin:.5em 0}
figcaption{font-size:.85em;color:#555}
img,svg{max-width:100%;height:auto}
details{margin:.8em 0}summary{cursor:pointer;font-weight:600}
"""


# --------------------------------------------------------------------------- building blocks
def png_data_uri(fig) -> str:
    """A matplotlib Figure as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(uri: str, caption: str, full: bool = False) -> str:
    text = html.escape(caption)
    css = ' class="full"' if full else ""
    return f'<figure{css}><img src="{uri}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def _svg_figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _wide(table_html: str) -> str:
    """A table in a box that scrolls sideways by itself, so the page never does."""
    return f'<div class="wide">{table_html}</div>'


def markdown_to_html(text: str) -> str:
    """The report's markdown (``###`` titles, pipe tables, paragraphs) as HTML; each table in a box of its own
    width (it scrolls inside the box when wider than the page)."""
    out, table = [], []

    def flush():
        if not table:
            return
        head, *body = [row for row in table if not set(row.replace("|", "").strip()) <= {"-"}]
        cells = lambda row: [html.escape(c.strip()) for c in row.strip().strip("|").split("|")]  # noqa: E731
        rows = ["<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in cells(head)) + "</tr></thead><tbody>"]
        for row in body:
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells(row)) + "</tr>")
        rows.append("</tbody></table>")
        out.append(_wide("\n".join(rows)))
        table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("### "):
            out.append(f"<h3>{html.escape(line[4:])}</h3>")
        elif line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.strip():
            out.append(f'<p class="note">{html.escape(line)}</p>')
    flush()
    return "\n".join(out)


def _new_figure(width: float = 6.0, height: float = 3.8):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _anchor(text: str) -> str:
    return "exp-" + re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-")


def _base(label: str) -> str:
    return label.split(" [")[0]


def _seeds(n: int) -> str:
    return f"n = {n} seed{'s' if n != 1 else ''}"


# --------------------------------------------------------------------------- numbers as the page prints them
def _value(stat: Stat | None, signed: bool = False) -> str:
    """A percentage over seeds in a sentence: ``88.48 [86.10, 90.86]``, per seed with the count of collapsed
    seeds, or for one seed the value alone (the sentence's list says n = 1 once); ``—`` without values."""
    if stat is None or not stat.values:
        return "—"
    s = stat.summary()
    if s.interval is None and not s.mixed:
        return f"{100 * s.mean:{'+' if signed else ''}.2f}"
    return s.text(100.0, 2, signed)


def _cell(stat: Stat | None, signed: bool = False, scale: float = 100.0, digits: int = 2) -> str:
    """An HTML table cell's content: the mean and, on a line of its own below it, its interval (one seed: the
    value alone; the table's note says n = 1: no uncertainty)."""
    if stat is None or not stat.values:
        return "—"
    s = stat.summary()
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    if s.mixed:
        return html.escape(s.text(scale, digits, signed))
    value = fmt.format(scale * s.mean)
    if s.interval is None:
        return value
    return (
        f'{value}<span class="ci">[{fmt.format(scale * s.interval.low)}, {fmt.format(scale * s.interval.high)}]</span>'
    )


def _points(stat: Stat | None, signed: bool = True) -> str:
    """A figure in a sentence: ``+0.40 points [+0.10, +0.70]``; one seed: ``+0.40 points`` (the sentence's
    list says n = 1 once)."""
    if stat is None or not stat.values:
        return "—"
    s = stat.summary()
    if s.interval is None and not s.mixed:
        return f"{100 * s.mean:{'+' if signed else ''}.2f} points"
    text = s.text(100.0, 2, signed)
    return text if s.mixed else text.replace(" [", " points [", 1)


def _one_seed(n: int) -> str:
    return " n = 1: no uncertainty (single values, no intervals)." if n == 1 else ""


def _excludes_zero(stat: Stat) -> bool:
    s = stat.summary()
    return s.interval is not None and not s.interval.contains(0.0)


def twin_setups(row: dict) -> list[str]:
    """The twin setups of a row that are candidates for best (R and the controls excluded), in table order."""
    return [label for label in row["paired"] if is_compared(label) and _base(label) != "R"]


def _chosen_on_test(row: dict) -> bool:
    """Whether the tables chose best on test accuracy (some runs record no validation accuracy)."""
    return any(str(note).startswith("chosen on test") for note in row.get("notes") or [])


def featured_twin(row: dict) -> tuple[str | None, str]:
    """The twin setup a headline speaks of, and how it was chosen: the tables' best after N/2 epochs (chosen on
    validation) when that is a twin setup, else the twin setup with the highest mean validation accuracy after
    N/2 epochs (test accuracy where runs record no validation accuracy, as the tables do)."""
    twins = twin_setups(row)
    if not twins:
        return None, ""
    split = "test" if _chosen_on_test(row) else "validation"
    best = [label for label in row.get("best N/2") or [] if label in twins]
    if best:
        return best[0], f"best on {split}"
    key = "val N/2" if split == "validation" else "N/2"
    means = {label: row["setups"][label][key].mean for label in twins if row["setups"][label][key].mean is not None}
    if not means:
        return twins[0], ""
    return max(twins, key=lambda label: means.get(label, -math.inf)), f"best twin setup on {split}"


def headline(row: dict) -> str:
    """One sentence per experiment with its paired numbers after N/2 heal epochs."""
    n, epochs, method = row["seeds"], row.get("N/2"), row["method"]
    after = f"after {epochs} heal epoch{'s' if epochs != 1 else ''}" if epochs else "after healing"
    feat, how = featured_twin(row)
    if feat is None:
        r_gs = row["paired"].get("R", {}).get("GS", {}).get("N/2")
        if r_gs is None or not r_gs.values:
            return f"{method}: no twin setup and no gold standard to compare R with ({_seeds(n)})."
        return f"{method}: R vs GS {after}: {_points(r_gs)}, {_seeds(r_gs.n)} (no twin setup ran).{_one_seed(n)}"
    diff = row["paired"][feat].get("R", {}).get("N/2")
    chosen = f" ({how})" if how else ""
    if diff is None or not diff.values:
        return f"{method}: {feat}{chosen} has no R run of the same seed to compare with ({_seeds(n)})."
    if diff.n == 1:
        return (
            f"{method}: {feat}{chosen} vs R {after}: {_points(diff)}, n = 1: no uncertainty (one seed cannot tell "
            "setups apart)."
        )
    if diff.mixed or _excludes_zero(diff):
        word = "" if diff.mixed else " (better)" if diff.mean > 0 else " (worse)"
        return f"{method}: {feat}{chosen} vs R {after}: {_points(diff)}, {_seeds(diff.n)}{word}."
    others = [
        (label, d)
        for label in twin_setups(row)
        if label != feat and (d := row["paired"][label].get("R", {}).get("N/2")) is not None and _excludes_zero(d)
    ]
    if others:
        label, d = others[0]
        return (
            f"{method}: {feat}{chosen} vs R {after}: {_points(diff)}, within noise; but {label} vs R: {_points(d)}, "
            f"{_seeds(d.n)}."
        )
    intervals = [
        ci
        for label in twin_setups(row)
        if (d := row["paired"][label].get("R", {}).get("N/2")) is not None and (ci := d.interval()) is not None
    ]
    if not intervals:  # every twin setup's seeds mix collapsed and intact models: no interval to bound
        return f"{method}: {feat}{chosen} vs R {after}: {_points(diff)}, {_seeds(diff.n)}."
    bound = max(max(abs(lo), abs(hi)) for lo, hi in intervals)
    mdes = [
        d.mde
        for label in twin_setups(row)
        if (d := row["paired"][label].get("R", {}).get("N/2")) is not None and d.mde is not None and not d.mixed
    ]
    mde = f"; the smallest difference these seeds detect (80% power) is {100 * max(mdes):.2f} points" if mdes else ""
    return (
        f"{method}: no twin setup differs from R by more than {100 * bound:.2f} points at {_seeds(n)} {after} "
        f"(every paired 95% interval contains 0{mde}); {feat}{chosen}: {_points(diff)}."
    )


def details_list(row: dict) -> list[str]:
    """The lines under a headline: the choice on validation, the featured setup against the controls and GS."""
    out = []
    feat, _ = featured_twin(row)
    best = row.get("best N/2") or []
    split = "test (no validation accuracy recorded)" if _chosen_on_test(row) else "validation"
    if best:
        acc = _value(row["setups"][best[0]]["N/2"])
        out.append(
            f"Best after N/2 epochs, chosen on {split} among R and the twin metrics (controls are never chosen): "
            f"{' = '.join(best)}, test accuracy {acc}."
        )
    for label in [feat] if feat else []:
        for ref, diffs in row["paired"][label].items():
            if ref == "R" or "N/2" not in diffs or not diffs["N/2"].values:
                continue
            kind = "the gold standard" if ref == "GS" else "a control"
            out.append(f"{label} − {ref} ({kind}): {_points(diffs['N/2'])}.")
    out.append(
        f"Test accuracy: BL {_value(row['BL'])}, GS {_value(row['GS'])}, unlearned start {_value(row['Init'])} "
        + (f"({_seeds(row['seeds'])})." if row["seeds"] != 1 else f"(one seed).{_one_seed(1)}")
    )
    return out


# --------------------------------------------------------------------------- forest plots (SVG)
def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi], about ``count`` of them."""
    span = max(hi - lo, 1e-9)
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, k = [], 0
    while first + k * step <= hi + 1e-9:
        ticks.append(round(first + k * step, 10))
        k += 1
    return ticks


def forest_range(entries: list[dict]) -> tuple[float, float]:
    """The x-range of a forest plot (points): 0, every mean, interval end and per-seed value, padded, inside
    [-100, 100]."""
    xs = [0.0]
    for e in entries:
        xs += [100 * v for v in e["values"]]
        if e["interval"] is not None:
            xs += [100 * e["interval"][0], 100 * e["interval"][1]]
    lo, hi = min(xs), max(xs)
    pad = max(0.08 * (hi - lo), 0.05)
    return max(lo - pad, -100.0), min(hi + pad, 100.0)


def forest_entries(row: dict, ref: str) -> list[dict]:
    """Every setup of a row minus ``ref`` (R, a control or GS) after N/2 epochs, paired by seed."""
    best = set(row.get("best N/2") or [])
    out = []
    for label, refs in row["paired"].items():
        diff = refs.get(ref, {}).get("N/2")
        if diff is None or not diff.values:
            continue
        s = diff.summary()
        out.append(
            {
                "label": label,
                "tag": "control" if not is_compared(label) else ("best on val." if label in best else ""),
                "mean": diff.mean,
                "values": list(diff.values),
                "interval": None if s.interval is None else (s.interval.low, s.interval.high),
                "mixed": s.mixed,
                "n": diff.n,
            }
        )
    return out


def forest_svg(title: str, entries: list[dict]) -> str:
    """A forest plot: per setup its per-seed differences (grey dots), mean (circle) and 95% interval (line),
    the value on the right; a line at 0. Inline SVG that scales with its box."""
    width, label_w, value_w, row_h, top, bottom = 680, 200, 190, 28, 44, 40
    x0, x1 = label_w, width - value_w
    height = top + row_h * len(entries) + bottom
    lo, hi = forest_range(entries)
    scale = (x1 - x0) / (hi - lo)

    def x(v: float) -> float:
        return x0 + (min(max(v, lo), hi) - lo) * scale

    esc = html.escape
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{esc(title)}" class="forest" font-family="sans-serif">',
        f"<title>{esc(title)}</title>",
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14" font-weight="600">{esc(title)}</text>',
    ]
    axis_y = top + row_h * len(entries) + 4
    for t in nice_ticks(lo, hi):
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top - 6}" y2="{axis_y}" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{x(t):.1f}" y="{axis_y + 16}" text-anchor="middle" font-size="11">{t:g}</text>')
    parts.append(f'<line x1="{x0}" x2="{x1}" y1="{axis_y}" y2="{axis_y}" stroke="#666"/>')
    parts.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top - 8}" y2="{axis_y}" stroke="#222"/>')
    parts.append(
        f'<text x="{(x0 + x1) / 2}" y="{axis_y + 34}" text-anchor="middle" font-size="11">difference '
        "[percentage points]</text>"
    )
    for i, e in enumerate(entries):
        y = top + row_h * i + row_h / 2
        color = "#888" if e["tag"] == "control" else "#1f5fa8"
        label = e["label"] + (f" ({e['tag']})" if e["tag"] else "")
        weight = ' font-weight="600"' if e["tag"] == "best on val." else ""
        parts.append(f'<text x="{x0 - 8}" y="{y + 4}" text-anchor="end" font-size="12"{weight}>{esc(label)}</text>')
        for v in e["values"]:
            parts.append(f'<circle cx="{x(100 * v):.1f}" cy="{y + 7}" r="2.5" fill="#999" fill-opacity="0.7"/>')
        if e["interval"] is not None:
            a, b = x(100 * e["interval"][0]), x(100 * e["interval"][1])
            parts.append(f'<line x1="{a:.1f}" x2="{b:.1f}" y1="{y}" y2="{y}" stroke="{color}" stroke-width="2.5"/>')
            for end in (a, b):
                parts.append(f'<line x1="{end:.1f}" x2="{end:.1f}" y1="{y - 5}" y2="{y + 5}" stroke="{color}"/>')
        if not e["mixed"]:
            parts.append(f'<circle cx="{x(100 * e["mean"]):.1f}" cy="{y}" r="5" fill="{color}"/>')
        if e["mixed"]:
            value = f"per seed ({e['n']} seeds)"
        elif e["interval"] is None:
            value = f"{100 * e['mean']:+.2f} (n = 1)"
        else:
            value = f"{100 * e['mean']:+.2f} [{100 * e['interval'][0]:+.2f}, {100 * e['interval'][1]:+.2f}]"
        parts.append(f'<text x="{x1 + 10}" y="{y + 4}" font-size="12">{esc(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def forest_figures(row: dict) -> list[str]:
    """The forest plots of one experiment: every setup minus R, minus each control and minus GS."""
    n = row["seeds"]
    refs = ["R", *(label for label in row["paired"] if not is_compared(label)), "GS"]
    out = []
    for ref in refs:
        entries = forest_entries(row, ref)
        if not entries:
            continue
        name = {"R": "R (no twins)", "GS": "GS (the gold standard)"}.get(ref, f"{ref} (control)")
        uncertainty = "mean [95% interval]" if n > 1 else "n = 1: no uncertainty"
        title = f"setup − {name}, after N/2 epochs ({_seeds(n)})"
        caption = (
            f"{row['method']}: test accuracy of each setup minus {ref} of the same seed, {uncertainty}; grey dots: "
            "the seeds. A control is never a candidate for best; best is chosen on validation."
        )
        out.append(_svg_figure(forest_svg(title, entries), caption))
    return out


# --------------------------------------------------------------------------- accuracy curves
def fit_axis(values: list[float], pad: float = 0.12, min_span: float = 0.5) -> tuple[float, float]:
    """Axis limits (percent) fitted to ``values``: their range, padded, at least ``min_span`` wide, inside
    [0, 100]."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return 0.0, 100.0
    lo, hi = min(values), max(values)
    span = max(hi - lo, min_span)
    mid = (lo + hi) / 2
    lo, hi = mid - span / 2 - pad * span, mid + span / 2 + pad * span
    if lo < 0:
        lo, hi = 0.0, min(hi - lo, 100.0)
    if hi > 100:
        lo, hi = max(lo - (hi - 100), 0.0), 100.0
    return lo, hi


def curve_series(row: dict) -> dict[str, dict]:
    """Per setup: epochs, mean test accuracy (percent) and its 95% band, the band inside [0, 100] (none for one
    seed or seeds that mix collapsed and intact models)."""
    out = {}
    for label, points in row["curves"].items():
        xs, ys, lows, highs = [], [], [], []
        for k, stat in enumerate(points):
            if stat.mean is None:
                continue
            xs.append(k)
            ys.append(100 * stat.mean)
            ci = stat.interval()
            lows.append(None if ci is None else min(max(100 * ci[0], 0.0), 100.0))
            highs.append(None if ci is None else min(max(100 * ci[1], 0.0), 100.0))
        out[label] = {"x": xs, "y": ys, "low": lows, "high": highs, "n": max((s.n for s in points), default=0)}
    return out


def curve_figure(row: dict) -> str:
    """Test accuracy vs heal epoch per setup (epoch 0: the unlearned start) with 95% bands over seeds and BL and
    GS as horizontal lines: the whole curve, and beside it the epochs after the start on an axis fitted to them."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    series = curve_series(row)
    after = {label: [y for x, y in zip(s["x"], s["y"]) if x >= 1] for label, s in series.items()}
    zoom = any(len(ys) > 1 for ys in after.values())  # a second panel only for two or more epochs after the start
    fig = Figure(figsize=(11.0 if zoom else 6.0, 3.9))
    axes = list(fig.subplots(1, 2 if zoom else 1, squeeze=False)[0])
    refs = [(row[name], name, color) for name, color in (("BL", "black"), ("GS", "tab:green"))]
    best = set(row.get("best N/2") or [])
    for j, ax in enumerate(axes):
        first = 1 if j == 1 else 0
        shown = []
        for label, s in series.items():
            points = [(x, y, lo, hi) for x, y, lo, hi in zip(s["x"], s["y"], s["low"], s["high"]) if x >= first]
            if not points:
                continue
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            style = "-" if is_compared(label) else ":"
            name = label + (" (best on val.)" if label in best else " (control)" if not is_compared(label) else "")
            (line,) = ax.plot(xs, ys, style, marker="o", label=name, linewidth=2.2 if label in best else 1.4)
            shown += ys
            banded = [p for p in points if p[2] is not None]
            if banded:
                ax.fill_between(
                    [p[0] for p in banded],
                    [p[2] for p in banded],
                    [p[3] for p in banded],
                    color=line.get_color(),
                    alpha=0.12,
                )
        spread = max(shown) - min(shown) if shown else 0.0
        for stat, name, color in refs:
            if stat.mean is not None:
                value = 100 * stat.mean
                ax.axhline(value, color=color, linestyle="--", linewidth=1, label=f"{name} {value:.2f}")
                # the zoomed axis takes a reference line in only when it lies near the curves
                if shown and (j == 0 or min(abs(value - min(shown)), abs(value - max(shown))) <= max(spread, 0.5)):
                    shown.append(value)
        ax.set_ylim(*fit_axis(shown))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("heal epoch (0: the unlearned start)" if j == 0 else "heal epoch")
        ax.set_ylabel("test accuracy [%]")
        ax.grid(alpha=0.3)
        if zoom:
            ax.set_title("whole curve" if j == 0 else "after the start (axis fitted to these epochs)", fontsize=10)
    n = row["seeds"]
    bands = "bands: 95% interval of the mean" if n > 1 else "n = 1: no uncertainty, no bands"
    fig.suptitle(f"{row['dataset']} · {row['method']} · {row['forget']} × {row['selector']} ({_seeds(n)}; {bands})")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(labels)), fontsize=8)
    return png_data_uri(fig)


# --------------------------------------------------------------------------- the attacked class and the cost
def _runs(row: dict, records_by_dir: dict) -> dict[str, list[dict]]:
    """Per setup: its records, one per seed, in the row's seed order."""
    return {
        label: [records_by_dir[str(d)] for d in dirs if str(d) in records_by_dir] for label, dirs in row["runs"].items()
    }


def _reference_runs(runs: dict[str, list[dict]]) -> list[dict]:
    """One record per seed for the figures every setup of a seed shares (baseline, gold standard, unlearned)."""
    return max(runs.values(), key=len, default=[])


def _stat(records: list[dict], key, bounds=stats.UNIT) -> Stat:
    return Stat([v for r in records if (v := rk.number(r, key)) is not None], bounds)


def _forget_set_line(record: dict) -> str:
    counts = record.get(rk.FORGET_CLASSES)
    total = record.get(rk.FORGET_COUNT)
    target = record.get(rk.ADVERSARY_TARGET_CLASS)
    parts = [f"{total} sample{'s' if total != 1 else ''} chosen by the {record.get(rk.ADVERSARY_SELECTOR)} adversary"]
    if isinstance(counts, list) and counts and total:
        held = sorted(((c, k) for k, c in enumerate(counts) if c), reverse=True)
        parts.append("classes " + ", ".join(f"{k}: {c}" for c, k in held[:4]) + (", …" if len(held) > 4 else ""))
    if target is not None:
        parts.append(f"attacked class {target}")
    return "; ".join(parts)


def _seed_of(record: dict) -> str:
    return json.dumps(record.get(rk.EXPERIMENT_SEEDS) or {}, sort_keys=True, default=str)


def class_section(runs: dict[str, list[dict]], refs: list[dict], target: int, images: ImageSource) -> str:
    """Accuracy on the test images of the attacked class per model, and each healed setup minus R and minus GS,
    paired by seed (same test images); empty when no run saved its per-image results."""
    acc = {id(r): class_accuracy(r, target, images) for recs in runs.values() for r in recs}
    if not any(acc.values()):
        return ""
    seen_refs = [r for r in refs if acc.get(id(r))]
    rows = [
        (name, Stat([acc[id(r)][model] for r in seen_refs if model in acc[id(r)]]), None, None)
        for name, model in (("BL", rk.BASELINE), ("GS", rk.GOLD), ("unlearned", rk.UNLEARNED))
    ]
    r_by_seed = {_seed_of(r): acc[id(r)].get(rk.HEALED) for r in runs.get("R", []) if acc.get(id(r))}
    for label, recs in runs.items():
        values, minus_r, minus_gs = [], ([], []), ([], [])
        for r in recs:
            healed = acc.get(id(r), {}).get(rk.HEALED)
            if healed is None:
                continue
            values.append(healed)
            if label != "R" and r_by_seed.get(_seed_of(r)) is not None:
                minus_r[0].append(healed)
                minus_r[1].append(r_by_seed[_seed_of(r)])
            if acc[id(r)].get(rk.GOLD) is not None:
                minus_gs[0].append(healed)
                minus_gs[1].append(acc[id(r)][rk.GOLD])
        if values:
            rows.append(
                (
                    f"healed: {label}",
                    Stat(values),
                    difference(*minus_r) if label != "R" else None,
                    difference(*minus_gs),
                )
            )
    head = "<tr><th>model</th><th>n</th><th>accuracy [%]</th><th>− R [points]</th><th>− GS [points]</th></tr>"
    lines = ["<table><thead>" + head + "</thead><tbody>"]
    for name, stat, minus_r, minus_gs in rows:
        if not stat.values:
            continue
        cells = [html.escape(name), str(stat.n), _cell(stat), _cell(minus_r, True), _cell(minus_gs, True)]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</tbody></table>")
    note = (
        f"Test accuracy on the test images of class {target}, from the per-image results the runs saved; − R and "
        "− GS: paired by seed, on the same test images."
    )
    return f'<p class="note">{html.escape(note)}</p>' + _wide("\n".join(lines))


def attacked_section(row: dict, runs: dict[str, list[dict]], images: ImageSource | None = None) -> str:
    """The attacked class: each model's accuracy on the test images of that class (where the runs saved their
    per-image results), and on the forget set with, where recorded, its distance to the gold standard there
    (accuracy gap and mean KL of the outputs)."""
    refs = _reference_runs(runs)
    if not refs:
        return ""
    target = attacked_class(refs[0])
    by_class = class_section(runs, refs, target, images) if target is not None and images is not None else ""
    models = [("BL", rk.BASELINE, refs), ("GS", rk.GOLD, refs), ("unlearned", rk.UNLEARNED, refs)]
    models += [(f"healed: {label}", rk.HEALED, runs[label]) for label in runs if runs[label]]
    has_distance = any(rk.gold_distance(rk.UNLEARNED, "gap") in r for r in refs)
    head = "<tr><th>model</th><th>n</th><th>accuracy [%]</th>"
    head += "<th>− GS [points]</th><th>KL(GS ‖ model) [nats]</th>" if has_distance else ""
    lines = ["<table><thead>" + head + "</tr></thead><tbody>"]
    for name, model, recs in models:
        acc = _stat(recs, rk.accuracy(model, rk.FORGET))
        cells = [html.escape(name), str(acc.n), _cell(acc)]
        if has_distance and model == rk.GOLD:  # the gold standard's distance to itself is no record key
            cells += ["—", "—"]
        elif has_distance:
            gap = _stat(recs, rk.gold_distance(model, "gap"), stats.DIFFERENCE)
            kl = _stat(recs, rk.gold_distance(model, "kl"), stats.POSITIVE)
            cells += [_cell(gap, True), _cell(kl, False, 1.0, 3)]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</tbody></table>")
    note = "On the forget set: " + _forget_set_line(refs[0]) + "."
    if has_distance:
        note += (
            " − GS: the model's forget accuracy minus the gold standard's; KL: the mean KL(GS ‖ model) of the outputs."
        )
    else:
        note += " The runs recorded no distance to the gold standard on the forget set (older runs, or no GS)."
    if not by_class:
        note += (
            " The runs saved no per-image test results (test_correct.json) to measure the attacked class's test "
            "accuracy, so the forget set stands for it."
        )
    note += _one_seed(len(refs))
    title = "The attacked class" + (f" (class {target})" if target is not None else "")
    return f"<h4>{title}</h4>" + by_class + f'<p class="note">{html.escape(note)}</p>' + _wide("\n".join(lines))


def cost_section(row: dict, runs: dict[str, list[dict]]) -> str:
    """The cost of healing against retraining: fine-tune and twin-search time per setup, unlearning and the
    gold standard's training time (mean over seeds, 95% interval)."""
    refs = _reference_runs(runs)
    gold = _stat(refs, rk.GOLD_TIME_S, stats.POSITIVE)
    unlearn = _stat(refs, rk.UNLEARNED_TIME_S, stats.POSITIVE)
    rows = [("retraining: the gold standard", gold), ("unlearning", unlearn)]
    for label, recs in runs.items():
        heal = _stat(recs, rk.HEAL_TIME_S, stats.POSITIVE)
        twins = _stat(recs, rk.TWINS_TIME_S, stats.POSITIVE) if _base(label) != "R" else Stat([], stats.POSITIVE)
        total = [
            h + (t if _base(label) != "R" else 0.0)
            for r in recs
            if (h := rk.number(r, rk.HEAL_TIME_S)) is not None
            and (_base(label) == "R" or (t := rk.number(r, rk.TWINS_TIME_S)) is not None)
        ]
        if heal.values:
            what = "fine-tune" + (" + twin search" if twins.values else "")
            rows.append((f"healing {label}: {what}", Stat(total, stats.POSITIVE)))
    if not gold.values and len(rows) == 2 and not unlearn.values:
        return ""
    lines = [
        "<table><thead><tr><th>step</th><th>n</th><th>time [s]</th><th>share of retraining</th></tr></thead><tbody>"
    ]
    for name, stat in rows:
        if not stat.values:
            continue
        share = f"{100 * stat.mean / gold.mean:.0f}%" if gold.mean else "—"
        cells = [html.escape(name), str(stat.n), _cell(stat, scale=1.0, digits=1), share]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</tbody></table>")
    note = (
        "Wall time per run; the gold standard's is its training time (also when it came from the cache). Share: "
        "the mean time over the gold standard's mean time." + _one_seed(len(refs))
    )
    return f'<h4>Cost</h4><p class="note">{note}</p>' + _wide("\n".join(lines))


# --------------------------------------------------------------------------- twin images
def twin_rows(row: dict, runs: dict[str, list[dict]]) -> list[tuple[str, list[dict], bool]]:
    """The twin grid of one experiment: per twin setup (its first seed's run) its pairs, and whether its scores
    mean anything (a control's, the random twins', do not)."""
    out = []
    for label, recs in runs.items():
        pairs = (recs[0].get(rk.TWINS_PAIRS) or []) if recs else []
        if pairs:
            out.append((label, pairs, is_compared(label)))
    return out


def twin_figure(rows: list[tuple[str, list[dict], bool]], folder: str, images: ImageSource) -> str:
    """Forget samples (top row) above each twin setup's twins (one row per setup), with ids, classes and, for a
    metric that is not a control, its score: one mosaic image, labelled."""
    import numpy as np
    from matplotlib.figure import Figure

    from healing_pl.media import sample_image

    pool = images.pool(folder)
    requests = [p["request_id"] for p in rows[0][1][:GRID_PAIRS]]
    names = list(getattr(pool, "classes", []) or [])
    lines = [("forget", {q: {"twin_id": q} for q in requests}, False)]
    lines += [(label, {p["request_id"]: p for p in pairs}, scores) for label, pairs, scores in rows]
    cells = {}
    for j, (_, by_request, _) in enumerate(lines):
        for i, q in enumerate(requests):
            if q in by_request:
                image, cls = sample_image(pool.train, by_request[q]["twin_id"])
                rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
                cells[(j, i)] = (rgb, cls)
    h = max(c[0].shape[0] for c in cells.values())
    w = max(c[0].shape[1] for c in cells.values())
    pad_x, pad_y = max(w // 3, 2), max(h // 2, 4)  # room for the captions above and below each image
    mosaic = np.full((len(lines) * (h + 2 * pad_y), len(requests) * (w + pad_x), 3), 255, dtype=np.uint8)
    for (j, i), (rgb, _) in cells.items():
        top, left = j * (h + 2 * pad_y) + pad_y, i * (w + pad_x)
        mosaic[top : top + rgb.shape[0], left : left + rgb.shape[1]] = rgb
    fig = Figure(figsize=(1.15 * len(requests) + 1.3, 1.35 * len(lines) + 0.2))
    ax = fig.add_axes((0.1, 0.0, 0.9, 1.0))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for j, (label, by_request, scores) in enumerate(lines):
        top = j * (h + 2 * pad_y) + pad_y
        ax.text(-pad_x, top + h / 2, label, ha="right", va="center", fontsize=8)
        for i, q in enumerate(requests):
            if (j, i) not in cells:
                continue
            left, cls = i * (w + pad_x), cells[(j, i)][1]
            name = names[cls] if cls < len(names) else str(cls)
            ax.text(
                left + w / 2, top - 1, f"#{by_request[q]['twin_id']} ({name})", ha="center", va="bottom", fontsize=6
            )
            score = by_request[q].get("score")
            if scores and score is not None:
                ax.text(left + w / 2, top + h + 1, f"{score:.3g}", ha="center", va="top", fontsize=6)
    return png_data_uri(fig)


def twin_section(row: dict, runs: dict[str, list[dict]], images: ImageSource, seen: dict) -> str:
    """One twin grid per experiment, collapsed; an experiment whose twins an earlier one showed says so."""
    rows = twin_rows(row, runs)
    if not rows:
        return ""
    key = json.dumps([(label, [(p.get("request_id"), p.get("twin_id")) for p in pairs]) for label, pairs, _ in rows])
    summary = f"<summary>Twins ({html.escape(str(row['method']))}: forget samples above their twins)</summary>"
    if key in seen:
        note = f"The same twins as {html.escape(seen[key])} above (twins depend on the forget set, not the method)."
        return f'<details>{summary}<p class="note">{note}</p></details>'
    seen[key] = str(row["method"])
    first = next(recs[0] for label, recs in runs.items() if recs and recs[0].get(rk.TWINS_PAIRS))
    try:
        uri = twin_figure(rows, run_folder(first), images)
    except (OSError, ValueError, ImportError, KeyError, IndexError) as err:
        reason = html.escape(str(err).rstrip("."))
        return f'<details>{summary}<p class="note">twin images skipped ({reason}).</p></details>'
    caption = (
        f"the first seed's forget samples (top) and, per row, the twins each setup found (run "
        f"{os.path.basename(run_folder(first))}); under a twin: the metric's score (none for a control: its twins "
        "are drawn at random)"
    )
    return f"<details>{summary}{_figure(uri, caption, full=True)}</details>"


# --------------------------------------------------------------------------- methods
def methods_view(rows: list[dict]) -> str:
    """One row per unlearning method of a table: the unlearned start, R, the featured twin setup and its paired
    differences to R and GS after N/2 epochs."""
    head = (
        "<tr><th>method</th><th>n</th><th>unlearned start</th><th>R</th><th>twin setup (chosen on val.)</th>"
        "<th>twin − R</th><th>twin − GS</th><th>R − GS</th></tr>"
    )
    lines = ["<table><thead>" + head + "</thead><tbody>"]
    for row in rows:
        feat, _ = featured_twin(row)
        r = row["setups"].get("R", {}).get("N/2")
        paired = row["paired"].get(feat, {}) if feat else {}
        r_gs = row["paired"].get("R", {}).get("GS", {}).get("N/2")
        cells = [
            html.escape(str(row["method"])),
            str(row["seeds"]),
            _cell(row["Init"]),
            _cell(r),
            (html.escape(feat) + "<br>" + _cell(row["setups"][feat]["N/2"])) if feat else "—",
            _cell(paired.get("R", {}).get("N/2"), True),
            _cell(paired.get("GS", {}).get("N/2"), True),
            _cell(r_gs, True),
        ]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</tbody></table>")
    note = (
        "Each cell: the mean over seeds and its 95% interval (differences paired by seed); the twin setup is the one "
        "the headline names (chosen on validation)." + _one_seed(min(row["seeds"] for row in rows))
    )
    return _wide("\n".join(lines)) + f'<p class="note">{html.escape(note)}</p>'


# --------------------------------------------------------------------------- forget quality
def _yerr(stats_: list[Stat], scale: float = 100.0) -> list[list[float]]:
    """Asymmetric error bars from the intervals kept inside their range (0 where a figure has none)."""
    low, high = [], []
    for s in stats_:
        ci = s.interval()
        low.append(0.0 if ci is None else max(scale * (s.mean - ci[0]), 0.0))
        high.append(0.0 if ci is None else max(scale * (ci[1] - s.mean), 0.0))
    return [low, high]


def mia_figure(table: dict) -> str | None:
    """MIA AUC on the forget set per method: the unlearned model beside the healed ones (R, best twin metric),
    error bars the 95% interval over seeds (inside [0, 1]); BL and GS as horizontal lines."""
    stages = [s for s in ("unlearned", "R", "best twin") if any(s in r for r in table["rows"])]
    rows = [r for r in table["rows"] if any(r.get(s, {}).get("MIA", Stat()).mean is not None for s in stages)]
    if not rows:
        return None
    fig, ax = _new_figure(width=max(4.5, 1.3 * len(rows) + 2))
    width = 0.8 / len(stages)
    for j, stage in enumerate(stages):
        aucs = [r.get(stage, {}).get("MIA", Stat()) for r in rows]
        xs = [i + j * width for i, st in enumerate(aucs) if st.mean is not None]
        ys = [st.mean for st in aucs if st.mean is not None]
        err = _yerr([st for st in aucs if st.mean is not None], scale=1.0)
        label = "healed (R)" if stage == "R" else "healed (best twin)" if stage == "best twin" else stage
        ax.bar(xs, ys, width=width, yerr=err, capsize=3, label=label)
    for name, color in (("BL", "black"), ("GS", "tab:green")):
        ref = next((r["reference"][name]["MIA"] for r in rows if r["reference"][name]["MIA"].mean is not None), None)
        if ref is not None:
            ax.axhline(ref.mean, color=color, linestyle="--", linewidth=1, label=f"{name} {ref.mean:.3f}")
    ax.axhline(0.5, color="gray", linestyle=":", linewidth=1)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [str(r["method"]) for r in rows])
    ax.set_ylabel("MIA AUC on the forget set (0.5: chance)")
    ax.set_title("Forget quality per method: unlearned vs healed")
    ax.legend(fontsize=7, loc="best")
    ax.grid(axis="y", alpha=0.3)
    return png_data_uri(fig)


# --------------------------------------------------------------------------- adversary and stream
def adversary_figure(records: list[dict]) -> str | None:
    """Unlearned test accuracy per selector (x) and method (bars), mean over runs; BL as a line."""
    runs = [r for r in records if r.get(rk.PHASE) == rk.UNLEARN and r.get(rk.UNLEARNED_TEST_ACC) is not None]
    if not runs:
        return None
    cells: dict[tuple, list[float]] = defaultdict(list)
    for r in runs:
        selector = f"{r.get(rk.ADVERSARY_SELECTOR)} ×{r.get(rk.FORGET_COUNT)}"
        cells[(selector, r.get(rk.UNLEARN_METHOD))].append(r[rk.UNLEARNED_TEST_ACC])
    selectors = sorted({s for s, _ in cells})
    methods = sorted({str(m) for _, m in cells})
    fig, ax = _new_figure(width=max(5.0, 1.4 * len(selectors) + 2))
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        accs = [Stat(cells.get((s, method), [])) for s in selectors]
        xs = [i + j * width for i, s in enumerate(accs) if s.mean is not None]
        ys = [100 * s.mean for s in accs if s.mean is not None]
        err = _yerr([s for s in accs if s.mean is not None])
        ax.bar(xs, ys, width=width, yerr=err, capsize=3, label=method)
    baseline = Stat([r[rk.BASELINE_TEST_ACC] for r in runs if r.get(rk.BASELINE_TEST_ACC) is not None])
    if baseline.mean is not None:
        ax.axhline(100 * baseline.mean, color="black", linestyle="--", linewidth=1, label="BL")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(selectors))], selectors, rotation=20, ha="right")
    ax.set_ylabel("unlearned test accuracy [%]")
    ax.set_title("Adversaries: accuracy after unlearning per selector and method")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return png_data_uri(fig)


def stream_figure(records: list[dict]) -> str | None:
    """Test accuracy per round of every stream run (round 0: the baseline)."""
    runs = [r for r in records if r.get(rk.PHASE) == rk.STREAM and r.get(rk.STREAM_CURVE)]
    if not runs:
        return None
    fig, ax = _new_figure()
    for r in runs:
        curve = sorted(r[rk.STREAM_CURVE], key=lambda p: p.get(rk.CURVE_ROUND, 0))
        xs = [p.get(rk.CURVE_ROUND, 0) + 1 for p in curve if p.get(rk.CURVE_TEST_ACC) is not None]
        ys = [100 * p[rk.CURVE_TEST_ACC] for p in curve if p.get(rk.CURVE_TEST_ACC) is not None]
        ax.plot(xs, ys, marker="o", label=os.path.basename(str(r.get(rk.RUN_DIR))))
    ax.set_xlabel("round (0: the baseline)")
    ax.set_ylabel("test accuracy [%]")
    ax.set_title("Streams of unlearn requests")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return png_data_uri(fig)


def stream_table(records: list[dict]) -> str:
    runs = [r for r in records if r.get(rk.PHASE) == rk.STREAM]
    out = ["| run | selector | rounds | adversarial | benign | BL | final |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        out.append(
            f"| {os.path.basename(str(r.get(rk.RUN_DIR)))} | {r.get(rk.ADVERSARY_SELECTOR)} "
            f"| {len(r.get(rk.STREAM_ROUNDS) or [])} | {r.get(rk.STREAM_N_ADVERSARIAL)} | {r.get(rk.STREAM_N_BENIGN)} "
            f"| {_pct(r.get(rk.BASELINE_TEST_ACC))} | {_pct(r.get(rk.STREAM_FINAL_TEST_ACC))} |"
        )
    return "\n".join(out)


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


# --------------------------------------------------------------------------- the page
def experiment_section(row: dict, records_by_dir: dict, images: ImageSource, seen: dict) -> str:
    """One experiment (a row of a healing table): headline, details, figures, attacked class, cost, twins."""
    runs = _runs(row, records_by_dir)
    title = f"{row['method']} · {row['dataset']} ({row['backbone']}) · {row['forget']} × {row['selector']}"
    title += f" · {_seeds(row['seeds'])} · N/2 = {row['N/2']} epoch{'s' if row['N/2'] != 1 else ''}"
    parts = [
        f'<section class="exp" id="{_anchor(row["experiment"])}">',
        f"<h3>{html.escape(title)}</h3>",
        f'<p class="headline">{html.escape(headline(row))}</p>',
        "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in details_list(row)) + "</ul>",
    ]
    parts += [f'<p class="warn">Note: {html.escape(note)}.</p>' for note in row.get("notes") or []]
    figures = forest_figures(row)
    caption = f"{row['method']}: test accuracy vs heal epoch per setup (epoch 0: the unlearned start); BL, GS dashed"
    figures.append(_figure(curve_figure(row), caption, full=True))
    parts.append('<div class="figs">' + "".join(figures) + "</div>")
    parts += [attacked_section(row, runs, images), cost_section(row, runs), twin_section(row, runs, images, seen)]
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def _series_section(title: str, series: list[dict], figure, caption: str, markdown) -> list[str]:
    """A section of series (deletion fractions, twin regimes): one full-width figure each, then their table."""
    if not series:
        return []
    out = [f"<h2>{html.escape(title)}</h2>"]
    out += [_figure(png_data_uri(figure(s)), f"{s['title']}: {caption}", full=True) for s in series]
    return out + [markdown_to_html(markdown(series))]


def dashboard_html(records: list[dict], source: str | None = None) -> str:
    """The whole dashboard as one HTML document."""
    body = [f"<h1>healing-pl report{(': ' + html.escape(source)) if source else ''}</h1>"]
    counts = defaultdict(int)
    for r in records:
        counts[str(r.get(rk.PHASE))] += 1
    body.append(f'<p class="note">{", ".join(f"{n} {p} run(s)" for p, n in sorted(counts.items()))}.</p>')
    body.append(f'<p class="legend">{html.escape(INTERVALS)}</p>')
    for line in (derived_warning(records), mixed_warning(records, source)):
        if line:
            body.append(f'<p class="warn">{html.escape(line)}</p>')
    found = healing_tables(records)
    if found:
        rows = [row for table in found for row in table["rows"]]
        body.append("<h2>Findings</h2>")
        items = "".join(
            f'<li><a href="#{_anchor(row["experiment"])}">{html.escape(headline(row))}</a></li>' for row in rows
        )
        body.append(f'<ul class="headlines">{items}</ul>')
    if counts.get(rk.FIT):
        body += ["<h2>Baselines</h2>", markdown_to_html(fit_table(records))]
    if found:
        images, seen = ImageSource(), {}
        by_dir = {str(r.get(rk.RUN_DIR)): r for r in records}
        body.append("<h2>Healing</h2>")
        for table in found:
            body.append(f"<h3>{html.escape(table['title'])}</h3>")
            if len(table["rows"]) > 1:
                body += [
                    "<h4>Methods: one row per unlearning method (after N/2 epochs)</h4>",
                    methods_view(table["rows"]),
                ]
            for row in table["rows"]:
                body.append(experiment_section(row, by_dir, images, seen))
            body.append(
                "<details><summary>The full table (the paper's Table 4 shape) and every paired difference</summary>"
                + markdown_to_html(table_markdown(table))
                + "</details>"
            )
        body += _series_section(
            "The twin regime: paired effects against the forget-set size",
            regime_series(records, images),
            regime_figure,
            "each twin setup minus R and minus a control, per seed, with its 95% interval",
            regime_markdown,
        )
    methods = methods_tables(records)
    if methods:
        body.append("<h2>Methods (forget quality before and after healing)</h2>")
        for table in methods:
            figure = mia_figure(table)
            mia = (
                _figure(figure, "MIA AUC on the forget set per method, unlearned vs healed (BL, GS dashed)")
                if figure
                else ""
            )
            body.append(
                f"<details><summary>{html.escape(table['title'])}</summary>"
                + markdown_to_html(methods_markdown(table))
                + mia
                + "</details>"
            )
    if counts.get(rk.UNLEARN):
        body.append("<h2>Adversaries and unlearning</h2>")
        uri = adversary_figure(records)
        if uri:
            body.append(_figure(uri, "unlearned test accuracy per selector and method (BL dashed)"))
        body.append(markdown_to_html(unlearning_table(records)))
        body += _series_section(
            "Against the deletion fraction (the paper's Figures 1–2)",
            deletion_series(records),
            deletion_figure,
            "test accuracy and wall time against the share of the training set forgotten",
            deletion_markdown,
        )
    if counts.get(rk.STREAM):
        body.append("<h2>Streams</h2>")
        uri = stream_figure(records)
        if uri:
            body.append(_figure(uri, "test accuracy after every round"))
        body.append(markdown_to_html(stream_table(records)))
    if not records:
        body.append("<p>no finished runs found.</p>")
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<link rel='icon' href='data:,'><title>healing-pl report</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
