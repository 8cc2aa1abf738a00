"""A quiet console: a digits fit and heal print no Lightning tips, no W&B "anonymous" warning and no known
deprecation warning, while real warnings still show; the progress helpers print what they promise."""

import json
import os
import subprocess
import sys
import warnings

import lightning as L
import torch

from healing_pl.console import (
    GridConsole,
    announce_repeat,
    duration,
    eta_seconds,
    labelled_progress_bar,
    progress_bar,
    quiet_console,
    run_line,
)

NOISE = (
    "Tip",
    "litlogger",
    "litmodels",
    "anonymous",
    "DeprecationWarning",
    "FutureWarning",
    "LeafSpec",
    "no logger configured",
)


#: runs fit, then heal from its checkpoint, in one new process (one start-up instead of two), each as the console
#: script runs it (``main()`` reading the command line); each command's output follows a marker line on both streams
COMMANDS = """
import json, sys
from healing_pl.main import main
for i, args in enumerate(json.loads(sys.argv[1])):
    for stream in (sys.stdout, sys.stderr):
        print(f"=== command {i}", file=stream, flush=True)
    sys.argv = ["healing-pl", *args]
    if main() != 0:
        sys.exit(1)
"""


def _cli(*commands, cwd) -> list[str]:
    """The output of each command (stdout, then stderr), run as a user runs them: a new process, W&B speaking."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"}  # W&B speaks as it does for users
    env["WANDB_MODE"] = "offline"
    argv = [sys.executable, "-c", COMMANDS, json.dumps(commands)]
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    out, err = (text.split("=== command ")[1:] for text in (done.stdout, done.stderr))
    assert len(out) == len(err) == len(commands)
    return [o.split("\n", 1)[1] + e.split("\n", 1)[1] for o, e in zip(out, err, strict=True)]


def test_fit_and_heal_print_no_tips_or_known_warnings(tmp_path, configs_dir):
    config = f"{configs_dir}/digits.yaml"
    ckpt = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    fit, heal = _cli(
        ["fit", "--config", config, "--run_dir", str(tmp_path / "fit"), "--trainer.max_epochs=1"],
        [
            "heal",
            "--config",
            config,
            f"--ckpt_path={ckpt}",
            "--run_dir",
            str(tmp_path / "heal"),
            "--adversary.budget=10",
        ],
        cwd=tmp_path,
    )
    # A warning Python shows once per process would show in the fit's output only: both outputs are checked.
    for output in (fit, heal):
        assert "wandb: Tracking run" in output  # W&B ran, and could speak
        for word in NOISE:
            assert word not in output, f"{word!r} printed:\n{output[-3000:]}"
    assert "results written to" in heal and "results written to" in fit


def test_real_warnings_still_show():
    quiet_console()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_console()  # the filters go in front of the catch-all
        warnings.warn("a real problem", UserWarning)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
    assert [str(w.message) for w in caught] == ["a real problem"]


def test_repeat_progress_lines(capsys):
    for i in range(1, 4):
        announce_repeat(i, 3, "fisher")
    announce_repeat(1, 1, "fisher")  # a single run: nothing
    announce_repeat(1, 3, "fisher", enabled=False)
    assert capsys.readouterr().err.splitlines() == ["fisher repeat 1/3", "fisher repeat 2/3", "fisher repeat 3/3"]


def test_progress_bar_counts_blocks(capsys):
    assert list(progress_bar(range(5), desc="twin search")) == list(range(5))
    assert "twin search" in capsys.readouterr().err
    assert list(progress_bar(range(2), desc="twin search", enabled=False)) == [0, 1]
    assert capsys.readouterr().err == ""


def test_labelled_progress_bar_names_the_training(capsys):
    model = torch.nn.Linear(2, 2)

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model

        def training_step(self, batch, _):
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    bar = labelled_progress_bar("gold standard")
    trainer = L.Trainer(
        max_epochs=2, callbacks=[bar], logger=False, enable_checkpointing=False, enable_model_summary=False
    )
    trainer.fit(Tiny(), loader)
    printed = capsys.readouterr()
    shown = printed.out + printed.err  # Lightning's bars write to stdout
    assert "gold standard, epoch 1/2" in shown and "gold standard, epoch 2/2" in shown


def test_durations_and_eta():
    assert [duration(s) for s in (0.4, 42, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]
    assert eta_seconds(0, 10, 30.0) is None  # nothing finished yet: no guess
    assert eta_seconds(2, 10, 30.0) == 120.0  # 15 s a run, 8 to go
    assert eta_seconds(10, 10, 30.0) == 0.0


def test_run_line_has_name_elapsed_result_and_eta():
    line = run_line(3, 12, "heal-Fisher-RawL2", 14.2, "healed 96.10%", 130.0, width=20)
    assert line == "[3/12]  heal-Fisher-RawL2        14s  healed 96.10%  ETA 2m10s"
    assert run_line(12, 12, "heal-x", 5, "healed 96.10%", 0.0) == "[12/12] heal-x      5s  healed 96.10%"
    assert "     -  healed" in run_line(1, 2, "heal-x", None, "healed 96.10% (elsewhere)", 1.0)


def test_grid_console_prints_one_line_per_run_and_the_total(capsys):
    console = GridConsole(3, width=6, enabled=False)
    console.running(["heal-a", "heal-b"])
    for name, failed in (("heal-a", False), ("heal-b", True), ("heal-c", False)):
        console.finished(name, 2.0, "FAILED (exit 1): bad" if failed else "healed 90.00%", failed=failed)
    console.close()
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split()[:2] for line in lines[:3]] == [["[1/3]", "heal-a"], ["[2/3]", "heal-b"], ["[3/3]", "heal-c"]]
    assert "ETA" in lines[0] and "ETA" not in lines[2]
    assert lines[3].startswith("3 runs in ") and lines[3].endswith(", 1 failed") and len(lines) == 4
    assert captured.err == ""  # no bar when it is off (a log, a pipe)
