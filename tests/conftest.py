import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# One thread: the tests train tiny models, where a second thread buys little, and on a shared
# machine two spinning OpenMP threads per process slow everything down tenfold.
torch.set_num_threads(1)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a fresh folder, so runs/ and data/ land in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def configs_dir():
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
