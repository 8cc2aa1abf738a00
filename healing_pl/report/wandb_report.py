"""``healing-pl report RUNS --wandb-report``: a W&B Report of the dashboard's views (wandb-workspaces).

The report holds, per experiment: its table (markdown), the healed curve per setup against the heal epoch
(``heal/test_acc`` with the ``reference/baseline`` and ``reference/gold`` lines, grouped by twin metric),
Best−GS as a bar chart of the final healed accuracy per setup, and the twin grids (``twins/grid``); then the
adversary comparison (unlearned accuracy per selector and method) and the stream curves. It is built
offline; saving it needs a W&B server (``WANDB_MODE=online`` and a login), so the spec is also written as
JSON, which a test reads back.
"""

from __future__ import annotations

import dataclasses
import os

from healing_pl import records as rk
from healing_pl.files import write_json
from healing_pl.report.tables import healing_tables, table_markdown, unlearning_table
from healing_pl.unlearning import UNLEARNERS


def _runset(wr, entity: str, project: str, name: str, filters: str, groupby: list[str]):
    return wr.Runset(entity=entity, project=project, name=name, filters=filters, groupby=groupby)


def _where() -> tuple[str, str]:
    """The W&B entity and project (WANDB_ENTITY, WANDB_PROJECT; default: the CLI's project, healing-pl)."""
    return os.environ.get("WANDB_ENTITY") or "", os.environ.get("WANDB_PROJECT") or "healing-pl"


def build_report(records: list[dict], source: str | None = None):
    """The W&B Report (a ``wandb_workspaces.reports.v2.Report``), built without a server."""
    import wandb_workspaces.reports.v2 as wr

    entity, project = _where()
    blocks = [
        wr.H1(f"healing-pl report{': ' + source if source else ''}"),
        wr.P("Built by healing-pl report from the runs' results.json; the tables match the HTML dashboard."),
    ]
    for table in healing_tables(records):
        blocks += [wr.H2(table["title"]), wr.MarkdownBlock(table_markdown(table))]
        group = table["key"].get("wandb.group")
        for row in table["rows"]:
            method = UNLEARNERS[row["method"]].__name__ if row["method"] in UNLEARNERS else row["method"]
            filters = f"Config('cli.unlearn.class') == '{method}'"
            if group:
                filters = f"Config('cli.wandb.group') == '{group}' and " + filters
            runs = _runset(
                wr, entity, project, f"{row['experiment']} {row['method']}", filters, ["cli.twins.metric.class"]
            )
            panels = [
                wr.LinePlot(
                    title=f"{row['method']}: accuracy vs heal epoch (BL, GS dashed)",
                    x=rk.HEAL_EPOCH_STEP.name,
                    y=[k.name for k in (rk.HEAL_TEST_ACC_POINT, rk.REFERENCE_BASELINE, rk.REFERENCE_GOLD)],
                    groupby="cli.twins.metric.class",
                    title_x="heal epoch (0: unlearned start)",
                    title_y="test accuracy",
                    line_marks={rk.REFERENCE_BASELINE.name: "dashed", rk.REFERENCE_GOLD.name: "dashed"},
                ),
                wr.BarPlot(
                    title=f"{row['method']}: healed test accuracy per setup (compare with GS)",
                    metrics=[wr.SummaryMetric(rk.HEALED_TEST_ACC.name), wr.SummaryMetric(rk.GOLD_TEST_ACC.name)],
                    groupby="cli.twins.metric.class",
                    groupby_rangefunc="stderr" if row["seeds"] > 1 else None,
                ),
                wr.MediaBrowser(
                    title=f"{row['method']}: forget samples beside their twins", media_keys=[rk.TWINS_GRID.name]
                ),
            ]
            blocks.append(wr.PanelGrid(runsets=[runs], panels=panels))
    if any(r.get(rk.PHASE) == rk.UNLEARN for r in records):
        blocks += [wr.H2("Adversaries and unlearning"), wr.MarkdownBlock(unlearning_table(records))]
        runs = _runset(wr, entity, project, "unlearn runs", "JobType == 'unlearn'", ["cli.adversary.class"])
        panels = [
            wr.BarPlot(
                title="unlearned test accuracy per selector and method",
                metrics=[wr.SummaryMetric(rk.UNLEARNED_TEST_ACC.name), wr.SummaryMetric(rk.BASELINE_TEST_ACC.name)],
                groupby="cli.adversary.class",
            )
        ]
        blocks.append(wr.PanelGrid(runsets=[runs], panels=panels))
    if any(r.get(rk.PHASE) == rk.STREAM for r in records):
        blocks.append(wr.H2("Streams"))
        runs = _runset(wr, entity, project, "stream runs", "JobType == 'stream'", [])
        # a stream logs each round's metrics as stream/<metric> at Lightning's step = the round's index
        test_acc = rk.stream_history(rk.CURVE_TEST_ACC).name
        panels = [wr.LinePlot(title="test accuracy per round", x=rk.WANDB_STEP.name, y=[test_acc])]
        blocks.append(wr.PanelGrid(runsets=[runs], panels=panels))
    return wr.Report(
        project=project,
        entity=entity,
        title="healing-pl: healing strategies compared",
        description="Per experiment: healed accuracy per setup with BL and GS, Best−GS, twins; adversaries; streams.",
        blocks=blocks,
    )


def spec(value):
    """A report object as plain JSON: every block and panel named by its class, private fields left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {"type": type(value).__name__}
        for f in dataclasses.fields(value):
            if not f.name.startswith("_") and f.name != "layout":
                out[f.name] = spec(getattr(value, f.name))
        return out
    if isinstance(value, dict):
        return {str(k): spec(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [spec(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def publish(records: list[dict], path: str, source: str | None = None) -> str:
    """Build the report, write its spec to ``path`` and save it when W&B is online; return one sentence."""
    report = build_report(records, source)
    write_json(path, spec(report), indent=1)
    panels = sum(len(b.panels) for b in report.blocks if hasattr(b, "panels"))
    built = f"W&B Report built ({len(report.blocks)} blocks, {panels} panels)"
    if os.environ.get("WANDB_MODE", "offline") in ("offline", "disabled", "dryrun"):
        return (
            f"{built} but not saved: saving needs a W&B server (WANDB_MODE=online and a login); its spec is in {path}."
        )
    try:
        report.save()
    except Exception as err:  # no login, no network: the spec on disk is the report
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"{built} but not saved ({reason}); its spec is in {path}."
    return f"{built} and saved: {report.url}; its spec is in {path}."
