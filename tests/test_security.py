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
def baseline(digits_baseline):
    return digits_baseline  # one session-wide digits baseline (tests/conftest.py); tests copy it to tamper


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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_honour_the_umask(tmp_path, umask, mode):
    from healing_pl.adversary.ledger import Ledger
    from healing_pl.files import save_torch, write_json
    from healing_pl.lock import RunLock

    old = os.umask(umask)
    try:
        paths = [write_json(tmp_path / "results.json", {"a": 1}), save_torch({"w": torch.zeros(1)}, tmp_path / "c.pt")]
        ledger = Ledger(tmp_path / "run")
        ledger.append_round({"round": 0})
        paths += [ledger.path, ledger.head_path]
        with RunLock(tmp_path / "locked") as lock:
            paths.append(lock.path)
            assert os.stat(lock.path).st_mode & 0o777 == mode
        for path in paths[:-1]:
            assert os.stat(path).st_mode & 0o777 == mode, path
    finally:
        os.umask(old)


INJECTION = [
    '--trainer.callbacks={"class_path": "this.X"}',
    '--trainer.callbacks={"class_path": "LambdaCallback", "init_args": {"on_fit_start": "os.system"}}',
    '--trainer.logger={"class_path": "subprocess.Popen", "init_args": {"args": "touch pwned"}}',
]


@pytest.mark.slow
@pytest.mark.parametrize("payload", INJECTION)
def test_injected_class_paths_are_refused_before_any_import(in_tmp, configs_dir, payload):
    """In a fresh interpreter: the payload's module is never imported and nothing is written."""
    import subprocess
    import sys

    code = (
        "import sys; from healing_pl.main import main; code = main(sys.argv[1:]); "
        "print('imported' if 'this' in sys.modules else 'clean'); sys.exit(code)"
    )
    args = ["fit", "--config", f"{configs_dir}/digits.yaml", "--run_dir=run", "--wandb.enabled=false", payload]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=in_tmp)
    assert out.returncode == 2, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "clean"
    assert "does not import from a configuration" in out.stderr.strip().splitlines()[-1]
    assert sorted(os.listdir(in_tmp)) == []


def test_the_allowlist_takes_registered_classes_and_trusted_paths_only(monkeypatch):
    from healing_pl.cli import ALLOW_IMPORTS_ENV, denied_import_path

    monkeypatch.delenv(ALLOW_IMPORTS_ENV, raising=False)
    assert denied_import_path("healing_pl.unlearning.fisher.Fisher", "unlearn") is None
    assert denied_import_path("Fisher", "unlearn") is None
    assert denied_import_path({"class_path": "lightning.pytorch.callbacks.EarlyStopping"}, "trainer.callbacks") is None
    assert denied_import_path("mylab.callbacks.Probe", "trainer.callbacks") == "mylab.callbacks.Probe"
    payload = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "os.system"}}
    assert denied_import_path(payload, "trainer.callbacks") == "os.system"  # a callable smuggled as an argument
    assert denied_import_path({"init_args": {"filename": "last.ckpt"}}, "trainer.callbacks") is None  # a file name
    monkeypatch.setenv(ALLOW_IMPORTS_ENV, "mylab.callbacks.Probe")
    assert denied_import_path("mylab.callbacks.Probe", "trainer.callbacks") is None
    assert denied_import_path("mylab.other.X", "trainer.callbacks") == "mylab.other.X"
    monkeypatch.setenv(ALLOW_IMPORTS_ENV, "not a path")
    with pytest.raises(ValueError, match="HEALING_PL_ALLOW_IMPORTS holds 'not a path'"):
        denied_import_path("x.Y", "trainer.callbacks")
    monkeypatch.delenv(ALLOW_IMPORTS_ENV)
    denied_import_path("x.Y", "trainer.callbacks")  # the policy back as it was for later tests
