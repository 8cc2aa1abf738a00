"""A self-contained HTML dashboard of finished runs: the report's tables as HTML tables, and figures.

``healing-pl report RUNS --output dashboard.html`` writes it. Every figure is a matplotlib PNG inlined as a
base64 data URI, the style sheet is inline, and nothing is fetched from elsewhere: the file can be mailed.

Per experiment (heal runs): accuracy vs heal epoch per setup (epoch 0 is the unlearned start) with the
baseline (BL) and gold standard (GS) as horizontal lines, Best−GS per setup (error bars: 95% CI over
seeds), and twin image grids (forget samples beside their twins, read from the run's dataset). Then the
methods view (per method: test and forget accuracy and MIA AUC, unlearned and healed, and a figure of the MIA
AUC per method, unlearned vs healed), the adversary comparison (unlearn runs: accuracy per selector and
method) and stream curves (accuracy per round).
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections import defaultdict

import yaml

from healing_pl import records as rk
from healing_pl.report.tables import (
    Stat,
    derived_warning,
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

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em 1em}
.note{color:#555;font-size:.9em}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figcaption{font-size:.85em;color:#555;max-width:560px}
img{max-width:100%}
"""


# --------------------------------------------------------------------------- building blocks
def png_data_uri(fig) -> str:
    """A matplotlib Figure as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(uri: str, caption: str) -> str:
    text = html.escape(caption)
    return f'<figure><img src="{uri}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def markdown_to_html(text: str) -> str:
    """The report's markdown (``###`` titles, pipe tables, paragraphs) as HTML."""
    out, table = [], []

    def flush():
        if not table:
            return
        head, *body = [row for row in table if not set(row.replace("|", "").strip()) <= {"-"}]
        cells = lambda row: [html.escape(c.strip()) for c in row.strip().strip("|").split("|")]  # noqa: E731
        out.append("<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in cells(head)) + "</tr></thead><tbody>")
        for row in body:
            out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells(row)) + "</tr>")
        out.append("</tbody></table>")
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


# --------------------------------------------------------------------------- healing figures
def curve_figure(row: dict) -> str:
    """Accuracy vs heal epoch per setup, BL and GS as horizontal lines; a band of the 95% CI over seeds."""
    fig, ax = _new_figure()
    for label, points in row["curves"].items():
        xs = [k for k, s in enumerate(points) if s.mean is not None]
        ys = [100 * points[k].mean for k in xs]
        style = "-" if is_compared(label) else ":"
        (line,) = ax.plot(xs, ys, style, marker="o", label=label)
        if row["seeds"] > 1:
            lo = [100 * (points[k].mean - (points[k].half or 0)) for k in xs]
            hi = [100 * (points[k].mean + (points[k].half or 0)) for k in xs]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
    for stat, name, color in ((row["BL"], "BL", "black"), (row["GS"], "GS", "tab:green")):
        if stat.mean is not None:
            ax.axhline(100 * stat.mean, color=color, linestyle="--", linewidth=1, label=f"{name} {100 * stat.mean:.2f}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("heal epoch (0: unlearned start)")
    ax.set_ylabel("test accuracy [%]")
    ax.set_title(f"{row['dataset']} · {row['method']} · {row['forget']} × {row['selector']}")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return png_data_uri(fig)


def gap_figure(row: dict) -> str | None:
    """Test accuracy after N/2 epochs minus GS, per setup, with 95% CI error bars over seeds."""
    labels, means, errors = [], [], []
    for label, gaps in row["gaps"].items():
        if gaps.mean is None:
            continue
        labels.append(label)
        means.append(100 * gaps.mean)
        errors.append(100 * (gaps.half or 0))
    if not labels:
        return None
    fig, ax = _new_figure(width=max(4.0, 1.1 * len(labels) + 1.5))
    colors = ["tab:blue" if is_compared(label) else "tab:gray" for label in labels]
    ax.bar(range(len(labels)), means, yerr=errors if row["seeds"] > 1 else None, color=colors, capsize=4)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy − GS after N/2 epochs [points]")
    ax.set_title("Setup − GS" + (f" (mean ± 95% CI, n = {row['seeds']})" if row["seeds"] > 1 else ""))
    ax.grid(axis="y", alpha=0.3)
    return png_data_uri(fig)


def mia_figure(table: dict) -> str | None:
    """MIA AUC on the forget set per method: the unlearned model beside the healed ones (R, best twin metric),
    95% CI error bars over seeds; BL and GS as horizontal lines."""
    stages = [s for s in ("unlearned", "R", "best twin") if any(s in r for r in table["rows"])]
    rows = [r for r in table["rows"] if any(r.get(s, {}).get("MIA", Stat()).mean is not None for s in stages)]
    if not rows:
        return None
    fig, ax = _new_figure(width=max(4.5, 1.3 * len(rows) + 2))
    width = 0.8 / len(stages)
    for j, stage in enumerate(stages):
        stats = [r.get(stage, {}).get("MIA", Stat()) for r in rows]
        xs = [i + j * width for i, st in enumerate(stats) if st.mean is not None]
        ys = [st.mean for st in stats if st.mean is not None]
        err = [st.half or 0 for st in stats if st.mean is not None]
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


# --------------------------------------------------------------------------- twin images
class ImageSource:
    """Loads pool samples of the datasets that run folders name in their ``config.yaml`` (cached per dataset)."""

    def __init__(self):
        self.pools: dict[tuple, object] = {}

    def pool(self, run_folder: str):
        path = os.path.join(run_folder, "config.yaml")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"'{run_folder}' holds no config.yaml to name its dataset")
        with open(path) as f:
            data = (yaml.safe_load(f) or {}).get("data") or {}
        key = (data.get("dataset"), data.get("root"), data.get("image_size"), data.get("channels"))
        if key not in self.pools:
            from healing_pl.data.datasets import build_pool

            self.pools[key] = build_pool(key[0], root=key[1], download=False, image_size=key[2], channels=key[3])
        return self.pools[key]


def twin_figure(record: dict, images: ImageSource) -> str:
    """Forget samples (top row) above their twins (bottom row), with classes and scores."""
    from healing_pl.media import sample_image

    pool = images.pool(os.path.dirname(record.get(rk.FILE) or os.path.join(str(record[rk.RUN_DIR]), "x")))
    pairs = (record.get(rk.TWINS_PAIRS) or [])[:GRID_PAIRS]
    names = list(getattr(pool, "classes", []) or [])
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.3 * len(pairs) + 0.6, 3.0))
    axes = fig.subplots(2, len(pairs), squeeze=False)
    for i, pair in enumerate(pairs):
        for row, key in enumerate(("request_id", "twin_id")):
            image, label = sample_image(pool.train, pair[key])
            ax = axes[row][i]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            name = names[label] if label < len(names) else str(label)
            ax.set_title(f"#{pair[key]} ({name})", fontsize=7)
        if pair.get("score") is not None:
            axes[1][i].set_xlabel(f"{pair['score']:.3g}", fontsize=7)
    axes[0][0].set_ylabel("forget", fontsize=8)
    axes[1][0].set_ylabel("twin", fontsize=8)
    return png_data_uri(fig)


def twin_section(row: dict, records: list[dict], images: ImageSource) -> str:
    parts = []
    by_dir = {str(r.get(rk.RUN_DIR)): r for r in records}
    for label, dirs in row["runs"].items():
        record = by_dir.get(str(dirs[0])) if dirs else None
        if record is None or not record.get(rk.TWINS_PAIRS):
            continue
        try:
            uri = twin_figure(record, images)
        except (OSError, ValueError, ImportError, KeyError, IndexError) as err:
            reason = str(err).rstrip(".")
            parts.append(f'<p class="note">{html.escape(label)}: twin images skipped ({html.escape(reason)}).</p>')
            continue
        caption = f"{label}: forget samples (top) and their twins (bottom), run {os.path.basename(str(dirs[0]))}"
        parts.append(_figure(uri, caption))
    return "\n".join(parts)


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
        stats = [Stat(cells.get((s, method), [])) for s in selectors]
        xs = [i + j * width for i, s in enumerate(stats) if s.mean is not None]
        ys = [100 * s.mean for s in stats if s.mean is not None]
        err = [100 * (s.half or 0) for s in stats if s.mean is not None]
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
def dashboard_html(records: list[dict], source: str | None = None) -> str:
    """The whole dashboard as one HTML document."""
    body = [f"<h1>healing-pl report{(': ' + html.escape(source)) if source else ''}</h1>"]
    counts = defaultdict(int)
    for r in records:
        counts[str(r.get(rk.PHASE))] += 1
    body.append(f'<p class="note">{", ".join(f"{n} {p} run(s)" for p, n in sorted(counts.items()))}.</p>')
    for line in (derived_warning(records), mixed_warning(records, source)):
        if line:
            body.append(f'<p class="warn">{html.escape(line)}</p>')
    if counts.get(rk.FIT):
        body += ["<h2>Baselines</h2>", markdown_to_html(fit_table(records))]
    found = healing_tables(records)
    if found:
        images = ImageSource()
        body.append("<h2>Healing (the paper's Table 4 shape; accuracies in %)</h2>")
        for table in found:
            body.append(f"<h3>{html.escape(table['title'])}</h3>")
            body.append(markdown_to_html(table_markdown(table)))
            for row in table["rows"]:
                figures = [_figure(curve_figure(row), f"{row['method']}: accuracy vs heal epoch per setup")]
                gap = gap_figure(row)
                if gap:
                    figures.append(_figure(gap, f"{row['method']}: test accuracy after N/2 epochs minus GS"))
                body.append("<div>" + "".join(figures) + "</div>")
                twins = twin_section(row, records, images)
                if twins:
                    body += [f"<h4>Twins ({html.escape(str(row['method']))})</h4>", twins]
    methods = methods_tables(records)
    if methods:
        body.append("<h2>Methods (forget quality before and after healing)</h2>")
        for table in methods:
            body += [f"<h3>{html.escape(table['title'])}</h3>", markdown_to_html(methods_markdown(table))]
            uri = mia_figure(table)
            if uri:
                body.append(_figure(uri, "MIA AUC on the forget set per method, unlearned vs healed (BL, GS dashed)"))
    if counts.get(rk.UNLEARN):
        body.append("<h2>Adversaries and unlearning</h2>")
        uri = adversary_figure(records)
        if uri:
            body.append(_figure(uri, "unlearned test accuracy per selector and method (BL dashed)"))
        body.append(markdown_to_html(unlearning_table(records)))
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
