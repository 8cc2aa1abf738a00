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


# --------------------------------------------------------------------------- tuning against the gold standard
WHOLE_CLASS = ["--adversary=ClassSelector", "--adversary.target_class=3", "--adversary.budget=40"]
AGAINST_GOLD = ["--unlearn=SSD", "--against_gold=true", "--lo=1", "--hi=100", "--steps=3"]


def test_against_gold_chooses_the_value_closest_to_the_gold_standard_on_validation(baseline, capsys):
    import torch.nn.functional as F

    from healing_pl.experiments.calibrate import candidates, tune_against_gold
    from healing_pl.unlearning.naive import gold_standard, model_hparams

    folder, args = baseline
    options = [*args[:3], *WHOLE_CLASS, *AGAINST_GOLD]
    setup = load_setup(options)
    result = tune_against_gold(setup, progress=False)
    assert [s["value"] for s in result.steps] == [1.0, 10.0, 100.0] == candidates(1, 100, 3)
    assert result.best == min(result.steps, key=lambda s: s["distance"])
    # the chosen value's distance, recomputed by hand: |forget acc - GS forget acc| + mean KL(GS || unlearned)
    dm, model = setup.datamodule, setup.model
    forget = torch.tensor(result.forget_ids)
    assert len(forget) == 40 and (dm.targets[forget] == 3).all()
    gold, _ = gold_standard(model_hparams(model), dm, forget, epochs=3, seed=0, cache_dir=setup.unlearn.cache_dir)
    out, _ = setup.unlearn.replace(alpha=result.best["value"]).run(model, dm, forget, setup.context, 0)
    x = torch.stack([dm.pool.train[int(i)][0] for i in forget])
    y = dm.targets[forget]
    with torch.no_grad():
        lg, lu = F.log_softmax(gold.eval()(x).double(), 1), F.log_softmax(out.eval()(x).double(), 1)
    gap = abs((lu.argmax(1) == y).double().mean().item() - (lg.argmax(1) == y).double().mean().item())
    kl = (lg.exp() * (lg - lu)).sum(1).mean().item()
    assert result.best["distance"] == pytest.approx(gap + kl, abs=1e-6)


@pytest.mark.slow
def test_against_gold_never_reads_test_and_writes_a_snippet_labelled_tuned_on_validation(baseline, capsys):
    from healing_pl.experiments.calibrate import tune_against_gold

    folder, args = baseline
    options = [*args[:3], *WHOLE_CLASS, *AGAINST_GOLD]
    result = tune_against_gold(load_setup(options), progress=False)
    # the test set is never read: scrambled test labels give the same choice
    again = load_setup(options)
    targets, test = again.datamodule.pool.train.targets, again.datamodule.splits["test"]
    targets[test] = (targets[test] + 1) % 10
    assert tune_against_gold(again, progress=False).steps == result.steps
    # the command prints and writes the snippet, labelled as tuned on validation; it loads back
    snippet = folder / "ssd.yaml"
    assert main(["calibrate", *options, f"--output={snippet}"]) == 0
    text = snippet.read_text()
    assert text.startswith("# tuned on validation: unlearn.alpha") and text in capsys.readouterr().out
    config = yaml.safe_load(text)["unlearn"]
    assert config["class_path"] == "SSD" and config["init_args"]["alpha"] == result.best["value"]


def test_against_gold_refuses_a_target_drop(baseline, capsys):
    folder, args = baseline
    assert main(["calibrate", *args[:3], *WHOLE_CLASS, *AGAINST_GOLD, "--target_drop=0.1"]) == 2
    assert "drop --target_drop" in capsys.readouterr().err


def test_candidates_near_one_are_spaced_in_log_one_minus_value():
    from healing_pl.experiments.calibrate import candidates

    assert candidates(0.9, 0.9999, 4) == [0.9, 0.99, 0.999, 0.9999]
    assert candidates(1e-3, 1e-1, 3) == [0.001, 0.01, 0.1]
    assert candidates(1.0, 100.0, 1) == [10.0]
