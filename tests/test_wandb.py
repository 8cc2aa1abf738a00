"""What a fit and a heal on digits leave in their offline W&B runs, read back from the run folders: the healed
curve from epoch 0 with BL/GS references, the twins Table and image grid, the forget-set Table, the model and
results artifacts, the lineage declaration, and a summary of final scalars only."""

import base64
import glob
import hashlib
import json
import os

import pytest
from PIL import Image

from healing_pl import records as rk
from healing_pl.data.datasets import build_pool
from healing_pl.main import main
from healing_pl.phases.record import summary_scalars
from healing_pl.tracking import GRID_COLUMNS, artifact_name, grid_rows, log_grid_table, read_offline_run

FAST = ["--trainer.enable_progress_bar=false", "--data.batch_size=128"]


def _offline(run_dir) -> str:
    (folder,) = glob.glob(os.path.join(str(run_dir), "wandb", "offline-run-*"))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, configs_dir):
    root = tmp_path_factory.mktemp("wandb")
    cwd = os.getcwd()
    os.chdir(root)  # runs/cache (the gold standard) lands here
    try:
        fit, heal = root / "fit", root / "heal"
        assert (
            main(["fit", "--config", f"{configs_dir}/digits.yaml", f"--run_dir={fit}", "--trainer.max_epochs=4", *FAST])
            == 0
        )
        ckpt = fit / "checkpoints" / "last.ckpt"
        args = ["heal", "--config", f"{configs_dir}/digits.yaml", f"--ckpt_path={ckpt}", f"--run_dir={heal}"]
        args += ["--heal.epochs=2", "--adversary.budget=20", "--twins.metric=RawL2", *FAST]
        assert main(args) == 0
    finally:
        os.chdir(cwd)
    return {
        "fit": json.loads((fit / "results.json").read_text()),
        "heal": json.loads((heal / "results.json").read_text()),
        "fit_wandb": _offline(fit),
        "heal_wandb": _offline(heal),
        "ckpt": str(ckpt),
        "heal_dir": heal,
    }


def test_fit_logs_its_checkpoint_as_the_model_artifact(runs):
    w = read_offline_run(runs["fit_wandb"])
    sha = hashlib.sha256(open(runs["ckpt"], "rb").read()).hexdigest()
    (model,) = [a for a in w["artifacts"] if a["type"] == "model"]
    assert model["name"] == artifact_name("digits", "small_cnn", sha) == runs["fit"]["checkpoint/artifact"]
    assert model["metadata"]["sha256"] == sha and list(model["files"]) == ["model.ckpt"]
    (results,) = [a for a in w["artifacts"] if a["type"] == "results"]
    assert list(results["files"]) == ["results.json"]  # a fit keeps no ledger


def test_heal_run_declares_the_baseline_artifact_it_uses(runs):
    w = read_offline_run(runs["heal_wandb"])
    # offline, W&B refuses use_artifact: the run names the fit's artifact in its config
    assert w["config"]["lineage/baseline_artifact"] == runs["fit"]["checkpoint/artifact"] + ":latest"
    assert w["summary"]["lineage/declared"] == "config"
    fit_model = [a for a in read_offline_run(runs["fit_wandb"])["artifacts"] if a["type"] == "model"][0]
    assert fit_model["metadata"]["sha256"] == runs["heal"]["baseline/sha256"]  # the same checkpoint
    (results,) = [a for a in w["artifacts"] if a["type"] == "results"]
    assert sorted(results["files"]) == ["ledger.head", "ledger.jsonl", "results.json"]
    md5 = hashlib.md5((runs["heal_dir"] / "ledger.jsonl").read_bytes()).digest()
    assert results["files"]["ledger.jsonl"] == base64.b64encode(md5).decode()  # the ledger as written


def test_healed_curve_from_epoch_zero_with_references(runs):
    r = runs["heal"]
    w = read_offline_run(runs["heal_wandb"])
    assert r["healed/test/acc_epoch_0"] == r["unlearned/test/acc"]
    assert r["healed/test/acc_epoch_2"] == r["healed/test/acc"]
    points = [row for row in w["history"] if "heal/epoch" in row]
    assert [p["heal/epoch"] for p in points] == [0, 1, 2]
    for p in points:
        e = p["heal/epoch"]
        assert p["heal/test_acc"] == pytest.approx(r[f"healed/test/acc_epoch_{e}"])
        assert p["heal/val_acc"] == pytest.approx(r[f"healed/val/acc_epoch_{e}"])
        assert p["reference/baseline"] == pytest.approx(r["baseline/test/acc"])
        assert p["reference/gold"] == pytest.approx(r["gold/test/acc"])
    for key in ("heal/test_acc", "heal/val_acc", "reference/baseline", "reference/gold"):
        assert w["metrics"][key] == "heal/epoch"
    # the whole curve as one line-series chart: 4 lines (test, validation, BL, GS) x 3 epochs
    (chart,) = [row for row in w["history"] if "heal/curve_table/path" in row]
    table = json.load(open(os.path.join(runs["heal_wandb"], "files", chart["heal/curve_table/path"])))
    assert table["columns"] == ["step", "lineKey", "lineVal"] and len(table["data"]) == 12
    assert {row[1] for row in table["data"]} == {"test", "validation", "baseline (BL)", "gold standard (GS)"}


def test_summary_holds_final_scalars_only(runs):
    r = runs["heal"]
    w = read_offline_run(runs["heal_wandb"])
    finals = summary_scalars(r)
    assert finals and not any("_epoch_" in k for k in finals)
    for key, value in finals.items():
        assert w["summary"][key] == pytest.approx(value)
    logged = {k for row in w["history"] for k in row}
    assert not logged & set(finals), f"final scalars also logged as history: {sorted(logged & set(finals))}"
    assert not any(k in w["summary"] for k in ("heal/test_acc", "reference/gold", "healed/test/acc_epoch_1"))


def test_twins_table_and_image_grid(runs):
    r = runs["heal"]
    folder = runs["heal_wandb"]
    w = read_offline_run(folder)
    pool = build_pool("digits")
    (row,) = [h for h in w["history"] if "twins/path" in h]
    table = json.load(open(os.path.join(folder, "files", row["twins/path"])))
    assert table["columns"] == [
        "forget_id",
        "forget_image",
        "forget_class",
        "twin_id",
        "twin_image",
        "twin_class",
        "score",
    ]
    pairs = r["twins/pairs"]
    assert len(table["data"]) == len(pairs) == 20
    for cells, pair in zip(table["data"], pairs):
        assert cells[0] == pair["request_id"] and cells[3] == pair["twin_id"]
        assert cells[2] == str(int(pool.targets[pair["request_id"]]))
        assert cells[5] == str(int(pool.targets[pair["twin_id"]]))
        assert cells[6] == pytest.approx(pair["score"])
    # the table's images travel in its run_table artifact: one PNG per distinct sample image
    (twins,) = [a for a in w["artifacts"] if a["name"].endswith("-twins")]
    pngs = [p for p in twins["files"] if p.endswith(".png")]
    distinct = {p["request_id"] for p in pairs} | {p["twin_id"] for p in pairs}
    assert 20 < len(pngs) <= len(distinct)
    # the grid: 16 pairs, 4 a row, 64x64 images (8x8 digits enlarged), on disk under files/media
    assert any(m.startswith("images/twins/grid_") for m in w["media"])
    grid = Image.open(os.path.join(folder, "files", row["twins/grid/path"]))
    assert grid.size == (row["twins/grid/width"], row["twins/grid/height"]) == (4 + 4 * (2 * 64 + 16), 4 + 4 * 68)


def test_forget_ids_table(runs):
    folder = runs["heal_wandb"]
    w = read_offline_run(folder)
    (row,) = [h for h in w["history"] if "forget/ids/path" in h]
    table = json.load(open(os.path.join(folder, "files", row["forget/ids/path"])))
    assert table["columns"] == ["forget_id"]
    assert [c[0] for c in table["data"]] == runs["heal"]["forget/ids"]


def test_grid_summary_table(runs, tmp_path):
    heal = runs["heal"]
    other = {**heal, rk.HEAL_SETUP.name: "R"}  # a second setup of the same grid
    for e in range(3):
        other[rk.healed_test_acc(e).name] = 0.5 + e / 10
    rows = grid_rows([heal, other, runs["fit"]])  # the fit record has no curve: no rows
    assert [(r["setup"], r["epoch"]) for r in rows] == [("R", 0), ("R", 1), ("R", 2)] + [
        (heal["heal/setup"], e) for e in range(3)
    ]
    folder = log_grid_table("grid-test", [heal, other], project="healing-pl-test", run_dir=str(tmp_path))
    w = read_offline_run(folder)
    assert w["config"]["grid"] == "grid-test" and w["config"]["runs"] == 2
    (row,) = [h for h in w["history"] if "grid/path" in h]
    table = json.load(open(os.path.join(folder, "files", row["grid/path"])))
    assert table["columns"] == list(GRID_COLUMNS)
    data = [dict(zip(GRID_COLUMNS, d)) for d in table["data"]]
    assert len(data) == 6
    assert data[1]["test_acc"] == pytest.approx(0.6) and data[1]["method"] == heal["unlearn/method"]
    assert data[3]["val_acc"] == pytest.approx(heal["healed/val/acc_epoch_0"])


def test_the_wandb_config_names_the_chosen_classes_where_the_report_filters(runs):
    # the W&B Report filters on Config('cli.unlearn.class') and groups by cli.twins.metric.class
    cli = read_offline_run(runs["heal_wandb"])["config"]["cli"]
    assert cli["unlearn"]["class"] == "Fisher" and cli["unlearn"]["alpha"] == runs["heal"]["unlearn/alpha"]
    assert cli["twins"]["metric"] == {"class": "RawL2"}
    assert cli["adversary"]["class"] == "RandomSelector"
