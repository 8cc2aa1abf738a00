import gc
import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# the tests' own callbacks, trusted the way a user trusts theirs (configs may name only allowlisted classes)
os.environ.setdefault("HEALING_PL_ALLOW_IMPORTS", "_ranks.RaiseOnRank,test_devices.DeviceProbe")


def _runs_tests(config) -> bool:
    """Whether this process imports and runs the test files: an xdist worker, or the one process of a serial run
    (not the xdist controller, which never imports torch)."""
    return bool(os.environ.get("PYTEST_XDIST_WORKER")) or not config.getoption("numprocesses", default=None)


def pytest_configure(config):
    if _runs_tests(config):
        gc.disable()  # while the test files import torch and Lightning, as healing-pl does (healing_pl.main.main)


def pytest_collection_finish(session):
    """In each process that runs tests, once the test files are imported:

    - one torch thread: the tests train tiny models, where a second thread buys little, and on a shared machine two
      spinning OpenMP threads per process slow everything down tenfold;
    - the heap of imports frozen and the collector on again, as ``healing-pl`` does with its own
      (``healing_pl.main.settle_imports``): full collections and the worker's exit then skip the 740,000 objects
      torch and Lightning leave, and a forked grid run or ``ddp_fork`` rank copies fewer pages.
    """
    import torch

    from healing_pl.main import settle_imports

    torch.set_num_threads(1)
    settle_imports()


#: the test files that take 4 s or more with two workers, longest first (measured: about 36, 26, 22, 20, 16, 15, 10, 9,
#: 9, 8, 8, 7, 7, 6, 6, 5, 5, 5, 5, 4, 4 and 4 s); the others follow in collection order. The two workers take files
#: in this order as they free up, so the longest start first, and the short ones even out the end: the last file
#: left, while the other worker idles, is a short one (with only the longest seven first, an unlearning file of
#: 7 s ran alone at the end)
LONGEST_FIRST = (
    "test_grid.py",
    "test_distributed.py",
    "test_pipeline.py",
    "test_devices.py",
    "test_bad_input.py",
    "test_console.py",
    "test_calibrate.py",
    "test_aware.py",
    "test_influence_conventions.py",
    "test_requests.py",
    "test_dashboard.py",
    "test_sisa.py",
    "test_security.py",
    "test_modern.py",
    "test_registries.py",
    "test_divergence.py",
    "test_mia_mislabelled.py",
    "test_mia_records.py",
    "test_naive.py",
    "test_wandb.py",
    "test_lissa.py",
    "test_cli.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a fresh folder, so runs/ and data/ land in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def configs_dir():
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.fixture(scope="session")
def digits_baseline(tmp_path_factory, configs_dir):
    """The checkpoint of ``healing-pl fit`` on the digits config for one epoch, trained once per test session and
    shared by every test file and every xdist worker (a file lock makes one worker train it while the others wait).

    The checkpoint is an input: a test that tampers with a checkpoint copies it first.
    """
    from filelock import FileLock

    from healing_pl.main import main

    root = tmp_path_factory.getbasetemp()
    shared = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root  # the workers' common folder
    run = shared / "digits-baseline-1ep"
    checkpoint = run / "checkpoints" / "last.ckpt"
    with FileLock(f"{run}.lock"):
        if not (run / "results.json").exists():
            args = ["fit", "--config", f"{configs_dir}/digits.yaml", f"--run_dir={run}", "--trainer.max_epochs=1"]
            assert main([*args, "--trainer.enable_progress_bar=false", "--wandb.enabled=false"]) == 0
    return checkpoint


def pytest_sessionfinish(session):
    """Freeze what the tests left as well: the process's exit then skips a last walk over its heap (with torch
    loaded, about a second per process at the end of a run)."""
    gc.freeze()
