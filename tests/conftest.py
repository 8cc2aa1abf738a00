import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a fresh folder, so runs/ and data/ land in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def configs_dir():
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
