"""Planted pickles never run: every cache and checkpoint path is read with ``weights_only=True`` and a file that is
not plain weights stops the command with one sentence; cache keys carry the code version; run folders are claimed
atomically."""

import glob
import os

import pytest
import torch

from healing_pl.main import main
from healing_pl.tracking import make_run_dir

QUIET = ["--trainer.enable_progress_bar=false", "--wandb.enabled=false"]


class Exploit:
    """A pickle that, when loaded without weights_only, writes a marker file (what an attacker's code would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path, marker):
    """Replace ``path`` with a torch file whose unpickling would run code."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"state_dict": Exploit(marker), "hyper_parameters": {}}, path)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, configs_dir):
    run = tmp_path_factory.mktemp("sec") / "fit"
    assert (
        main(["fit", "--config", f"{configs_dir}/digits.yaml", f"--run_dir={run}", "--trainer.max_epochs=1", *QUIET])
        == 0
    )
    return run / "checkpoints" / "last.ckpt"


def test_the_planted_pickle_is_real(tmp_path):
    marker = tmp_path / "ran"
    _plant(str(tmp_path / "x.pt"), marker)
    torch.load(tmp_path / "x.pt", weights_only=False)  # the unsafe way runs the attacker's code
    assert marker.exists()


def _heal(configs_dir, baseline, run, cache, *extra):
    return [
        "heal",
        "--config",
        f"{configs_dir}/digits.yaml",
        f"--ckpt_path={baseline}",
        f"--run_dir={run}",
        "--adversary=ClassSelector",
        "--adversary.target_class=3",
        "--adversary.budget=5",
        "--heal.epochs=1",
        "--unlearn=Fisher",
        "--unlearn.alpha=1e-6",
        "--twins.metric=null",
        f"--unlearn.cache_dir={cache}",
        *QUIET,
        *extra,
    ]


@pytest.mark.parametrize("kind", ["gold", "unlearned"])
def test_a_planted_pickle_in_a_cache_never_runs(in_tmp, configs_dir, baseline, capsys, kind):
    cache = in_tmp / "cache"
    assert main(_heal(configs_dir, baseline, in_tmp / "first", cache)) == 0
    (path,) = glob.glob(str(cache / f"{kind}-*.pt"))
    marker = in_tmp / "ran"
    _plant(path, marker)
    code = main(_heal(configs_dir, baseline, in_tmp / "second", cache))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not marker.exists()
    assert "cannot be loaded as plain weights" in err[-1] and os.path.basename(path) in err[-1]


def test_a_planted_pickle_as_checkpoint_never_runs(in_tmp, configs_dir, capsys):
    marker = in_tmp / "ran"
    _plant(str(in_tmp / "evil.ckpt"), marker)
    for subcommand in ("heal", "unlearn", "stream", "test"):
        code = main(
            [subcommand, "--config", f"{configs_dir}/digits.yaml", f"--ckpt_path={in_tmp / 'evil.ckpt'}", *QUIET]
        )
        assert code == 2 and not marker.exists(), subcommand
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith(
            f"healing-pl: error: checkpoint '{in_tmp / 'evil.ckpt'}' is corrupt or not a checkpoint ("
        ), (subcommand, last)


def test_a_planted_pickle_as_sisa_shard_or_stream_round_never_runs(in_tmp, configs_dir, baseline, capsys):
    cache = in_tmp / "cache"
    sisa = [
        "unlearn",
        "--config",
        f"{configs_dir}/digits.yaml",
        f"--ckpt_path={baseline}",
        "--unlearn=SISA",
        "--unlearn.shards=2",
        "--unlearn.slices=1",
        f"--unlearn.cache_dir={cache}",
        "--adversary.budget=3",
        *QUIET,
    ]
    assert main([*sisa, f"--run_dir={in_tmp / 'a'}"]) == 0
    marker = in_tmp / "ran"
    (shard,) = glob.glob(str(cache / "sisa-*" / "shard0.pt"))
    _plant(shard, marker)
    capsys.readouterr()
    assert main([*sisa, f"--run_dir={in_tmp / 'b'}"]) == 2 and not marker.exists()
    assert f"{shard} is not a readable SISA shard file" in capsys.readouterr().err.strip().splitlines()[-1]
    stream = [
        "stream",
        "--config",
        f"{configs_dir}/digits.yaml",
        f"--ckpt_path={baseline}",
        "--unlearn=Fisher",
        "--unlearn.alpha=1e-6",
        "--adversary.budget=4",
        "--stream.round_size=4",
        f"--unlearn.cache_dir={cache}",
        f"--run_dir={in_tmp / 's'}",
        *QUIET,
    ]
    assert main(stream) == 0
    rounds = glob.glob(str(in_tmp / "s" / "stream" / "round-*.pt"))
    assert sorted(os.path.basename(r) for r in rounds) == ["round-0000.pt", "round-0001.pt"], rounds
    for path in rounds:
        _plant(path, marker)
    assert main(stream) == 2  # a rerun resumes from the round checkpoints: the planted ones must not run
    assert not marker.exists()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"round checkpoint '{max(rounds)}' cannot be loaded as plain weights" in last, last


def test_cache_keys_change_with_the_code(monkeypatch):
    from healing_pl import codehash

    before = codehash.code_version("healing_pl.unlearning.naive")
    real = open
    codehash.code_version.cache_clear()

    def edited(path, mode="r", *args, **kwargs):
        handle = real(path, mode, *args, **kwargs)
        if str(path).endswith("naive.py") and "b" in mode:
            data = handle.read() + b"\n# an edit\n"
            handle.close()
            import io

            return io.BytesIO(data)
        return handle

    monkeypatch.setattr("builtins.open", edited)
    after = codehash.code_version("healing_pl.unlearning.naive")
    monkeypatch.undo()
    codehash.code_version.cache_clear()
    assert before != after and codehash.code_version("healing_pl.unlearning.naive") == before


def test_run_folders_are_claimed_atomically(in_tmp):
    claimed = {make_run_dir("runs", "digits-heal") for _ in range(5)}
    assert len(claimed) == 5 and all(os.path.isdir(p) for p in claimed)


def test_a_failed_command_leaves_no_claimed_folder(in_tmp, configs_dir, baseline):
    code = main(
        ["heal", "--config", f"{configs_dir}/digits.yaml", f"--ckpt_path={baseline}", "--adversary.budget=5000", *QUIET]
    )
    assert code == 2 and not (in_tmp / "runs").exists()
