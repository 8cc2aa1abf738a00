"""Every phase runs on the model's device and in its precision.

The probe is a callback that, for the whole command, watches every module call: each floating input
and each parameter of the called module must be on the trainer's device and in the precision's dtype.
On the CPU the run uses ``--trainer.precision=64-true`` (Lightning converts the model to float64): a phase
that built a fresh model, fed float32 data or fell back to another device would show up as a float32 or
foreign-device tensor. On CUDA (when present) the same run checks the device itself.
"""

import json

import lightning as L
import pytest
import torch

from healing_pl.main import main

QUIET = ["--trainer.enable_progress_bar=false", "--wandb.enabled=false"]


class DeviceProbe(L.Callback):
    """Records (device type, dtype) of every floating input and parameter of every module call."""

    seen: set = set()
    calls: int = 0

    def setup(self, trainer, pl_module, stage):
        DeviceProbe.seen, DeviceProbe.calls = set(), 0

        def hook(module, args):
            DeviceProbe.calls += 1
            tensors = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
            tensors += [p for p in module.parameters(recurse=False)]
            DeviceProbe.seen.update((t.device.type, t.dtype) for t in tensors)

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)

    def teardown(self, trainer, pl_module, stage):
        self.handle.remove()


@pytest.fixture(scope="module")
def baseline(digits_baseline):
    return digits_baseline  # the session's one-epoch digits fit


def _probe(in_tmp, configs_dir, baseline, accelerator, *extra):
    # the chosen classes (--adversary, --unlearn, --twins.metric) come before the knobs of theirs set here
    args = [
        "--config",
        f"{configs_dir}/digits.yaml",
        f"--ckpt_path={baseline}",
        *extra,
        "--adversary.budget=6",
        f"--unlearn.cache_dir={in_tmp / 'cache'}",
        "--trainer.callbacks+=test_devices.DeviceProbe",
        f"--trainer.accelerator={accelerator}",
        "--trainer.precision=64-true",
        *QUIET,
    ]
    return args


PHASES = [
    # subcommand, options: together they run every phase (adversaries, gold, each method, each twin metric, streams,
    # the MIA of every model: on by default)
    (
        "heal",
        [
            "--adversary=GradientSelector",
            "--adversary.system_knowledge=parameter_aware",
            "--unlearn=Fisher",
            "--twins.metric=FeatMahalanobis",
            "--heal.epochs=1",
        ],
    ),
    (
        "heal",
        [
            "--adversary=WorstLogitsSelector",
            "--adversary.system_knowledge=output_aware",
            "--unlearn=Influence",
            "--unlearn.depth=5",
            "--twins.metric=FeatCosine",
            "--heal.epochs=1",
            "--heal.gold=false",
        ],
    ),
    ("unlearn", ["--unlearn=Naive", "--gold=true", "--attack_strength=true"]),
    ("unlearn", ["--unlearn=SISA", "--unlearn.shards=2", "--unlearn.slices=2"]),
    ("stream", ["--unlearn=Fisher", "--stream.heal=true", "--stream.round_size=4", "--twins.metric=RawL2"]),
    # the newer methods, one epoch each (scrub also heals: its teacher and student models, then the fine-tune)
    (
        "heal",
        [
            "--unlearn=SCRUB",
            "--unlearn.epochs=1",
            "--unlearn.msteps=1",
            "--twins.metric=RawMahalanobis",
            "--heal.epochs=1",
            "--heal.gold=false",
        ],
    ),
    ("unlearn", ["--unlearn=Finetune", "--unlearn.epochs=1"]),
    ("unlearn", ["--unlearn=NegGradPlus", "--unlearn.epochs=1"]),
    ("unlearn", ["--unlearn=SalUn", "--unlearn.epochs=1"]),
    ("unlearn", ["--unlearn=SSD"]),
]


def _check(in_tmp, configs_dir, baseline, accelerator, subcommand, options):
    run = in_tmp / f"{subcommand}-{accelerator}"
    code = main([subcommand, *_probe(in_tmp, configs_dir, baseline, accelerator, *options), f"--run_dir={run}"])
    assert code == 0
    assert DeviceProbe.calls > 0
    assert DeviceProbe.seen == {(accelerator, torch.float64)}, DeviceProbe.seen
    record = json.loads((run / "results.json").read_text())
    assert record["precision"] == "64-true" and record["device"].startswith(accelerator)
    if subcommand != "stream":  # the MIA ran on that device too
        assert 0.0 <= record["unlearned/mia/auc"] <= 1.0


@pytest.mark.parametrize("subcommand, options", PHASES, ids=[f"{s}-{o[0].split('=')[1]}" for s, o in PHASES])
def test_every_phase_runs_in_the_trainers_precision_on_cpu(in_tmp, configs_dir, baseline, subcommand, options):
    _check(in_tmp, configs_dir, baseline, "cpu", subcommand, options)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("subcommand, options", PHASES, ids=[f"{s}-{o[0].split('=')[1]}" for s, o in PHASES])
def test_every_phase_runs_on_the_gpu(in_tmp, configs_dir, baseline, subcommand, options):
    _check(in_tmp, configs_dir, baseline, "cuda", subcommand, options)
