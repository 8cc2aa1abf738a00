"""The W&B Report (``report --wandb-report``) is wandb-workspaces' own Report: it is written as that library's
model of it and loads back into the same Report, with run sets on the CLI config's keys and panels on the keys
the runs log (tests/test_wandb.py checks those against an offline run)."""

import json

import pytest
import yaml

from healing_pl import records as rk
from healing_pl.main import main
from healing_pl.report.wandb_report import build_report, load_report, panel_keys, report_model
from tests.report.conftest import CONFIG, stream_record, unlearn_record


@pytest.fixture
def runs(tmp_path, make_record):
    """Heal runs of two setups over two seeds, an unlearn run and a stream run, as run folders."""
    records = []
    pairs = [{"request_id": q, "twin_id": q + 1, "score": 0.5} for q in range(0, 20, 2)]
    for seed in (0, 1):
        for i, metric in enumerate(("none", "raw_l2")):
            twins = pairs if metric != "none" else ()
            records.append(make_record(metric, [0.85 + i / 100 + seed / 200, 0.9 - i / 100], seed=seed, pairs=twins))
    records.append(unlearn_record(0, 0.6, bl=0.94, run="u"))
    records.append(stream_record([0.94, 0.9, 0.92], run="s"))
    for r in records:
        folder = tmp_path / "runs" / r[rk.RUN_DIR].replace("/", "_")
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(r))
        (folder / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return tmp_path / "runs", records


def test_the_report_round_trips_through_wandb_workspaces(runs, tmp_path, capsys, monkeypatch):
    import wandb_workspaces.reports.v2 as wr

    folder, records = runs
    monkeypatch.setenv("WANDB_MODE", "offline")
    path = tmp_path / "spec" / "report.json"
    assert main(["report", str(folder), "--wandb-report", str(path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("W&B Report built (10 blocks, 6 panels) but not saved: saving needs a W&B server")
    assert str(path) in last
    written = json.loads(path.read_text())
    loaded = load_report(str(path))
    assert isinstance(loaded, wr.Report)
    assert report_model(loaded) == written  # build -> dump -> load -> dump: the same model, ids and all
    assert load_report(str(path)) == loaded
    built = build_report(records)
    assert [type(b) for b in loaded.blocks] == [type(b) for b in built.blocks]
    assert [type(b).__name__ for b in loaded.blocks] == [
        *("H1", "P", "H2", "MarkdownBlock", "PanelGrid"),
        *("H2", "MarkdownBlock", "PanelGrid", "H2", "PanelGrid"),
    ]
    assert panel_keys(loaded) == panel_keys(built)
    assert (loaded.title, loaded.project) == (built.title, "healing-pl")
    heal = loaded.blocks[4]
    assert [type(p).__name__ for p in heal.panels] == ["LinePlot", "LinePlot", "BarPlot", "MediaBrowser"]
    assert "| digits (small_cnn) | fisher | 10 × class | 2 |" in loaded.blocks[3].text
    # the default spec path: the first run folder
    assert main(["report", str(folder), "--wandb-report"]) == 0
    assert load_report(str(folder / "wandb_report.json")).title == built.title


def test_run_sets_filter_and_group_on_the_cli_config(runs, tmp_path):
    _, records = runs
    spec = report_model(build_report(records))
    grids = [b["metadata"] for b in spec["spec"]["blocks"] if b["type"] == "panel-grid"]
    heal = grids[0]["runSets"][0]
    filters = {(f["key"]["section"], f["key"]["name"]): f["value"] for f in heal["filters"]["filters"]}
    assert filters == {
        ("config", "cli.wandb.group"): "g",
        ("config", "cli.unlearn.class"): "Fisher",
        ("run", "jobType"): "heal",
    }
    # grouped by the twin metric's class, a key of the nested config ("cli" holds a dict: cli.value.<path>)
    assert heal["grouping"] == [{"section": "config", "name": "cli.value.twins.metric.class"}]
    curve = grids[0]["panelBankSectionConfig"]["panels"][0]["config"]
    assert curve["xAxis"] == "heal/epoch" and curve["metrics"] == [
        "healed/test/acc",
        "baseline/test/acc",
        "gold/test/acc",
    ]
    assert curve["groupBy"] == "cli.value.twins.metric.class"
    stream = grids[2]["panelBankSectionConfig"]["panels"][0]["config"]
    assert stream["xAxis"] == "stream/round" and stream["metrics"] == ["stream/test/acc"]


def test_a_file_that_is_not_a_report_spec_stops_with_one_sentence(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"spec": {"blocks": [{"type": "panel-grid", "metadata": "oops"}]}}))
    with pytest.raises(ValueError, match=r"^'.*bad.json' is not a W&B Report spec written by healing-pl report \("):
        load_report(str(bad))
    with pytest.raises(ValueError, match="is not a W&B Report spec"):
        load_report(str(tmp_path / "missing.json"))
