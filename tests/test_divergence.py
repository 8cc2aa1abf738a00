"""A diverging unlearner stops with one sentence naming its knob, exit status 2, and leaves no model behind."""

import pytest
import torch
from torch import nn

from healing_pl.main import main
from healing_pl.unlearning import UNLEARNERS, check_divergence

QUIET = ["--trainer.enable_progress_bar=false", "--wandb.enabled=false"]


@pytest.fixture(scope="module")
def baseline(digits_baseline):
    return digits_baseline  # one session-wide digits baseline (tests/conftest.py)


@pytest.mark.parametrize("subcommand", ["unlearn", "heal"])
def test_fisher_noise_that_breaks_the_model_stops_before_anything_is_saved(
    in_tmp, configs_dir, baseline, subcommand, capsys
):
    run, cache = in_tmp / subcommand, in_tmp / "cache"
    args = [
        subcommand,
        "--config",
        f"{configs_dir}/digits.yaml",
        f"--ckpt_path={baseline}",
        f"--run_dir={run}",
        "--adversary=ClassSelector",
        "--adversary.target_class=3",
        "--adversary.budget=10",
        "--unlearn=Fisher",
        "--unlearn.alpha=1e30",
        f"--unlearn.cache_dir={cache}",
        *QUIET,
        *(["--heal.epochs=1"] if subcommand == "heal" else []),
    ]
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--unlearn.alpha" in last and "--model.lr" not in last and last.startswith("healing-pl: error:")
    assert not (run / "results.json").exists()
    assert not list(run.rglob("*.ckpt")) and not (run / "checkpoints").exists()
    assert not list(cache.glob("unlearned-*.pt"))
    assert (run / "ledger.jsonl").exists()  # the requests are on record


class _Net(nn.Module):
    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.fc.weight.fill_(weight)

    def forward(self, x):
        return self.fc(x.flatten(1))


class _Data:
    """The datamodule surface the guard reads: the val split, its loader and the class count."""

    num_classes = 3

    def __init__(self, x, y):
        self.splits = {"val": torch.arange(len(y))}
        self.batches = [(x, y)]

    def val_dataloader(self):
        return self.batches


def _fisher(**knobs):
    return UNLEARNERS["fisher"](alpha=1e30, cache_dir=None, **knobs)


def _data():
    x = torch.eye(3, 4).repeat(10, 1)
    return _Data(x, torch.arange(3).repeat(10))


def test_the_guard_names_each_methods_knob():
    good = _Net()
    with torch.no_grad():
        good.fc.weight.copy_(torch.eye(3, 4) * 5)
    check_divergence(good, good, _data(), _fisher())  # right on every sample: passes
    broken = _Net(float("nan"))
    with pytest.raises(FloatingPointError, match=r"weights are not finite\): lower --unlearn.alpha \(now 1e\+30\)"):
        check_divergence(broken, good, _data(), _fisher())
    influence = UNLEARNERS["influence"](scale=50.0, damping=0.01, cache_dir=None)
    with pytest.raises(FloatingPointError, match=r"--unlearn.scale \(now 50\) or --unlearn.damping"):
        check_divergence(broken, good, _data(), influence)
    constant = _Net(0.0)  # one class for every sample: chance level
    with pytest.raises(FloatingPointError, match="at chance level"):
        check_divergence(constant, good, _data(), _fisher())
    check_divergence(constant, constant, _data(), _fisher())  # an input already at chance is not a divergence


def test_on_collapse_keep_records_a_chance_level_model_but_never_a_non_finite_one(capsys):
    good = _Net()
    with torch.no_grad():
        good.fc.weight.copy_(torch.eye(3, 4) * 5)
    cfg = _fisher(on_collapse="keep")
    check_divergence(_Net(0.0), good, _data(), cfg)  # chance level: kept, with one line on stderr
    assert "collapsed" in capsys.readouterr().err
    with pytest.raises(FloatingPointError, match="weights are not finite"):
        check_divergence(_Net(float("nan")), good, _data(), cfg)


def test_on_collapse_takes_stop_or_keep():
    for method in UNLEARNERS.classes():  # a knob of every method (the base class's)
        assert method().on_collapse == "stop"
        with pytest.raises(ValueError, match="unlearn.on_collapse must be stop or keep"):
            method(on_collapse="ignore")


@pytest.mark.parametrize("subcommand", ["heal", "stream"])
def test_a_heal_learning_rate_that_breaks_the_model_stops_naming_heal_lr(
    in_tmp, configs_dir, baseline, subcommand, capsys
):
    """--heal.lr 1e6 takes the healed model to chance: exit 2, one sentence naming --heal.lr, no model, no results."""
    run = in_tmp / subcommand
    args = [
        subcommand,
        "--config",
        f"{configs_dir}/digits.yaml",
        f"--ckpt_path={baseline}",
        f"--run_dir={run}",
        "--unlearn.alpha=1e-8",
        "--heal.lr=1e6",
        *QUIET,
        *(
            ["--heal.epochs=2"]
            if subcommand == "heal"
            else ["--stream.heal=true", "--stream.round_size=10", "--adversary.budget=10"]
        ),
    ]
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("healing-pl: error: the heal diverged") and "--heal.lr" in last, last
    assert "--model.lr" not in last
    assert not (run / "results.json").exists()
    assert not list(run.rglob("*.ckpt")) and not list(run.rglob("round-*"))


def test_a_heal_at_its_own_learning_rate_keeps_the_baselines_recipe_in_the_checkpoint(in_tmp, configs_dir, baseline):
    """--heal.lr sets the fine-tune's optimizer, not the model's recorded hyperparameters."""
    import json

    run = in_tmp / "heal"
    args = ["heal", "--config", f"{configs_dir}/digits.yaml", f"--ckpt_path={baseline}", f"--run_dir={run}"]
    assert main([*args, "--unlearn.alpha=1e-8", "--heal.lr=3e-4", "--heal.epochs=1", *QUIET]) == 0
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    fitted = torch.load(baseline, weights_only=True)
    assert saved["hyper_parameters"]["lr"] == fitted["hyper_parameters"]["lr"] != 3e-4
    assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == 3e-4
    assert json.loads((run / "results.json").read_text())["heal/lr"] == 3e-4
