"""What a fit and a heal on digits leave in their offline W&B runs, read back from the run folders: names with
the seed and tags a researcher filters on, one nested config (``run`` and ``cli``), the healed curve from epoch 0
with BL/GS references on one x-axis (``heal/epoch``), the twins Table and image grid, the forget-set Table, the
model and results artifacts, the lineage declaration, a summary of final figures, the grid's summary run (logged
once), and the W&B Report's panels, each naming a key the runs log."""

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
        args += ["--seed_everything=3", "--wandb.tags=[demo]"]  # the run's seed: 3 (the data's split stays 0)
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
        assert p["healed/test/acc"] == pytest.approx(r[f"healed/test/acc_epoch_{e}"])
        assert p["healed/val/acc"] == pytest.approx(r[f"healed/val/acc_epoch_{e}"])
        assert p["baseline/test/acc"] == pytest.approx(r["baseline/test/acc"])
        assert p["gold/test/acc"] == pytest.approx(r["gold/test/acc"])
    for key in ("healed/test/acc", "healed/val/acc", "baseline/test/acc", "gold/test/acc"):
        assert w["metrics"][key] == "heal/epoch"
    # the whole curve as one line-series chart: 4 lines (test, validation, BL, GS) x 3 epochs
    (chart,) = [row for row in w["history"] if "heal/curve_table/path" in row]
    table = json.load(open(os.path.join(runs["heal_wandb"], "files", chart["heal/curve_table/path"])))
    assert table["columns"] == ["step", "lineKey", "lineVal"] and len(table["data"]) == 12
    assert {row[1] for row in table["data"]} == {"test", "validation", "baseline (BL)", "gold standard (GS)"}


def test_run_name_tags_and_one_nested_config(runs):
    w = read_offline_run(runs["heal_wandb"])
    assert w["run"]["name"] == "heal-s3" and w["run"]["job_type"] == "heal"
    assert w["run"]["tags"] == ["demo", "method:Fisher", "adversary:RandomSelector", "metric:RawL2", "seed:3"]
    assert w["config"]["run"] == {"subcommand": "heal", "seed": 3, "folder": "heal"}
    assert w["config"]["cli"]["seed_everything"] == 3 and w["config"]["cli"]["model"]["lr"] > 0
    # Lightning's hyperparameters (model and datamodule) stay out: no flat lr, seed, val, test
    assert not {"lr", "seed", "val", "test", "backbone", "dataset", "batch_size"} & set(w["config"])
    own = {k for k in w["config"] if not k.startswith("_wandb")}
    assert own == {"run", "cli", "lineage/baseline_artifact"}
    fit = read_offline_run(runs["fit_wandb"])
    assert fit["run"]["name"] == "fit-s0" and fit["run"]["tags"] == ["seed:0"]  # a fit has no method
    assert {k for k in fit["config"] if not k.startswith("_wandb")} == {"run", "cli"}


def test_one_axis_per_curve_and_validation_logged_once(runs):
    w = read_offline_run(runs["heal_wandb"])
    rows = w["history"]
    for key in ("healed/test/acc", "healed/val/acc", "baseline/test/acc", "gold/test/acc"):
        logged = [row for row in rows if key in row]
        assert len(logged) == 3 and all("heal/epoch" in row for row in logged), key
    # Lightning's validation loop logs nothing during a heal: one validation series, on heal/epoch
    val = {k for row in rows for k in row if "val" in k.split("/")}
    assert val == {"healed/val/acc"}, val
    # the training curve keeps Lightning's step; it never shares a row with the heal axis
    assert all("heal/epoch" not in row for row in rows if "healed/train/acc" in row)
    assert [row["healed/train/acc"] for row in rows if "healed/train/acc" in row]


def test_summary_holds_the_final_figures(runs):
    r = runs["heal"]
    w = read_offline_run(runs["heal_wandb"])
    finals = summary_scalars(r)
    assert finals and not any("_epoch_" in k for k in finals)
    for key, value in finals.items():
        assert w["summary"][key] == pytest.approx(value)
    # a curve key is the record's name of its figure: its history is the curve, its summary the final figure
    logged = {k for row in w["history"] for k in row}
    assert logged & set(finals) == {"healed/test/acc", "baseline/test/acc", "gold/test/acc"}
    assert w["summary"]["healed/test/acc"] == pytest.approx(r["healed/test/acc_epoch_2"])
    assert not any(k in w["summary"] for k in ("healed/val/acc", "heal/epoch", "healed/test/acc_epoch_1"))


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
    assert {k: v for k, v in w["config"].items() if k != "_wandb"} == {"grid": "grid-test", "runs": 2}
    assert w["run"]["name"] == "grid-test-summary" and w["run"]["job_type"] == "summary"
    (row,) = [h for h in w["history"] if "grid/path" in h]
    table = json.load(open(os.path.join(folder, "files", row["grid/path"])))
    assert table["columns"] == list(GRID_COLUMNS)
    data = [dict(zip(GRID_COLUMNS, d)) for d in table["data"]]
    assert len(data) == 6
    assert data[1]["test_acc"] == pytest.approx(0.6) and data[1]["method"] == heal["unlearn/method"]
    assert data[3]["val_acc"] == pytest.approx(heal["healed/val/acc_epoch_0"])


def test_a_finished_grid_rerun_logs_nothing_new(runs, tmp_path):
    heal = runs["heal"]
    summaries = lambda: glob.glob(os.path.join(str(tmp_path), "wandb", "offline-run-*"))  # noqa: E731
    first = log_grid_table("grid-again", [heal], project="healing-pl-test", run_dir=str(tmp_path))
    assert log_grid_table("grid-again", [heal], project="healing-pl-test", run_dir=str(tmp_path)) == first
    assert summaries() == [first]
    more = {**heal, rk.HEAL_SETUP.name: "R"}  # one more finished run: a new summary of the new rows
    second = log_grid_table("grid-again", [heal, more], project="healing-pl-test", run_dir=str(tmp_path))
    assert second != first and sorted(summaries()) == sorted([first, second])


def _logged(w: dict) -> dict[str, set[str]]:
    """What an offline run logged: history keys, summary keys and media keys (an image's or a table's name)."""
    history = {k for row in w["history"] for k in row}
    media = {k[: -len("/_type")] for k in history if k.endswith("/_type")}
    return {
        "history": history - {k for k in history if any(k.startswith(m + "/") for m in media)},
        "summary": set(w["summary"]),
        "media": media,
    }


def test_every_report_panel_names_a_key_the_heal_run_logs(runs):
    from healing_pl.report.wandb_report import build_report, panel_keys

    logged = _logged(read_offline_run(runs["heal_wandb"]))
    keys = panel_keys(build_report([runs["heal"]]))
    assert {where for where, _ in keys} == {"history", "summary", "media"}
    missing = [(where, key) for where, key in keys if key not in logged[where]]
    assert not missing, missing


def test_the_wandb_config_names_the_chosen_classes_where_the_report_filters(runs):
    # the W&B Report filters on Config('cli.unlearn.class') and groups by cli.twins.metric.class
    cli = read_offline_run(runs["heal_wandb"])["config"]["cli"]
    assert cli["unlearn"]["class"] == "Fisher" and cli["unlearn"]["alpha"] == runs["heal"]["unlearn/alpha"]
    assert cli["twins"]["metric"] == {"class": "RawL2"}
    assert cli["adversary"]["class"] == "RandomSelector"


@pytest.mark.slow
def test_stream_rounds_on_their_own_axis_and_the_report_plots_them(runs, tmp_path, monkeypatch, configs_dir):
    from healing_pl.report.wandb_report import build_report, panel_keys

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "stream"
    args = ["stream", "--config", f"{configs_dir}/digits.yaml", f"--ckpt_path={runs['ckpt']}", f"--run_dir={run_dir}"]
    args += ["--adversary.budget=4", "--stream.round_size=4", "--stream.n_users=4", "--unlearn=Finetune", *FAST]
    assert main([*args, "--unlearn.epochs=1"]) == 0
    w = read_offline_run(_offline(run_dir))
    assert w["run"]["name"] == "stream-s0"
    assert w["run"]["tags"] == ["method:Finetune", "adversary:RandomSelector", "seed:0"]  # no heal: no metric
    rows = [row for row in w["history"] if "stream/test/acc" in row]
    assert [row["stream/round"] for row in rows] == [0, 1] and w["metrics"]["stream/test/acc"] == "stream/round"
    assert not any("trainer/global_step" in row for row in rows)
    record = json.loads((run_dir / "results.json").read_text())
    logged = _logged(w)
    keys = [k for k in panel_keys(build_report([record])) if k[1].startswith("stream/")]
    assert keys and all(key in logged[where] for where, key in keys), keys


def test_the_logger_reaches_a_spawned_rank_without_opening_a_run(tmp_path, monkeypatch):
    # ddp_spawn pickles the trainer, its W&B logger included, into each new rank. Lightning's logger opens the run
    # in the launching process for the ranks to attach to (which hangs offline); ours opens none there: rank zero
    # opens its own, and the rank quiets its console as the command did (the spawned heal itself: a slow test)
    import pickle

    import wandb

    import healing_pl.tracking as tracking
    from healing_pl.phases.config import Tracking

    logger = tracking.build_logger(Tracking(project="p"), str(tmp_path / "run"), "heal", {"seed_everything": 2})
    quieted = []
    monkeypatch.setattr(tracking, "quiet_console", lambda: quieted.append(True))
    rank = pickle.loads(pickle.dumps(logger))
    assert wandb.run is None and logger._experiment is None  # nothing opened in the launching process
    assert rank._experiment is None and "_attach_id" not in vars(rank) and quieted == [True]
    assert (rank.name, rank.save_dir, rank._wandb_init["job_type"]) == (logger.name, logger.save_dir, "heal")
    assert "anonymous" not in rank._wandb_init
