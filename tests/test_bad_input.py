"""Bad input, through the CLI: one sentence on stderr, exit status 2, and not a file created or changed.

Each case runs ``healing-pl`` in a fresh folder that holds the inputs the cases need (broken checkpoints,
an image folder with a corrupt PNG, grid and report inputs) and compares a snapshot of the folder tree
(paths, sizes and modification times) before and after.
"""

import os

import pytest
import torch
from PIL import Image

from healing_pl.main import main

QUIET = ["--wandb.enabled=false", "--trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, configs_dir):
    """A 1-epoch digits baseline, one trained on another dataset and one on another image size."""
    root = tmp_path_factory.mktemp("bad-input-baselines")
    digits = f"{configs_dir}/digits.yaml"
    runs = {
        "ckpt": ["--config", digits],
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
    return paths


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
        "nocfg": "config: nowhere.yaml\naxes:\n  m:\n    - {twins.metric: none}\n",
        "axes_scalar": f"config: {cfg}\naxes:\n  m: 3\n",
        "axes_not_map": f"config: {cfg}\naxes: [1, 2]\n",
        "axis_items": f"config: {cfg}\naxes:\n  m: [none, raw_l2]\n",
        "command": f"config: {cfg}\ncommand: fit\naxes:\n  m:\n    - {{twins.metric: none}}\n",
        "list": "- config\n- axes\n",
        "nokeys": f"config: {cfg}\n",
        "yaml": "config: [unclosed\n",
        "override": f"config: {cfg}\naxes:\n  m:\n    - {{twins.metrc: none}}\n",
    }
    for name, text in grids.items():
        (folder / f"grid_{name}.yaml").write_text(text)


def _snapshot(folder) -> dict:
    tree = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            tree[os.path.relpath(path, folder)] = (st.st_size if name in filenames else -1, st.st_mtime_ns)
    return tree


C = "{config}"  # the digits config
FIT = ["fit", "--config", C]
CK = "--ckpt_path={ckpt}"
UNLEARN = ["unlearn", "--config", C, CK]
HEAL = ["heal", "--config", C, CK]
STREAM = ["stream", "--config", C, CK]

CASES = {
    # parser errors: typos, unknown keys, wrong types, unknown choices
    "fit-typo": (FIT + ["--model.lrr=0.1"], "lrr"),
    "fit-unknown-group": (FIT + ["--modle.lr=0.1"], "modle"),
    "fit-type-lr": (FIT + ["--model.lr=fast"], "lr"),
    "fit-type-batch": (FIT + ["--data.batch_size=big"], "batch_size"),
    "fit-missing-config": (["fit", "--config", "nowhere.yaml"], "nowhere.yaml"),
    "fit-unknown-dataset": (FIT + ["--data.dataset=mnsit"], "mnsit"),
    "fit-unknown-backbone": (FIT + ["--model.backbone=resnet5O"], "resnet5O"),
    "unknown-subcommand": (["fitt", "--config", C], "fitt"),
    "unlearn-unknown-method": (UNLEARN + ["--unlearn.method=fishr"], "fishr"),
    "unlearn-type-repeats": (UNLEARN + ["--unlearn.repeats=many"], "repeats"),
    "unlearn-unknown-selector": (UNLEARN + ["--adversary.selector=worst"], "worst"),
    "heal-unknown-metric": (HEAL + ["--twins.metric=raw_l3"], "raw_l3"),
    "heal-unknown-policy": (HEAL + ["--twins.policy=twin"], "twin"),
    "stream-unknown-order": (STREAM + ["--stream.order=random"], "order"),
    "heal-typo": (HEAL + ["--heal.epochz=2"], "epochz"),
    # values out of range
    "fit-batch-0": (FIT + ["--data.batch_size=0"], "batch_size"),
    "fit-max-epochs-0": (FIT + ["--trainer.max_epochs=0"], "max_epochs"),
    "fit-splits-do-not-fit": (FIT + ["--data.primary=0.9", "--data.backup=0.2"], "splits"),
    "fit-primary-negative": (FIT + ["--data.primary=-3"], "primary"),
    "fit-no-test": (FIT + ["--data.test=0"], "test"),
    "fit-image-size-0": (FIT + ["--data.image_size=0"], "image_size"),
    "fit-lr-0": (FIT + ["--model.lr=0"], "lr"),
    "unlearn-budget-0": (UNLEARN + ["--adversary.budget=0"], "budget"),
    "unlearn-budget-too-big": (UNLEARN + ["--adversary.budget=5000"], "budget"),
    "unlearn-budget-fraction": (UNLEARN + ["--adversary.budget=1.5"], "budget"),
    "unlearn-target-class": (UNLEARN + ["--adversary.selector=class", "--adversary.target_class=12"], "target_class"),
    "unlearn-no-target-class": (UNLEARN + ["--adversary.selector=class"], "target_class"),
    "unlearn-knowledge": (UNLEARN + ["--adversary.selector=worst_logits"], "system_knowledge"),
    "unlearn-repeats-0": (UNLEARN + ["--unlearn.repeats=0"], "repeats"),
    "unlearn-scale-0": (UNLEARN + ["--unlearn.scale=0"], "scale"),
    "unlearn-sisa-shard": (UNLEARN + ["--unlearn.method=sisa", "--unlearn.sisa_shard=7"], "sisa_shard"),
    "heal-epochs-0": (HEAL + ["--heal.epochs=0"], "epochs"),
    "heal-epochs-negative": (HEAL + ["--heal.epochs=-2"], "epochs"),
    "heal-lr-0": (HEAL + ["--heal.lr=0"], "lr"),
    "heal-k-0": (HEAL + ["--twins.k=0"], "twins.k"),
    "stream-heal-epochs-0": (STREAM + ["--stream.heal_epochs=0"], "heal_epochs"),
    "stream-benign-ratio": (STREAM + ["--stream.benign_ratio=1.5"], "benign_ratio"),
    "stream-round-size-0": (STREAM + ["--stream.round_size=0"], "round_size"),
    # checkpoints
    "unlearn-no-ckpt": (["unlearn", "--config", C], "ckpt_path"),
    "unlearn-ckpt-missing": (["unlearn", "--config", C, "--ckpt_path=missing.ckpt"], "does not exist"),
    "unlearn-ckpt-empty": (["unlearn", "--config", C, "--ckpt_path=empty.ckpt"], "empty.ckpt"),
    "heal-ckpt-truncated": (["heal", "--config", C, "--ckpt_path=truncated.ckpt"], "truncated.ckpt"),
    "heal-ckpt-text": (["heal", "--config", C, "--ckpt_path=notes.txt"], "not a checkpoint"),
    "stream-ckpt-tensor": (["stream", "--config", C, "--ckpt_path=tensor.ckpt"], "checkpoint"),
    "unlearn-ckpt-dict": (["unlearn", "--config", C, "--ckpt_path=dict.ckpt"], "checkpoint"),
    "unlearn-ckpt-dataset": (["unlearn", "--config", C, "--ckpt_path={other_dataset}"], "dataset"),
    "heal-ckpt-dataset": (["heal", "--config", C, "--ckpt_path={other_dataset}"], "dataset"),
    "stream-ckpt-image-size": (["stream", "--config", C, "--ckpt_path={other_size}"], "image size"),
    "test-ckpt-dataset": (["test", "--config", C, "--ckpt_path={other_dataset}"], "dataset"),
    "validate-ckpt-image-size": (["validate", "--config", C, "--ckpt_path={other_size}"], "image size"),
    "test-ckpt-missing": (["test", "--config", C, "--ckpt_path=missing.ckpt"], "does not exist"),
    "test-ckpt-truncated": (["test", "--config", C, "--ckpt_path=truncated.ckpt"], "truncated.ckpt"),
    "validate-ckpt-empty": (["validate", "--config", C, "--ckpt_path=empty.ckpt"], "empty.ckpt"),
    "fit-ckpt-text": (FIT + ["--ckpt_path=notes.txt"], "not a checkpoint"),
    # run folders
    "fit-run-dir-is-file": (FIT + ["--run_dir=afile"], "afile"),
    "fit-run-dir-under-file": (FIT + ["--run_dir=afile/run"], "afile"),
    "heal-run-dir-is-file": (HEAL + ["--run_dir=afile"], "afile"),
    "unlearn-run-dir-under-file": (UNLEARN + ["--run_dir=afile/deeper/run"], "afile"),
    # image folders
    "fit-corrupt-png": (FIT + ["--data.dataset=imagefolder", "--data.root=imgs", "--data.image_size=8"], "broken.png"),
    "fit-no-class-folders": (FIT + ["--data.dataset=imagefolder", "--data.root=noclasses"], "class folder"),
    "fit-imagefolder-no-root": (FIT + ["--data.dataset=imagefolder"], "root"),
    "fit-dataset-missing": (FIT + ["--data.dataset=cifar10", "--data.root=nowhere"], "nowhere"),
    # grid
    "grid-missing-file": (["grid", "nowhere.yaml"], "nowhere.yaml"),
    "grid-missing-config": (["grid", "grid_nocfg.yaml"], "nowhere.yaml"),
    "grid-axes-scalar": (["grid", "grid_axes_scalar.yaml"], "axes"),
    "grid-axes-not-mapping": (["grid", "grid_axes_not_map.yaml"], "axes"),
    "grid-axis-items": (["grid", "grid_axis_items.yaml"], "axes"),
    "grid-unknown-command": (["grid", "grid_command.yaml"], "command"),
    "grid-not-mapping": (["grid", "grid_list.yaml"], "mapping"),
    "grid-no-axes": (["grid", "grid_nokeys.yaml"], "axes"),
    "grid-bad-yaml": (["grid", "grid_yaml.yaml"], "YAML"),
    "grid-no-argument": (["grid"], "grid"),
    "grid-unknown-option": (["grid", "grid_nokeys.yaml", "--outt=x"], "outt"),
    # report
    "report-empty-folder": (["report", "emptyruns"], "no results"),
    "report-malformed": (["report", "badruns"], "JSON"),
    "report-not-a-record": (["report", "listruns"], "record"),
    "report-missing": (["report", "nowhere"], "nowhere"),
    "report-no-argument": (["report"], "paths"),
    "report-output-under-file": (["report", "badruns", "--output=afile/report.md"], "afile"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_stops_with_one_sentence_and_touches_nothing(in_tmp, configs_dir, checkpoints, capsys, case):
    args, word = CASES[case]
    _inputs(in_tmp, checkpoints["ckpt"], configs_dir)
    subs = {"config": f"{configs_dir}/digits.yaml", **checkpoints}
    argv = [a.format(**subs) for a in args]
    if argv[0] not in ("grid", "report"):
        argv += QUIET
    before = _snapshot(in_tmp)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("healing-pl"), err
    assert word.lower() in lines[0].lower(), err
    assert _snapshot(in_tmp) == before


def test_report_output_that_cannot_be_written_touches_nothing(in_tmp, capsys):
    (in_tmp / "afile").write_text("x")
    (in_tmp / "runs" / "r").mkdir(parents=True)
    (in_tmp / "runs" / "r" / "results.json").write_text('{"phase": "fit", "test/acc": 0.5}')
    before = _snapshot(in_tmp)
    code = main(["report", "runs", "--output=afile/report.md"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "afile" in err
    assert _snapshot(in_tmp) == before
