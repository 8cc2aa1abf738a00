"""``healing-pl report RUNS --wandb-report``: a W&B Report of the dashboard's views, built with wandb-workspaces.

The report (a ``wandb_workspaces.reports.v2.Report``) holds, per experiment: its table (markdown); per
unlearning method, a panel grid over that method's heal runs (filtered on ``cli.unlearn.class``, grouped by
``cli.twins.metric.class``) with the healed curve against ``heal/epoch`` (``healed/test/acc`` beside the
``baseline/test/acc`` and ``gold/test/acc`` references; ``healed/val/acc``), the final healed accuracy per
setup beside the gold standard's (W&B summary), and the twin grids (``twins/grid``); then the adversary
comparison and the stream curves (``stream/test/acc`` against ``stream/round``). Every panel names only keys
the runs log (:func:`panel_keys`; tests/report/test_wandb_report.py checks them against an offline run).

It is built without a server: its run sets name no entity or project of their own (they follow the report's,
from WANDB_ENTITY and WANDB_PROJECT, default ``healing-pl``), so building it asks W&B nothing. The report is
written as wandb-workspaces' own model of it (``ReportViewspec``: what ``Report.save()`` sends and W&B
stores) in JSON; :func:`load_report` reads that file back into the same ``Report``. Saving needs a W&B
server: online (``WANDB_MODE=online`` and ``wandb login``) ``--wandb-report`` saves it at once; a spec
written offline is saved later with :func:`save_report` (see README, "W&B").
"""

from __future__ import annotations

import json
import os

from healing_pl import records as rk
from healing_pl.files import write_json
from healing_pl.report.tables import healing_tables, table_markdown, unlearning_table
from healing_pl.unlearning import UNLEARNERS

#: the W&B config keys the run sets filter and group on (``cli``: the run's CLI configuration, classes by name)
METHOD, METRIC, ADVERSARY, GROUP = (
    "cli.unlearn.class",
    "cli.twins.metric.class",
    "cli.adversary.class",
    "cli.wandb.group",
)


def _where() -> tuple[str, str]:
    """The W&B entity and project (WANDB_ENTITY, WANDB_PROJECT; default: the CLI's project, healing-pl)."""
    return os.environ.get("WANDB_ENTITY") or "", os.environ.get("WANDB_PROJECT") or "healing-pl"


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _runset(wr, name: str, filters: list[str], groupby: str | None = None):
    """A run set of the report's own project (no entity or project of its own: building it asks W&B nothing)."""
    return wr.Runset(name=name, filters=" and ".join(filters), groupby=[f"config.{groupby}"] if groupby else [])


def build_report(records: list[dict], source: str | None = None):
    """The W&B Report (a ``wandb_workspaces.reports.v2.Report``), built without a server."""
    import wandb_workspaces.reports.v2 as wr

    entity, project = _where()
    heal_epoch, stream_round = rk.HEAL_EPOCH_STEP.name, rk.stream_history(rk.CURVE_ROUND).name
    blocks = [
        wr.H1(f"healing-pl report{': ' + source if source else ''}"),
        wr.P("Built by healing-pl report from the runs' results.json; the tables match the HTML dashboard."),
    ]
    for table in healing_tables(records):
        blocks += [wr.H2(table["title"]), wr.MarkdownBlock(table_markdown(table))]
        group = table["key"].get("wandb.group")
        for row in table["rows"]:
            method = UNLEARNERS[row["method"]].__name__ if row["method"] in UNLEARNERS else row["method"]
            filters = [f"Config('{METHOD}') == {_quote(method)}", "JobType == 'heal'"]
            if group:
                filters.insert(0, f"Config('{GROUP}') == {_quote(group)}")
            runs = _runset(wr, f"{row['experiment']} {row['method']}", filters, METRIC)
            by_metric = wr.Config(METRIC)
            panels = [
                wr.LinePlot(
                    title=f"{row['method']}: test accuracy vs heal epoch, with BL and GS",
                    x=heal_epoch,
                    y=[rk.HEALED_TEST_ACC.name, rk.BASELINE_TEST_ACC.name, rk.GOLD_TEST_ACC.name],
                    groupby=by_metric,
                    title_x="heal epoch (0: unlearned start)",
                    title_y="test accuracy",
                ),
                wr.LinePlot(
                    title=f"{row['method']}: validation accuracy vs heal epoch",
                    x=heal_epoch,
                    y=[rk.HEALED_VAL_ACC_POINT.name],
                    groupby=by_metric,
                    title_x="heal epoch (0: unlearned start)",
                    title_y="validation accuracy",
                ),
                wr.BarPlot(
                    title=f"{row['method']}: healed test accuracy per setup (compare with GS)",
                    metrics=[wr.SummaryMetric(rk.HEALED_TEST_ACC.name), wr.SummaryMetric(rk.GOLD_TEST_ACC.name)],
                    groupby=by_metric,
                    groupby_rangefunc="stderr" if row["seeds"] > 1 else None,
                ),
                wr.MediaBrowser(
                    title=f"{row['method']}: forget samples beside their twins", media_keys=[rk.TWINS_GRID.name]
                ),
            ]
            blocks.append(wr.PanelGrid(runsets=[runs], panels=panels))
    if any(r.get(rk.PHASE) == rk.UNLEARN for r in records):
        blocks += [wr.H2("Adversaries and unlearning"), wr.MarkdownBlock(unlearning_table(records))]
        runs = _runset(wr, "unlearn runs", ["JobType == 'unlearn'"], ADVERSARY)
        panels = [
            wr.BarPlot(
                title="unlearned test accuracy per selector and method",
                metrics=[wr.SummaryMetric(rk.UNLEARNED_TEST_ACC.name), wr.SummaryMetric(rk.BASELINE_TEST_ACC.name)],
                groupby=wr.Config(ADVERSARY),
            )
        ]
        blocks.append(wr.PanelGrid(runsets=[runs], panels=panels))
    if any(r.get(rk.PHASE) == rk.STREAM for r in records):
        blocks.append(wr.H2("Streams"))
        runs = _runset(wr, "stream runs", ["JobType == 'stream'"])
        test_acc = rk.stream_history(rk.CURVE_TEST_ACC).name
        panels = [wr.LinePlot(title="test accuracy per round", x=stream_round, y=[test_acc], title_x="round")]
        blocks.append(wr.PanelGrid(runsets=[runs], panels=panels))
    return wr.Report(
        project=project,
        entity=entity,
        title="healing-pl: healing strategies compared",
        description="Per experiment: healed accuracy per setup with BL and GS, Best−GS, twins; adversaries; streams.",
        blocks=blocks,
    )


def panel_keys(report) -> list[tuple[str, str]]:
    """Every W&B key the report's panels plot, as ``(where, key)``: ``history`` (a line plot's x and y),
    ``summary`` (a bar plot's summary metrics) or ``media`` (a media browser's keys)."""
    import wandb_workspaces.reports.v2 as wr

    def name(metric) -> str:
        return metric if isinstance(metric, str) else metric.name

    keys = []
    for block in report.blocks:
        for panel in getattr(block, "panels", None) or []:
            if isinstance(panel, wr.LinePlot):
                keys += [("history", name(m)) for m in [panel.x, *panel.y]]
            elif isinstance(panel, wr.BarPlot):
                keys += [("summary", name(m)) for m in panel.metrics]
            elif isinstance(panel, wr.MediaBrowser):
                keys += [("media", k) for k in panel.media_keys]
            else:
                raise TypeError(f"panel_keys does not know a {type(panel).__name__} panel.")
    return keys


def report_model(report) -> dict:
    """The report as wandb-workspaces' model of it (``ReportViewspec``), as plain JSON: what ``Report.save()``
    sends to W&B (its ``spec``) with the title, description, entity and project beside it."""
    return report._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)


def load_report(path: str):
    """The ``Report`` in a file :func:`publish` wrote (wandb-workspaces' own model, read back by its own
    loader); ValueError with one sentence when the file is not one."""
    import wandb_workspaces.reports.v2 as wr
    from pydantic import ValidationError
    from wandb_workspaces.reports.v2 import internal

    try:
        with open(path) as f:
            model = internal.ReportViewspec.model_validate(json.load(f))
        return wr.Report._from_model(model)
    except (OSError, ValueError, ValidationError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"'{path}' is not a W&B Report spec written by healing-pl report ({reason}).") from None


def save_report(path: str, entity: str | None = None, project: str | None = None) -> str:
    """Save the report in ``path`` to W&B (a server and a login needed: ``wandb login``); return its URL.
    ``entity`` / ``project`` replace the ones it was built with (an offline build knows no entity: W&B's
    default entity of the login is used then)."""
    report = load_report(path)
    if project:
        report.project = project
    if entity or not report.entity:
        import wandb

        report.entity = entity or wandb.Api().default_entity
    report.save()
    return report.url


def publish(records: list[dict], path: str, source: str | None = None) -> str:
    """Build the report, write its model to ``path`` and save it when W&B is online; return one sentence."""
    report = build_report(records, source)
    write_json(path, report_model(report), indent=1)
    panels = sum(len(b.panels) for b in report.blocks if hasattr(b, "panels"))
    built = f"W&B Report built ({len(report.blocks)} blocks, {panels} panels)"
    if os.environ.get("WANDB_MODE", "offline") in ("offline", "disabled", "dryrun"):
        return (
            f"{built} but not saved: saving needs a W&B server (WANDB_MODE=online and a login); its spec is in "
            f"{path} (save it later with healing_pl.report.wandb_report.save_report)."
        )
    try:
        url = save_report(path)
    except Exception as err:  # no login, no network: the spec on disk is the report
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"{built} but not saved ({reason}); its spec is in {path}."
    return f"{built} and saved: {url}; its spec is in {path}."
