import glob
import json
import os
import sys

import pytest
import torch
import yaml

from healing_pl.main import main
from healing_pl.tracking import read_offline_run

FAST = ["--trainer.max_epochs=3", "--trainer.enable_progress_bar=false", "--data.batch_size=128"]


def test_fit_end_to_end_on_digits(in_tmp, configs_dir):
    run_dir = in_tmp / "run"
    assert main(["fit", "--config", f"{configs_dir}/digits.yaml", f"--run_dir={run_dir}", *FAST]) == 0
    record = json.loads((run_dir / "results.json").read_text())
    assert record["phase"] == "fit" and record["test/acc"] > 0.8
    assert record["threads"] == torch.get_num_threads() == 1  # the tests' one thread (conftest), as recorded
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    splits = json.loads((run_dir / "splits.json").read_text())
    assert splits["dataset"] == "digits" and len(splits["splits"]["primary"]) == round(0.6 * 1797)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["dataset"] == "digits" and saved["trainer"]["max_epochs"] == 3
    # the offline W&B run holds the config and the test accuracy in its summary
    (wandb_run,) = glob.glob(str(run_dir / "wandb" / "offline-run-*"))
    recorded = read_offline_run(wandb_run)
    assert recorded["summary"]["test/acc"] == pytest.approx(record["test/acc"])
    cli = recorded["config"]["cli"]  # the run's CLI configuration, nested (no flat Lightning hparams)
    assert cli["data"]["dataset"] == "digits" and cli["model"]["backbone"] == "small_cnn"
    # the checkpoint carries the splits, so later phases reload the same sets
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["HealingDataModule"]["splits"] == splits["splits"]


def test_fit_is_reproducible(in_tmp, configs_dir):
    accs = []
    for name in ("a", "b"):
        args = [
            "fit",
            "--config",
            f"{configs_dir}/digits.yaml",
            f"--run_dir={in_tmp / name}",
            "--wandb.enabled=false",
            "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false",
        ]
        assert main(args) == 0
        accs.append(json.loads((in_tmp / name / "results.json").read_text())["test/acc"])
        sd = torch.load(in_tmp / name / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        accs.append(sd["net.fc2.weight"])
    assert accs[0] == accs[2] and torch.equal(accs[1], accs[3])


def test_print_config_round_trips(in_tmp, configs_dir, capsys):
    assert main(["fit", "--config", f"{configs_dir}/mnist5k.yaml", "--model.lr=0.0003", "--print_config"]) == 0
    first = capsys.readouterr().out
    (in_tmp / "printed.yaml").write_text(first)
    assert main(["fit", "--config", "printed.yaml", "--print_config"]) == 0
    assert capsys.readouterr().out == first
    assert yaml.safe_load(first)["model"]["lr"] == 0.0003


@pytest.mark.parametrize(
    "args, words",
    [
        (["--data.dataset=mnsit"], "unknown dataset 'mnsit'"),
        (["--model.backbone=resnet5O"], "unknown backbone 'resnet5O'"),
        (["--data.primary=0.9", "--data.backup=0.2"], "splits do not fit"),
        (["--data.dataset=cifar10", "--data.root=nowhere"], "not found at 'nowhere'"),
        (["--trainer.max_epochs=0"], "max_epochs must be at least 1"),
    ],
)
def test_bad_input_is_one_sentence_and_writes_nothing(in_tmp, configs_dir, capsys, args, words):
    code = main(["fit", "--config", f"{configs_dir}/digits.yaml", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("healing-pl: error:") and words in err and len(err.splitlines()) == 1
    assert os.listdir(in_tmp) == []


def test_the_console_script_is_installed_and_runs_main():
    # pip's generated script is `sys.exit(main())`: main's status (2 on bad input: test_bad_input) is its exit status;
    # the DDP fit (tests/test_distributed.py) runs the script itself
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="healing-pl")
    assert script.value == "healing_pl.main:main" and script.load() is main
    assert os.access(os.path.join(os.path.dirname(sys.executable), "healing-pl"), os.X_OK)


@pytest.mark.parametrize("command", [["report", "nowhere"], ["fit", "--trainer.max_epochs=x"]])
def test_the_program_freezes_its_imports_a_caller_of_main_keeps_its_collector(command, monkeypatch, capsys):
    # as the program (the console script's main() reads the command line), it imports with the collector off,
    # then hands the heap of imports to the collector's permanent generation and turns it on again; a process
    # calling main(args) keeps its collector
    import gc

    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(gc.isenabled()))
    assert main(command) == 2 and frozen == [] and gc.isenabled()
    monkeypatch.setattr(sys, "argv", ["healing-pl", *command])
    assert main() == 2 and frozen == [False] and gc.isenabled()
    first, second = capsys.readouterr().err.strip().splitlines()
    assert first == second and "error" in first  # the same sentence either way


def test_diverging_hyperparameters_stop_with_a_sentence(in_tmp, configs_dir, capsys):
    code = main(
        [
            "fit",
            "--config",
            f"{configs_dir}/digits.yaml",
            "--model.lr=1e12",
            "--trainer.max_epochs=3",
            "--wandb.enabled=false",
            "--trainer.enable_progress_bar=false",
            f"--run_dir={in_tmp / 'r'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "diverge" in err and "--model.lr" in err
    assert not (in_tmp / "r" / "results.json").exists()


def test_top_level_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "unlearn", "heal", "stream", "grid", "report", "ledger"):
        assert f"    {name} " in out, name


@pytest.mark.parametrize(
    "command",
    [
        ["fit", "--model.lr=0.01"],
        ["heal", "--unlearn=SCRUB", "--adversary=ClassSelector", "--adversary.target_class=3"],
        ["heal", "--twins.metric=RawMahalanobis", "--twins.metric.shrinkage=0.2", "--heal.epochs=3"],
        ["unlearn", "--unlearn=SISA", "--unlearn.shards=2"],
        ["stream", "--stream.round_size=4", "--adversary=WorstLogitsSelector"],
    ],
)
def test_the_configuration_dumps_equal_the_validated_ones(tmp_path, configs_dir, digits_baseline, command):
    # the model's and datamodule's hyperparameters come from Lightning's dump of the configuration, and the run's
    # config.yaml from the CLI's own: both are dumped without validating again (parsing did), Lightning's through
    # JSON instead of YAML; the values must be those of Lightning's dump and of a validated dump, to the type
    from lightning.pytorch.cli import LightningCLI

    from healing_pl.cli import HealingCLI

    seen = {}

    class Stop(Exception):
        pass

    class Compare(HealingCLI):
        def _dump_config(self):
            if not hasattr(self, "config_dump"):  # the first call (the datamodule's), as Lightning dumps it
                LightningCLI._dump_config(self)
                lightning = self.__dict__.pop("config_dump")
                super()._dump_config()
                seen["hyperparameters"] = repr(self.config_dump), repr(lightning)  # as they are now (the model's
                # instantiation adds its linked values to the dump in place)

        def instantiate_trainer(self, **kwargs):
            trainer = super().instantiate_trainer(**kwargs)
            validated = self._parser(self.subcommand).dump(self._cfg(), skip_none=False, format="json")
            seen["config.yaml"] = repr(trainer.run_config), repr(json.loads(validated))
            raise Stop

    subcommand, *options = command
    args = [subcommand, "--config", f"{configs_dir}/digits.yaml", f"--run_dir={tmp_path / 'run'}", *options]
    args += ["--wandb.enabled=false"] + ([f"--ckpt_path={digits_baseline}"] if subcommand != "fit" else [])
    with pytest.raises(Stop):
        Compare(args=args)
    for what, (ours, validated) in seen.items():
        assert ours == validated, what  # the same keys, order, values and types


@pytest.mark.parametrize("extra", [[], ["--model.lr=0.5"], ["--model.drop_rate=0.1"], ["--data.image_size=12"]])
def test_a_checkpoints_hyperparameters_are_adopted_as_lightning_adopts_them(configs_dir, digits_baseline, extra):
    # Lightning parses the command again with the checkpoint's model hyperparameters; the CLI skips that when the
    # parsed model section holds them already. Either way the configuration must be Lightning's, to the value.
    from lightning.pytorch.cli import LightningCLI

    from healing_pl.cli import LINKED_FROM_DATA, HealingCLI

    seen = {}

    class Stop(Exception):
        pass

    class Compare(HealingCLI):
        def _parse_ckpt_path(self):
            parsed = self.config.clone()
            LightningCLI._parse_ckpt_path(self)
            seen["lightning"], self.config = self.config, parsed
            super()._parse_ckpt_path()
            seen["ours"], seen["skipped"] = self.config, self.config is parsed
            raise Stop

    args = ["heal", "--config", f"{configs_dir}/digits.yaml", f"--ckpt_path={digits_baseline}", *extra]
    with pytest.raises(Stop):
        Compare(args=args)
    ours, theirs = seen["ours"].as_dict(), seen["lightning"].as_dict()
    for key in LINKED_FROM_DATA:  # set from the datamodule when the model is built, whatever the parse says
        ours["heal"]["model"].pop(key, None), theirs["heal"]["model"].pop(key, None)
    assert ours == theirs
    assert seen["ours"].heal.model.lr == 0.003  # the checkpoint's learning rate, whatever the command says
    assert seen["skipped"] is (not extra or "--data" in extra[0])
    if not seen["skipped"]:
        assert seen["ours"] == seen["lightning"]
