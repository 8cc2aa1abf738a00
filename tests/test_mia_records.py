"""The loss-based MIA is recorded by heal runs: baseline, gold standard, unlearned and healed models, and the
healed model's forget set against its twins; reproducible, and ``--unlearn.mia=false`` leaves it out without
changing anything else the run measures."""

import glob
import json
import os

import pytest
import torch

from healing_pl import records as rk
from healing_pl.data.datamodule import HealingDataModule
from healing_pl.main import main
from healing_pl.models.classifier import Classifier, load_classifier
from healing_pl.phases.mia import MiaResult, draw_heldout_matched, mia, mia_twins_phase, population_mia
from healing_pl.unlearning.naive import load_cached

QUIET = ["--trainer.enable_progress_bar=false", "--wandb.enabled=false"]

MIA_KEYS = (
    "baseline/mia/auc",
    "baseline/mia/acc",
    "gold/mia/auc",
    "gold/mia/acc",
    "unlearned/mia/auc",
    "unlearned/mia/acc",
    "healed/mia/auc",
    "healed/mia/acc",
    "healed/mia_twins/auc",
    "healed/mia_twins/acc",
)


@pytest.fixture(scope="module")
def baseline(digits_baseline):
    return digits_baseline  # one session-wide digits baseline (tests/conftest.py)


def _heal(tmp, configs_dir, baseline, name: str, *extra) -> dict:
    run = tmp / name
    args = [
        "heal",
        "--config",
        f"{configs_dir}/digits.yaml",
        f"--ckpt_path={baseline}",
        f"--run_dir={run}",
        "--adversary.budget=20",
        "--unlearn=Finetune",
        "--unlearn.epochs=1",
        f"--unlearn.cache_dir={run / 'cache'}",  # each run unlearns and trains its gold standard afresh
        "--twins.metric=FeatCosine",
        "--heal.epochs=1",
        *QUIET,
        *extra,
    ]
    assert main(args) == 0
    return json.loads((run / "results.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, configs_dir, baseline):
    tmp = tmp_path_factory.mktemp("heal")
    return (
        _heal(tmp, configs_dir, baseline, "on"),
        _heal(tmp, configs_dir, baseline, "again"),
        _heal(tmp, configs_dir, baseline, "off", "--unlearn.mia=false"),
    )


def test_a_heal_run_records_every_mia_key(runs, baseline):
    record = runs[0]
    # each figure is a mean over 5 folds of 4 + 4 samples (n = 20 a side): accuracy in 40ths, AUC in 160ths
    for key in MIA_KEYS:
        steps = record[key] * (40 if key.endswith("/acc") else 160)
        assert abs(steps - round(steps)) < 1e-9, (key, record[key])
    # the baseline's and the gold standard's figures are the attack on those models, redone here
    dm = HealingDataModule("digits", primary=0.6, backup=0.15, val=0.1, batch_size=64, seed=0)  # configs/digits.yaml
    forget, seed = torch.tensor(record["forget/ids"]), record["unlearn/seed"]
    (gold_path,) = glob.glob(os.path.join(record["run_dir"], "cache", "gold-*.pt"))
    gold = load_cached(gold_path)
    models = {"baseline": load_classifier(str(baseline)), "gold": Classifier(**gold["hyper_parameters"])}
    models["gold"].load_state_dict(gold["state_dict"])
    for prefix, model in models.items():
        held = draw_heldout_matched(dm, forget, seed)  # the forget set's class histogram, from the test split
        assert sorted(dm.targets[held].tolist()) == sorted(dm.targets[forget].tolist())
        redone = mia(model.eval(), dm, forget, held, seed, matched=True)
        assert (record[f"{prefix}/mia/auc"], record[f"{prefix}/mia/acc"]) == (redone["auc"], redone["acc"]), prefix
        assert (record[f"{prefix}/mia/auc_low"], record[f"{prefix}/mia/auc_high"]) == (
            redone["auc_low"],
            redone["auc_high"],
        )
        population = population_mia(model.eval(), dm, forget, seed)
        assert record[f"{prefix}/mia_population/auc"] == population["auc"], prefix
    assert record["mia/class_matched"] is True
    assert record["mia/heldout"] == "test"  # digits has a test split in its pool
    assert record["mia/n"] == 20 == record["forget/count"]
    assert record["healed/mia_twins/n"] == len({p["twin_id"] for p in record["twins/pairs"]})


def test_the_same_run_gives_the_same_mia(runs):
    first, again, _ = runs
    assert {k: first[k] for k in MIA_KEYS} == {k: again[k] for k in MIA_KEYS}


def test_switching_it_off_removes_the_keys_and_changes_nothing_else(runs):
    on, _, off = runs
    assert not [k for k in off if "mia" in k.split("/")[0] or "/mia" in k]
    for key in ("baseline/test/acc", "gold/test/acc", "unlearned/test/acc", "healed/test/acc", "healed/forget/acc"):
        assert off[key] == on[key], key  # the attack draws nothing from the run's random state
    assert off["experiment/id"] == on["experiment/id"]  # evaluation only: the same experiment


def test_records_of_the_result_type():
    assert MiaResult("gold", 0.75, 0.5, 30, "val").record() == {
        rk.GOLD_MIA_AUC: 0.75,
        rk.GOLD_MIA_ACC: 0.5,
        rk.MIA_HELDOUT: "val",
        rk.MIA_N: 30,
    }
    assert MiaResult("healed", 0.5, 0.25, 8, kind="mia_twins").record() == {
        rk.HEALED_MIA_TWINS_AUC: 0.5,
        rk.HEALED_MIA_TWINS_ACC: 0.25,
        rk.HEALED_MIA_TWINS_N: 8,
    }
    assert mia_twins_phase(None, None, list(range(10)), [], "healed", 0) is None  # R: no twins, no twin MIA


def _record(method: str, seed: int, setup: str, val: float, test: float, mia: float) -> dict:
    return rk.plain(
        {
            rk.PHASE: rk.HEAL,
            rk.RUN_DIR: f"runs/{method}-{seed}-{setup}",
            rk.DATASET: "digits",
            rk.UNLEARN_METHOD: method,
            rk.UNLEARN_SEED: seed,
            rk.HEAL_SETUP: setup,
            rk.HEAL_EPOCHS: 1,
            rk.BASELINE_TEST_ACC: 0.9,
            rk.BASELINE_FORGET_ACC: 1.0,
            rk.BASELINE_MIA_AUC: 0.6,
            rk.UNLEARNED_TEST_ACC: 0.8,
            rk.UNLEARNED_FORGET_ACC: 0.5,
            rk.UNLEARNED_MIA_AUC: 0.7 + 0.1 * seed,
            rk.UNLEARNED_TIME_S: 2.0 + seed,
            rk.healed_val_acc(1): val,
            rk.healed_test_acc(1): test,
            rk.HEALED_TEST_ACC: test,
            rk.HEALED_FORGET_ACC: 0.75,
            rk.HEALED_MIA_AUC: mia,
            **({rk.HEALED_MIA_TWINS_AUC: 0.55} if setup != "R" else {}),
        }
    )


def test_methods_table_reports_each_method_before_and_after_healing():
    from healing_pl.report.dashboard import dashboard_html, mia_figure
    from healing_pl.report.tables import methods_markdown, methods_tables

    records = [
        _record(method, seed, setup, val, test, mia)
        for method in ("finetune", "scrub")
        for seed in (0, 1)
        for setup, val, test, mia in (
            ("R", 0.80, 0.85, 0.50),
            ("T-raw_l2", 0.90, 0.86, 0.40 + 0.1 * seed),  # best on validation
            ("T-feat_cosine", 0.85, 0.95, 0.9),  # best on test: not chosen
        )
    ]
    (table,) = methods_tables(records)
    assert [r["method"] for r in table["rows"]] == ["finetune", "scrub"]
    row = table["rows"][0]
    assert row["best twin setups"] == ["T-raw_l2"] and row["seeds"] == 2
    assert row["best twin"]["MIA"].values == [0.4, 0.5] and row["R"]["MIA"].values == [0.5, 0.5]
    assert row["best twin"]["MIA F/twins"].values == [0.55, 0.55]
    assert row["time"].mean == 2.5
    text = methods_markdown(table)
    # mean ± t(0.975, 1) * s / sqrt(2), cut at the range: times 2 and 3 s (s = 0.707): 2.5 ± 6.4 -> [0.0, 8.9];
    # MIA 0.7 and 0.8: 0.750 ± 0.635 -> [0.115, 1.000]
    assert "| finetune | 2 | 2.5 [0.0, 8.9] | 80.00 [80.00, 80.00] | 50.00 [50.00, 50.00] " in text
    assert "| 50.00 [50.00, 50.00] | 0.750 [0.115, 1.000] |" in text
    assert "| BL | 2 | — | 90.00 [90.00, 90.00] | 100.00 [100.00, 100.00] | 0.600 [0.600, 0.600] | — |" in text
    assert "| 0.450 [0.000, 1.000] | T-raw_l2 | 0.550 [0.550, 0.550] |" in text
    assert mia_figure(table).startswith("data:image/png;base64,")
    assert "Methods (forget quality before and after healing)" in dashboard_html(records)
