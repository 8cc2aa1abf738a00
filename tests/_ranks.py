"""Callbacks for the distributed tests, importable by spawned ranks (the tests put this folder on PYTHONPATH)."""

import lightning as L


class RaiseOnRank(L.Callback):
    """Raises on one rank when training starts: a rank that fails must make the whole command fail."""

    def __init__(self, rank: int = 1):
        self.rank = rank

    def on_train_start(self, trainer, pl_module):
        if trainer.global_rank == self.rank:
            raise RuntimeError(f"rank {self.rank} failed on purpose")
