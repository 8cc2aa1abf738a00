"""Run a phase once, on global rank zero, and hand its result to every rank; inner trainers.

Pre-fit phases (the adversary, the gold standard, unlearning, the twin search)
must run once: on one process they simply run; under DDP global rank zero runs
them and broadcasts the (picklable, CPU) result, and every other rank waits for
it. An error on rank zero reaches every rank, so all of them stop with the same
sentence instead of waiting forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def rank_zero_run(trainer, fn: Callable[[], T]) -> T:
    """``fn()`` on global rank zero, its result broadcast to every rank (errors too)."""
    payload: tuple[str, object] | None = None
    if trainer.is_global_zero:
        try:
            payload = ("ok", fn())
        except Exception as err:  # every rank must learn of it, or the others wait forever
            if trainer.world_size == 1:
                raise
            payload = ("error", err)
    if trainer.world_size > 1:
        payload = trainer.strategy.broadcast(payload, src=0)
    kind, value = payload
    if kind == "error":
        raise value
    return value


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict on the CPU (what travels between ranks and into caches)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def inner_trainer(trainer) -> dict:
    """Trainer keyword arguments for an inner training (gold standard, fine-tune) on this rank's device.

    The accelerator and precision are the outer trainer's; the device is the one this rank
    trains on, so nothing silently falls back to the CPU.
    """
    device = trainer.strategy.root_device
    devices = [device.index] if device.type != "cpu" and device.index is not None else 1
    return {"accelerator": device.type, "devices": devices, "precision": trainer.precision}
