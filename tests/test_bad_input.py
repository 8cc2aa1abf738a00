"""Bad input, through the CLI: one sentence on stderr, exit status 2, and not a file created or changed.

Each case runs ``healing-pl`` in a fresh folder that holds the inputs the cases need (broken checkpoints,
an image folder with a corrupt PNG, grid and report inputs) and compares a snapshot of the folder tree
(paths, sizes and modification times) before and after.
"""

import os
import re

import pytest
import torch
from PIL import Image

from healing_pl.main import main

QUIET = ["--wandb.enabled=false", "--trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, configs_dir, digits_baseline):
    """A 1-epoch digits baseline (the session-wide one), one trained on another dataset and one on another image
    size."""
    root = tmp_path_factory.mktemp("bad-input-baselines")
    digits = f"{configs_dir}/digits.yaml"
    runs = {
        "other_size": ["--config", digits, "--data.image_size=12"],
        "other_dataset": [
            "--config",
            f"{configs_dir}/mnist5k.yaml",
            "--data.primary=200",
            "--data.backup=50",
            "--data.val=50",
            "--data.test=100",
        ],
    }
    paths = {}
    for name, args in runs.items():
        run = root / name
        assert main(["fit", *args, f"--run_dir={run}", "--trainer.max_epochs=1", *QUIET]) == 0
        paths[name] = str(run / "checkpoints" / "last.ckpt")
    return {"ckpt": str(digits_baseline), **paths}


def _inputs(folder, ckpt: str, configs_dir: str) -> None:
    """The files the bad inputs point at."""
    (folder / "empty.ckpt").write_bytes(b"")
    data = open(ckpt, "rb").read()
    (folder / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not a checkpoint\n")
    torch.save(torch.zeros(3), folder / "tensor.ckpt")
    torch.save({"state_dict": {}}, folder / "dict.ckpt")
    (folder / "afile").write_text("a file, not a folder\n")
    for cls in ("a", "b"):
        (folder / "imgs" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / "imgs" / cls / f"{i}.png")
    (folder / "imgs" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is no image")
    (folder / "noclasses").mkdir()
    (folder / "noclasses" / "stray.png").write_bytes(b"")
    (folder / "emptyruns").mkdir()
    (folder / "badruns" / "run").mkdir(parents=True)
    (folder / "badruns" / "run" / "results.json").write_text('{"phase": "heal", "test/acc": 0.')
    (folder / "listruns" / "run").mkdir(parents=True)
    (folder / "listruns" / "run" / "results.json").write_text("[1, 2, 3]")
    cfg = f"{configs_dir}/digits.yaml"
    grids = {
        "nocfg": "config: nowhere.yaml\naxes:\n  m:\n    - {twins.metric: null}\n",
        "axes_scalar": f"config: {cfg}\naxes:\n  m: 3\n",
        "axes_not_map": f"config: {cfg}\naxes: [1, 2]\n",
        "axis_items": f"config: {cfg}\naxes:\n  m: [none, raw_l2]\n",
        "command": f"config: {cfg}\ncommand: fit\naxes:\n  m:\n    - {{twins.metric: null}}\n",
        "list": "- config\n- axes\n",
        "nokeys": f"config: {cfg}\n",
        "yaml": "config: [unclosed\n",
        "override": f"config: {cfg}\naxes:\n  m:\n    - {{twins.metrc: none}}\n",
    }
    grids.update(
        {
            "lambda": f"config: {cfg}\naxes:\n  cb:\n    - {{trainer.callbacks: [{{class_path: LambdaCallback, "
            "init_args: {on_fit_start: os.system}}]}\n",
            "this": f'config: {cfg}\naxes:\n  cb:\n    - {{trainer.callbacks: \'{{"class_path": "this.X"}}\'}}\n',
            "escape": f"config: {cfg}\naxes:\n  n:\n    - {{wandb.name: 'a/../../../../../elsewhere/x'}}\n",
            "run_dir": f"config: {cfg}\naxes:\n  n:\n    - {{run_dir: /tmp/elsewhere}}\n",
            "dotdot": f"name: '..'\nconfig: {cfg}\naxes:\n  m:\n    - {{twins.metric: null}}\n",
            "shared": f"config: {cfg}\nheal: {{trainer.logger: {{class_path: subprocess.Popen}}}}\naxes:\n  m:\n"
            "    - {twins.metric: null}\n",
        }
    )
    for name, text in grids.items():
        (folder / f"grid_{name}.yaml").write_text(text)
    (folder / "inj_lambda.yaml").write_text(
        "trainer:\n  callbacks:\n    - class_path: LambdaCallback\n      init_args:\n        on_fit_start: os.system\n"
    )
    (folder / "inj_this.yaml").write_text("trainer:\n  callbacks:\n    - class_path: this.X\n")
    (folder / "goodruns" / "run").mkdir(parents=True)
    (folder / "goodruns" / "run" / "results.json").write_text('{"phase": "fit", "fit/test/acc": 0.5}')
    (folder / "typedruns" / "run").mkdir(parents=True)
    (folder / "typedruns" / "run" / "results.json").write_text('{"phase": "heal", "baseline/test/acc": "high"}')
    (folder / "typedruns2" / "run").mkdir(parents=True)
    (folder / "typedruns2" / "run" / "results.json").write_text('{"phase": "heal", "forget/count": "ten"}')
    requests = {
        "escape": '{"requester": "a", "image": "../../etc/passwd"}',
        "absolute": '{"requester": "a", "image": "/etc/shadow"}',
        "link": '{"requester": "a", "image": "link.png"}',
        "fifo": '{"requester": "a", "image": "pipe.png"}',
        "long": '{"requester": "' + "r" * 300 + '", "sample_id": 1}',
        "json": '{"requester": "a", "sample_id": ',
    }
    for name, text in requests.items():
        (folder / f"req_{name}.jsonl").write_text(text + "\n")
    primary = torch.load(ckpt, weights_only=False)["HealingDataModule"]["splits"]["primary"]
    (folder / "req_all.jsonl").write_text("".join(f'{{"requester": "a", "sample_id": {int(i)}}}\n' for i in primary))
    (folder / "link.png").symlink_to("/etc/passwd")
    os.mkfifo(folder / "pipe.png")


def _snapshot(folder) -> dict:
    tree = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            tree[os.path.relpath(path, folder)] = (st.st_size if name in filenames else -1, st.st_mtime_ns)
    return tree


C = "{config}"  # the digits config
OTHER_DATASET = "holds another model: it was trained on another dataset, 'mnist5k' (config: 'digits')"
OTHER_SIZE = "holds another model: it was trained on another image size, 12x12 pixels (config: 8x8)"
FIT = ["fit", "--config", C]
CK = "--ckpt_path={ckpt}"
UNLEARN = ["unlearn", "--config", C, CK]
HEAL = ["heal", "--config", C, CK]
STREAM = ["stream", "--config", C, CK]

CASES = {
    # parser errors: typos, unknown keys, wrong types, unknown choices
    "fit-typo": (FIT + ["--model.lrr=0.1"], "unknown option --model.lrr=0.1"),
    "fit-unknown-group": (FIT + ["--modle.lr=0.1"], "unknown option --modle.lr=0.1"),
    "fit-type-lr": (FIT + ["--model.lr=fast"], "model.lr must be of type float, got 'fast'"),
    "fit-type-batch": (FIT + ["--data.batch_size=big"], "data.batch_size must be of type int, got 'big'"),
    "fit-missing-config": (["fit", "--config", "nowhere.yaml"], "nowhere.yaml' does not exist"),
    "fit-unknown-dataset": (FIT + ["--data.dataset=mnsit"], "unknown dataset 'mnsit'; choose one of"),
    "fit-unknown-backbone": (FIT + ["--model.backbone=resnet5O"], "unknown backbone 'resnet5O'"),
    "unknown-subcommand": (["fitt", "--config", C], "invalid choice: 'fitt'"),
    "unlearn-unknown-method": (
        UNLEARN + ["--unlearn=fishr"],
        ("unknown unlearning method 'fishr' for --unlearn", "choose one of Naive, SISA, Fisher"),
    ),
    "unlearn-type-repeats": (UNLEARN + ["--unlearn.repeats=many"], "repeats must be of type int, got 'many'"),
    "unlearn-type-repeats-of-a-class": (
        UNLEARN + ["--unlearn=NegGradPlus", "--unlearn.repeats=many"],
        "repeats must be of type int, got 'many'",
    ),
    "unlearn-unknown-selector": (
        UNLEARN + ["--adversary=worst"],
        ("unknown adversary 'worst' for --adversary", "choose one of RandomSelector, ClassSelector"),
    ),
    "heal-unknown-metric": (
        HEAL + ["--twins.metric=raw_l3"],
        ("unknown twin metric 'raw_l3' for --twins.metric", "choose one of RawL2, RawMahalanobis"),
    ),
    "heal-unknown-policy": (HEAL + ["--twins.policy=twin"], ("unknown ", "'twin'")),
    "stream-unknown-order": (STREAM + ["--stream.order=random"], ("unknown ", "'random'")),
    "heal-typo": (HEAL + ["--heal.epochz=2"], "unknown option --heal.epochz=2"),
    # the method families: classes and their knobs
    "unlearn-knob-of-another-class": (
        UNLEARN + ["--unlearn", "Influence", "--unlearn.alpha", "5"],
        ("unlearn.alpha is not a knob of Influence (its knobs: damping,", "see --unlearn.help Influence"),
    ),
    "unlearn-knob-before-another-class": (
        UNLEARN + ["--unlearn.alpha", "5", "--unlearn", "Influence"],
        ("unlearn.alpha is not a knob of Influence (its knobs: damping,", "see --unlearn.help Influence"),
    ),
    "unlearn-repeats-of-a-deterministic-method": (
        UNLEARN + ["--unlearn=Finetune", "--unlearn.repeats=2"],
        "unlearn.repeats is not a knob of Finetune",
    ),
    "unlearn-knob-of-the-default-selector": (
        UNLEARN + ["--adversary.target_class=3"],
        "adversary.target_class is not a knob of RandomSelector",
    ),
    "unlearn-unknown-class": (
        UNLEARN + ["--unlearn", "Nope"],
        "unknown unlearning method 'Nope' for --unlearn; choose one of Naive, SISA, Fisher, Influence, Finetune, "
        "NegGradPlus, SCRUB, SalUn, SSD",
    ),
    "unlearn-old-method-option": (
        UNLEARN + ["--unlearn.method", "fisher"],
        ("--unlearn.method is gone; use unlearn: <Method>", "--unlearn Fisher"),
    ),
    "unlearn-old-knob": (
        UNLEARN + ["--unlearn=Finetune", "--unlearn.ft_epochs=1"],
        "--unlearn.ft_epochs is gone; use unlearn.epochs (with --unlearn Finetune)",
    ),
    "unlearn-old-selector-option": (
        UNLEARN + ["--adversary.selector=class"],
        ("--adversary.selector is gone; use adversary: <Selector>", "--adversary RandomSelector, ClassSelector"),
    ),
    "unlearn-old-selector-knob": (
        UNLEARN + ["--adversary.gradient_mode=influence"],
        "--adversary.gradient_mode is gone; use adversary.mode (with --adversary GradientSelector)",
    ),
    "heal-old-metric-value": (
        HEAL + ["--twins.metric", "raw_l2"],
        "--twins.metric raw_l2 names the class the old way; use --twins.metric RawL2",
    ),
    # values out of range
    "fit-batch-0": (
        FIT + ["--data.batch_size=0"],
        "batch_size and data.eval_batch_size must be positive, got batch_size=0",
    ),
    "fit-max-epochs-0": (FIT + ["--trainer.max_epochs=0"], "trainer.max_epochs must be at least 1"),
    "fit-splits-do-not-fit": (
        FIT + ["--data.primary=0.9", "--data.backup=0.2"],
        "the splits do not fit: primary=1617 + backup=359 + val=180 samples exceed the pool of 1797",
    ),
    "fit-primary-negative": (
        FIT + ["--data.primary=-3"],
        "split 'primary' must be a non-negative fraction or count, got -3",
    ),
    "fit-no-test": (FIT + ["--data.test=0"], "no test set of its own and the splits leave no test samples"),
    "fit-image-size-0": (FIT + ["--data.image_size=0"], "image_size must be at least 1 pixel, got 0"),
    "fit-lr-0": (FIT + ["--model.lr=0"], "learning rate must be positive, got lr=0"),
    "unlearn-budget-0": (UNLEARN + ["--adversary.budget=0"], "budget must be at least 1 sample, got 0"),
    "unlearn-budget-too-big": (
        UNLEARN + ["--adversary.budget=5000"],
        "budget (5000 samples) exceeds the training set (1078 samples)",
    ),
    "unlearn-budget-fraction": (UNLEARN + ["--adversary.budget=1.5"], "fractional budget must lie in (0, 1], got 1.5"),
    "unlearn-target-class": (
        UNLEARN + ["--adversary=ClassSelector", "--adversary.target_class=12"],
        "target_class 12 is outside [0, 10)",
    ),
    "unlearn-no-target-class": (UNLEARN + ["--adversary=ClassSelector"], "selector 'class' needs a target_class"),
    "unlearn-knowledge": (
        UNLEARN + ["--adversary=WorstLogitsSelector", "--adversary.system_knowledge=blind"],
        "needs system_knowledge 'output_aware' or more, but 'blind' was granted",
    ),
    "unlearn-repeats-0": (UNLEARN + ["--unlearn.repeats=0"], "repeats must be at least 1, got 0"),
    "unlearn-scale-0": (
        UNLEARN + ["--unlearn=Influence", "--unlearn.scale=0"],
        "unlearn.scale must be positive, got 0",
    ),
    "unlearn-sisa-shard": (UNLEARN + ["--unlearn=SISA", "--unlearn.shard=7"], "must lie in [0, 3), got 7"),
    "heal-epochs-0": (HEAL + ["--heal.epochs=0"], "heal.epochs must be at least 1, got 0"),
    "heal-epochs-negative": (HEAL + ["--heal.epochs=-2"], "heal.epochs must be at least 1, got -2"),
    "heal-lr-0": (HEAL + ["--heal.lr=0"], "heal.lr must be positive, got 0"),
    "heal-k-0": (HEAL + ["--twins.k=0"], "twins.k must be at least 1, got 0"),
    "stream-heal-epochs-0": (STREAM + ["--stream.heal_epochs=0"], "stream.heal_epochs must be at least 1, got 0"),
    "stream-benign-ratio": (STREAM + ["--stream.benign_ratio=1.5"], "benign_ratio must lie in [0, 1), got 1.5"),
    "stream-round-size-0": (STREAM + ["--stream.round_size=0"], "round_size must be at least 1, got 0"),
    # checkpoints
    "unlearn-no-ckpt": (["unlearn", "--config", C], "pass the baseline checkpoint with --ckpt_path"),
    "unlearn-ckpt-missing": (
        ["unlearn", "--config", C, "--ckpt_path=missing.ckpt"],
        "checkpoint 'missing.ckpt' does not exist",
    ),
    "unlearn-ckpt-empty": (
        ["unlearn", "--config", C, "--ckpt_path=empty.ckpt"],
        "checkpoint 'empty.ckpt' is empty, not a checkpoint",
    ),
    "heal-ckpt-truncated": (
        ["heal", "--config", C, "--ckpt_path=truncated.ckpt"],
        "checkpoint 'truncated.ckpt' is corrupt or not a checkpoint",
    ),
    "heal-ckpt-text": (
        ["heal", "--config", C, "--ckpt_path=notes.txt"],
        "checkpoint 'notes.txt' is corrupt or not a checkpoint",
    ),
    "stream-ckpt-tensor": (
        ["stream", "--config", C, "--ckpt_path=tensor.ckpt"],
        "checkpoint 'tensor.ckpt' is not a healing-pl Classifier checkpoint",
    ),
    "unlearn-ckpt-dict": (
        ["unlearn", "--config", C, "--ckpt_path=dict.ckpt"],
        "checkpoint 'dict.ckpt' is not a healing-pl Classifier checkpoint",
    ),
    "unlearn-ckpt-dataset": (["unlearn", "--config", C, "--ckpt_path={other_dataset}"], OTHER_DATASET),
    "heal-ckpt-dataset": (["heal", "--config", C, "--ckpt_path={other_dataset}"], OTHER_DATASET),
    "stream-ckpt-image-size": (["stream", "--config", C, "--ckpt_path={other_size}"], OTHER_SIZE),
    "test-ckpt-dataset": (["test", "--config", C, "--ckpt_path={other_dataset}"], OTHER_DATASET),
    "validate-ckpt-image-size": (["validate", "--config", C, "--ckpt_path={other_size}"], OTHER_SIZE),
    "test-ckpt-missing": (
        ["test", "--config", C, "--ckpt_path=missing.ckpt"],
        "checkpoint 'missing.ckpt' does not exist",
    ),
    "test-ckpt-truncated": (
        ["test", "--config", C, "--ckpt_path=truncated.ckpt"],
        "checkpoint 'truncated.ckpt' is corrupt or not a checkpoint",
    ),
    "validate-ckpt-empty": (
        ["validate", "--config", C, "--ckpt_path=empty.ckpt"],
        "checkpoint 'empty.ckpt' is empty, not a checkpoint",
    ),
    "fit-ckpt-text": (FIT + ["--ckpt_path=notes.txt"], "checkpoint 'notes.txt' is corrupt or not a checkpoint"),
    # run folders
    "fit-run-dir-is-file": (FIT + ["--run_dir=afile"], "run_dir 'afile' is an existing file, not a folder"),
    "fit-run-dir-under-file": (
        FIT + ["--run_dir=afile/run"],
        "run_dir 'afile/run' cannot be created: 'afile' is a file, not a folder",
    ),
    "heal-run-dir-is-file": (HEAL + ["--run_dir=afile"], "run_dir 'afile' is an existing file, not a folder"),
    "unlearn-run-dir-under-file": (
        UNLEARN + ["--run_dir=afile/deeper/run"],
        "run_dir 'afile/deeper/run' cannot be created: 'afile' is a file, not a folder",
    ),
    # image folders
    "fit-corrupt-png": (
        FIT + ["--data.dataset=imagefolder", "--data.root=imgs", "--data.image_size=8"],
        "image 'imgs/b/broken.png' is corrupt or not an image",
    ),
    "fit-no-class-folders": (
        FIT + ["--data.dataset=imagefolder", "--data.root=noclasses"],
        "dataset 'imagefolder' at 'noclasses' has no images in class folders",
    ),
    "fit-imagefolder-no-root": (FIT + ["--data.dataset=imagefolder"], "dataset 'imagefolder' needs --data.root"),
    "fit-dataset-missing": (
        FIT + ["--data.dataset=cifar10", "--data.root=nowhere"],
        "dataset 'cifar10' not found at 'nowhere'",
    ),
    # grid
    "grid-missing-file": (["grid", "nowhere.yaml"], "grid file 'nowhere.yaml' does not exist"),
    "grid-missing-config": (
        ["grid", "grid_nocfg.yaml"],
        "the grid's config 'nowhere.yaml' (in 'grid_nocfg.yaml') does not exist",
    ),
    "grid-axes-scalar": (
        ["grid", "grid_axes_scalar.yaml"],
        ("axes entry 'm' must be a non-empty list of override mappings", "got 3."),
    ),
    "grid-axes-not-mapping": (
        ["grid", "grid_axes_not_map.yaml"],
        "axes must be a mapping of axis name: list of override mappings, got [1, 2]",
    ),
    "grid-axis-items": (
        ["grid", "grid_axis_items.yaml"],
        ("axes entry 'm' must be a non-empty list of override mappings", "got ['none', 'raw_l2']"),
    ),
    "grid-unknown-command": (["grid", "grid_command.yaml"], "command must be heal, unlearn or stream, got 'fit'"),
    "grid-not-mapping": (
        ["grid", "grid_list.yaml"],
        "'grid_list.yaml' must be a mapping with 'config' and 'axes' keys",
    ),
    "grid-no-axes": (
        ["grid", "grid_nokeys.yaml"],
        "'grid_nokeys.yaml' must be a mapping with 'config' and 'axes' keys",
    ),
    "grid-bad-yaml": (["grid", "grid_yaml.yaml"], "'grid_yaml.yaml' is not valid yaml at line 2"),
    "grid-no-argument": (["grid"], "the following arguments are required: grid"),
    "grid-unknown-option": (["grid", "grid_nokeys.yaml", "--outt=x"], "unrecognized arguments: --outt=x"),
    # report
    "report-empty-folder": (["report", "emptyruns"], "no results found: no results.json under emptyruns"),
    "report-malformed": (["report", "badruns"], "'badruns/run/results.json' is not valid json"),
    "report-not-a-record": (
        ["report", "listruns"],
        "'listruns/run/results.json' is not a results record (a json object), but a list",
    ),
    "report-missing": (["report", "nowhere"], "'nowhere' is neither a results.json file nor a folder"),
    "report-no-argument": (["report"], "the following arguments are required: paths"),
    # code from configuration: refused before anything is imported or written
    "fit-callback-unknown-module": (
        FIT + ['--trainer.callbacks={"class_path": "this.X"}'],
        ("--trainer.callbacks names 'this.X'", "does not import from a configuration"),
    ),
    "fit-lambda-callback-os-system": (
        FIT
        + [
            '--trainer.callbacks={"class_path": "lightning.pytorch.callbacks.LambdaCallback", '
            '"init_args": {"on_fit_start": "os.system"}}'
        ],
        "names 'lightning.pytorch.callbacks.LambdaCallback'",
    ),
    "fit-lambda-callback-short-name": (
        FIT + ['--trainer.callbacks={"class_path": "LambdaCallback", "init_args": {"on_fit_start": "os.system"}}'],
        "does not import from a configuration",
    ),
    "fit-logger-subprocess": (
        FIT + ['--trainer.logger={"class_path": "subprocess.Popen"}'],
        "--trainer.logger names 'subprocess.Popen'",
    ),
    "fit-callback-eval": (FIT + ['--trainer.callbacks={"class_path": "builtins.eval"}'], "names 'builtins.eval'"),
    "fit-callback-list-pickle": (
        FIT
        + [
            '--trainer.callbacks=[{"class_path": "lightning.pytorch.callbacks.ModelSummary"}, '
            '{"class_path": "pickle.loads"}]'
        ],
        "names 'pickle.loads'",
    ),
    "fit-profiler-importlib": (
        FIT + ['--trainer.profiler={"class_path": "importlib.import_module"}'],
        "names 'importlib.import_module'",
    ),
    "fit-plugins-ctypes": (FIT + ['--trainer.plugins={"class_path": "ctypes.CDLL"}'], "names 'ctypes.CDLL'"),
    "unlearn-method-os-system": (UNLEARN + ['--unlearn={"class_path": "os.system"}'], "names 'os.system'"),
    "unlearn-adversary-popen": (
        UNLEARN + ['--adversary={"class_path": "subprocess.Popen"}'],
        "names 'subprocess.Popen'",
    ),
    "heal-metric-posix": (HEAL + ['--twins.metric={"class_path": "posix.system"}'], "names 'posix.system'"),
    "fit-config-lambda": (
        FIT + ["--config=inj_lambda.yaml"],
        "trainer.callbacks in 'inj_lambda.yaml' names 'LambdaCallback'",
    ),
    "fit-config-unknown-module": (FIT + ["--config=inj_this.yaml"], "in 'inj_this.yaml' names 'this.X'"),
    "heal-config-lambda": (HEAL + ["--config=inj_lambda.yaml"], "names 'LambdaCallback'"),
    "grid-lambda": (["grid", "grid_lambda.yaml"], "names 'LambdaCallback'"),
    "grid-lambda-dry-run": (["grid", "grid_lambda.yaml", "--dry_run"], "names 'LambdaCallback'"),
    "grid-lambda-export-sweep": (["grid", "grid_lambda.yaml", "--export-sweep=s.yaml"], "names 'LambdaCallback'"),
    "grid-unknown-module-dry-run": (["grid", "grid_this.yaml", "--dry_run"], "names 'this.X'"),
    "grid-shared-popen": (["grid", "grid_shared.yaml", "--dry_run"], "names 'subprocess.Popen'"),
    # run names and folders stay inside --out
    "grid-path-escape": (["grid", "grid_escape.yaml", "--out=out"], "cannot be a folder name"),
    "grid-path-escape-dry-run": (["grid", "grid_escape.yaml", "--dry_run"], "cannot be a folder name"),
    "grid-path-escape-export-sweep": (["grid", "grid_escape.yaml", "--export-sweep=s.yaml"], "cannot be a folder"),
    "grid-run-dir-override": (["grid", "grid_run_dir.yaml"], "sets run_dir, which the grid chooses"),
    "grid-name-dotdot": (["grid", "grid_dotdot.yaml"], "the grid's name '..' cannot be a folder name"),
    "fit-run-dir-proc": (FIT + ["--run_dir=/proc/x"], "run_dir '/proc/x' cannot be created"),
    "heal-run-dir-proc": (HEAL + ["--run_dir=/proc/healing/run"], "run_dir '/proc/healing/run' cannot be created"),
    # requests files
    "unlearn-requests-escape": (
        UNLEARN + ["--requests=req_escape.jsonl"],
        "image '../../etc/passwd' lies outside the requests root",
    ),
    "unlearn-requests-absolute": (
        UNLEARN + ["--requests=req_absolute.jsonl"],
        "image '/etc/shadow' lies outside the requests root",
    ),
    "heal-requests-symlink-out": (HEAL + ["--requests=req_link.jsonl"], "image 'link.png' lies outside"),
    "unlearn-requests-fifo": (UNLEARN + ["--requests=req_fifo.jsonl"], "image 'pipe.png' cannot be read"),
    "stream-requests-long-requester": (
        STREAM + ["--requests=req_long.jsonl"],
        "has a requester longer than 256 characters",
    ),
    "heal-requests-not-json": (HEAL + ["--requests=req_json.jsonl"], "line 1 of requests file"),
    "unlearn-requests-missing": (UNLEARN + ["--requests=nowhere.jsonl"], "nowhere.jsonl"),
    # more values out of range
    "heal-lr-negative": (HEAL + ["--heal.lr=-1"], "heal.lr must be positive, got -1"),
    "fit-lr-negative": (FIT + ["--model.lr=-0.1"], "learning rate must be positive"),
    "unlearn-budget-negative": (UNLEARN + ["--adversary.budget=-3"], "budget"),
    "heal-k-negative": (HEAL + ["--twins.k=-1"], "twins.k must be at least 1, got -1"),
    "stream-round-size-negative": (STREAM + ["--stream.round_size=-2"], "round_size must be at least 1"),
    # checks that must run before the first file (ledger line, W&B folder) is written
    "heal-k-too-big": (
        HEAL + ["--twins.metric=RawL2", "--twins.policy=twins", "--twins.k=100000"],
        "twins.k 100000 asks for more surrogates per sample than the",
    ),
    "unlearn-budget-whole": (
        UNLEARN + ["--adversary.budget=1.0"],
        "adversary.budget 1.0 asks for 1078 of the 1078 training samples; nothing would remain to train on",
    ),
    "unlearn-requests-whole-training-set": (
        UNLEARN + ["--requests=req_all.jsonl"],
        "requests file 'req_all.jsonl' names every one of the 1078 training samples",
    ),
    "heal-requests-whole-training-set": (HEAL + ["--requests=req_all.jsonl"], "names every one of the 1078"),
    "heal-budget-whole": (HEAL + ["--adversary.budget=1078"], "asks for 1078 of the 1078 training samples"),
    # ledger
    "ledger-no-path": (["ledger", "verify"], "the following arguments are required: path"),
    "ledger-no-command": (["ledger"], "the following arguments are required: command"),
    "ledger-unknown-command": (["ledger", "check", "x"], "invalid choice: 'check'"),
    "ledger-missing": (["ledger", "verify", "nowhere"], "there is no ledger at nowhere/ledger.jsonl"),
    # report
    "report-output-proc": (["report", "goodruns", "--output=/proc/x.md"], "--output '/proc/x.md' cannot be written"),
    "report-output-sys": (["report", "goodruns", "--output=/sys/x.json"], "--output '/sys/x.json' cannot be written"),
    "report-wrong-types": (
        ["report", "typedruns"],
        "'typedruns/run/results.json' is not a results record: baseline/test/acc holds \"high\", not a float",
    ),
    "report-wrong-types-count": (["report", "typedruns2"], 'forget/count holds "ten", not a int'),
    "report-output-is-folder": (["report", "listruns", "--output=emptyruns"], "--output 'emptyruns' is a folder"),
    "report-output-under-file": (
        ["report", "badruns", "--output=afile/report.md"],
        "--output 'afile/report.md' cannot be written: 'afile' is a file, not a folder",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_stops_with_one_sentence_and_touches_nothing(in_tmp, configs_dir, checkpoints, capsys, case):
    args, word = CASES[case]
    _inputs(in_tmp, checkpoints["ckpt"], configs_dir)
    subs = {"config": f"{configs_dir}/digits.yaml", **checkpoints}
    argv = []
    for a in args:  # str.replace, not format: JSON values carry braces of their own
        for key, value in subs.items():
            a = a.replace("{" + key + "}", value)
        argv.append(a)
    if argv[0] not in ("grid", "report", "ledger"):
        argv += QUIET
    before = _snapshot(in_tmp)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert re.match(r"healing-pl( grid| report| ledger| ledger verify)?: error: ", lines[0]) and lines[0].endswith(
        "."
    ), err
    for part in (word,) if isinstance(word, str) else word:  # the parts that say what is wrong with this input
        assert part.lower() in lines[0].lower(), err
    assert _snapshot(in_tmp) == before


def test_report_output_that_cannot_be_written_touches_nothing(in_tmp, capsys):
    (in_tmp / "afile").write_text("x")
    (in_tmp / "runs" / "r").mkdir(parents=True)
    (in_tmp / "runs" / "r" / "results.json").write_text('{"phase": "fit", "test/acc": 0.5}')
    before = _snapshot(in_tmp)
    code = main(["report", "runs", "--output=afile/report.md"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert (
        err
        == "healing-pl report: error: --output 'afile/report.md' cannot be written: 'afile' is a file, not a folder."
    )
    assert _snapshot(in_tmp) == before
