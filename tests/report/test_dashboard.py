"""The HTML dashboard, rendered in a real headless Chromium, and the W&B Report built offline."""

import json
import os

import pytest
import yaml

from healing_pl import records as rk
from healing_pl.main import main
from tests.report.browser import find_browser, render
from tests.report.conftest import CONFIG, stream_record, unlearn_record


@pytest.fixture
def runs(tmp_path, make_record):
    """Heal runs over two seeds with twins of digits samples, an unlearn run and a stream run, as run folders."""
    records = []
    pairs = [{"request_id": q, "twin_id": q + 1, "score": 0.5} for q in range(0, 20, 2)]
    for seed in (0, 1):
        for i, metric in enumerate(("none", "raw_l2", "feat_cosine", "random")):
            twins = pairs if metric != "none" else ()
            records.append(make_record(metric, [0.85 + i / 100 + seed / 200, 0.9 - i / 100], seed=seed, pairs=twins))
    records.append(unlearn_record(0, 0.6, bl=0.94, run="u"))
    records.append(stream_record([0.94, 0.9, 0.92], run="s"))
    for r in records:
        folder = tmp_path / "runs" / r[rk.RUN_DIR].replace("/", "_")
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(r))
        (folder / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return tmp_path / "runs"


def test_dashboard_renders_in_headless_chromium(runs, tmp_path, capsys):
    out = tmp_path / "dashboard.html"
    assert main(["report", str(runs), "--output", str(out)]) == 0
    page = out.read_text()
    assert page.count("<table>") == 6 and "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count("<img ") == 2 + 3 + 2  # curve and Best−GS, three twin grids, adversaries and stream
    binary = find_browser()
    if binary is None:
        pytest.skip("no headless Chromium: apt-get install chromium-headless-shell (CI installs it).")
    shown = render(binary, str(out))
    assert shown["errors"] == [] and shown["title"] == "healing-pl report"
    assert len(shown["images"]) == 7 and all(w > 0 and h > 0 for _, w, h in shown["images"])
    assert shown["tables"] == 6  # every table of the page is in the rendered document
    shot = tmp_path / "dashboard.png"
    shot.write_bytes(shown["screenshot"])
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_twin_images_are_skipped_with_a_reason_when_the_dataset_cannot_be_read(runs, tmp_path):
    for folder in runs.iterdir():
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        cfg["data"]["dataset"] = "afhq"
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "d.html"
    assert main(["report", str(runs), "--output", str(out)]) == 0
    page = out.read_text()
    assert page.count("twin images skipped (dataset &#x27;afhq&#x27; not found at") == 3
    assert page.count("<img ") == 4


def test_wandb_report_is_built_offline_with_every_view(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    spec_path = tmp_path / "spec" / "report.json"
    assert main(["report", str(runs), "--wandb-report", str(spec_path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (
        "W&B Report built (10 blocks, 5 panels) but not saved: saving needs a W&B server "
        f"(WANDB_MODE=online and a login); its spec is in {spec_path}."
    )
    spec = json.loads(spec_path.read_text())
    assert spec["type"] == "Report"
    kinds = [b["type"] for b in spec["blocks"]]
    assert kinds == [
        "H1",
        "P",
        "H2",
        "MarkdownBlock",
        "PanelGrid",
        "H2",
        "MarkdownBlock",
        "PanelGrid",
        "H2",
        "PanelGrid",
    ]
    panels = [p["type"] for b in spec["blocks"] if b["type"] == "PanelGrid" for p in b["panels"]]
    assert panels == ["LinePlot", "BarPlot", "MediaBrowser", "BarPlot", "LinePlot"]
    heal = spec["blocks"][4]
    assert heal["panels"][0]["y"] == ["heal/test_acc", "reference/baseline", "reference/gold"]
    assert (
        heal["runsets"][0]["filters"] == "Config('cli.wandb.group') == 'g' and Config('cli.unlearn.class') == 'Fisher'"
    )
    assert "| digits (small_cnn) | fisher | 10 × class | 2 |" in spec["blocks"][3]["text"]
    # the default spec path: the first run folder
    assert main(["report", str(runs), "--wandb-report"]) == 0
    assert os.path.isfile(runs / "wandb_report.json")


def test_run_records_its_experiment_identity(tmp_path, configs_dir):
    quiet = ["--trainer.enable_progress_bar=false", "--wandb.enabled=false"]
    fit = tmp_path / "fit"
    args = ["--config", f"{configs_dir}/digits.yaml", *quiet]
    assert main(["fit", *args, f"--run_dir={fit}", "--trainer.max_epochs=1"]) == 0
    heal = ["heal", *args, f"--ckpt_path={fit}/checkpoints/last.ckpt", "--adversary=ClassSelector"]
    heal += ["--adversary.target_class=3", "--adversary.budget=5", "--unlearn=Fisher", "--unlearn.alpha=1e-7"]
    heal += ["--heal.epochs=1", "--heal.gold=false", f"--unlearn.cache_dir={tmp_path / 'cache'}", "--wandb.group=tiny"]
    assert main([*heal, f"--run_dir={tmp_path / 'a'}", "--twins.metric=null"]) == 0
    assert main([*heal, f"--run_dir={tmp_path / 'b'}", "--twins.metric=RawL2", "--seed_everything=4"]) == 0
    a, b = (json.loads((tmp_path / x / "results.json").read_text()) for x in "ab")
    assert a[rk.EXPERIMENT_ID] == b[rk.EXPERIMENT_ID] and len(a[rk.EXPERIMENT_ID]) == 12
    assert a[rk.EXPERIMENT_SEEDS]["seed_everything"] == 0 and b[rk.EXPERIMENT_SEEDS]["seed_everything"] == 4
    assert a[rk.EXPERIMENT]["baseline"]["sha256"] == a[rk.BASELINE_SHA256]
    assert a[rk.EXPERIMENT]["config"]["wandb"] == {"group": "tiny"} and "run_dir" not in a[rk.EXPERIMENT]["config"]
    assert json.loads((tmp_path / "fit" / "results.json").read_text())[rk.EXPERIMENT]["baseline"] is None
