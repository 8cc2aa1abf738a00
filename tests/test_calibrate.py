"""``healing-pl calibrate`` on digits: reaches the target on validation, never reads test, writes a loadable snippet."""

from __future__ import annotations

import os

import pytest
import torch
import yaml

from healing_pl.data.datamodule import HealingDataModule
from healing_pl.experiments.calibrate import load_setup, run_calibration
from healing_pl.main import main
from healing_pl.models.classifier import evaluate, load_classifier

FORGET = ["--adversary=WorstLogitsSelector", "--adversary.system_knowledge=output_aware", "--adversary.budget=25"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, configs_dir):
    """A 3-epoch digits baseline; the module's commands run in its folder (runs/ and caches land there)."""
    folder = tmp_path_factory.mktemp("calibrate")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        args = ["fit", "--config", f"{configs_dir}/digits.yaml", "--run_dir=bl", "--trainer.max_epochs=3"]
        assert main([*args, "--trainer.enable_progress_bar=false", "--wandb.enabled=false"]) == 0
        yield folder, ["--config", f"{configs_dir}/digits.yaml", "--ckpt_path=bl/checkpoints/last.ckpt", *FORGET]
    finally:
        os.chdir(cwd)


def test_reaches_the_target_and_the_snippet_loads_back(baseline, configs_dir, capsys):
    folder, args = baseline
    snippet = folder / "fisher.yaml"
    assert main(["calibrate", *args, "--target_drop=0.13", f"--output={snippet}"]) == 0
    printed = capsys.readouterr().out
    text = snippet.read_text()
    assert text in printed
    config = yaml.safe_load(text)["unlearn"]
    assert config["class_path"] == "Fisher" and list(config["init_args"])[0] == "alpha"
    assert "# reached: drop" in text

    # the same search as a function: the chosen step's drop is within the tolerance of the target
    setup = load_setup([*args, "--target_drop=0.13"])
    result = run_calibration(setup, progress=False)
    best = result.best
    assert best["value"] == config["init_args"]["alpha"]
    assert abs(best["drop"] - 0.13) <= 0.01
    assert best["drop"] == pytest.approx(result.baseline_val - sum(best["val_accs"]) / len(best["val_accs"]))

    # the snippet is a second --config of `unlearn`: that run unlearns with the calibrated alpha, and its
    # unlearned model's validation accuracy is the one calibrate measured
    run = ["unlearn", *args, "--config", str(snippet), "--run_dir=u", "--wandb.enabled=false"]
    assert main([*run, "--trainer.enable_progress_bar=false"]) == 0
    unlearned = load_classifier("u/checkpoints/unlearned.ckpt")
    dm = HealingDataModule("digits", primary=0.6, backup=0.15, val=0.1, seed=0)
    dm.load_state_dict(torch.load("bl/checkpoints/last.ckpt", weights_only=True)["HealingDataModule"])
    assert evaluate(unlearned, dm.val_dataloader())["acc"] == pytest.approx(result.baseline_val - best["drop"])


def test_the_choice_never_reads_the_test_set(baseline):
    _, args = baseline
    options = [*args, "--target_drop=0.2", "--steps=5", "--tol=0"]
    clean = run_calibration(load_setup(options), progress=False)
    setup = load_setup(options)
    targets = setup.datamodule.pool.train.targets
    test = setup.datamodule.splits["test"]
    before = targets[test].clone()
    targets[test] = (targets[test] + 1) % 10  # every test label is now wrong
    scrambled = run_calibration(setup, progress=False)
    assert not torch.equal(targets[test], before)
    assert scrambled.steps == clean.steps and scrambled.best == clean.best
    # --tol 0: no early stop; the result is the closest of the 5 values tried
    assert len(clean.steps) == 5
    assert clean.best == min(clean.steps, key=lambda s: abs(s["drop"] - 0.2) if s["drop"] is not None else 9)


@pytest.mark.parametrize(
    "options, words",
    [
        (["--ckpt_path=missing.ckpt", "--target_drop=0.1"], "checkpoint 'missing.ckpt' does not exist"),
        (["--target_drop=1.5"], "--target_drop must lie in (0, 1), got 1.5"),
        (["--target_drop=0"], "--target_drop must lie in (0, 1), got 0.0"),
        (["--param=scale", "--target_drop=0.1"], "--param scale is not a strength of Fisher; choose one of alpha"),
        (["--unlearn=Naive", "--target_drop=0.1"], "not of Naive"),
        (["--lo=1e-3", "--hi=1e-6", "--target_drop=0.1"], "the search range needs 0 < --lo < --hi"),
        (["--output=nowhere/s.yaml", "--target_drop=0.1"], "--output 'nowhere/s.yaml' cannot be written"),
    ],
)
def test_bad_input_is_one_sentence_and_writes_nothing(baseline, capsys, options, words):
    folder, args = baseline
    before = sorted(os.listdir(folder))
    assert main(["calibrate", *args, "--output=s.yaml", *options]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("healing-pl")]
    assert lines == [lines[0]] and words in lines[0], captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert sorted(os.listdir(folder)) == before


def test_top_level_help_lists_calibrate(capsys):
    assert main(["--help"]) == 0
    assert "    calibrate " in capsys.readouterr().out
