"""What every SISA step shares: seeds, the device and precision, and building and snapshotting shard models.

Seeds
-----
Every random draw of SISA comes from a seed derived by :func:`seed_for` from the recipe's seed and the
place of the draw (``("init", seed, shard)``, ``("stage", seed, shard, stage)``, ...), so a shard, a stage
or a heal epoch can be rerun on its own and draw the very same numbers.

Device and precision
--------------------
Training, unlearning and healing run on the ``device`` given (a string or a
``torch.device``, e.g. the outer Lightning trainer's ``root_device``) and in
the ``dtype`` given (default: torch's default dtype): shard models are created
in it, floating inputs are cast to it.  Nothing falls back to the CPU: a model
on another device than the one asked for, or CUDA asked for where there is
none, stops with a ValueError.  Checkpoints are kept on the CPU.  On CUDA,
bit-for-bit exactness also needs deterministic kernels
(``torch.use_deterministic_algorithms(True)``).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from healing_pl.models.classifier import Classifier


# ---------------------------------------------------------------------- seeds
def seed_for(*parts) -> int:
    """A 63-bit seed derived from ``parts`` (e.g. ``("stage", seed, shard, stage)``), stable across runs."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _fork_rng(device: torch.device):
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device.index if device.index is not None else torch.cuda.current_device()])


# ------------------------------------------------------------ device, dtype
def _as_device(device) -> torch.device:
    """``device`` as a torch.device (CUDA with its index), or a ValueError where it cannot be used."""
    if device is None:
        raise ValueError("SISA needs a device to run on (e.g. 'cpu', 'cuda:0' or the trainer's root_device).")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"SISA was asked to run on '{device}', but CUDA is not available on this machine.")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def _as_dtype(dtype) -> torch.dtype:
    """``dtype`` (a torch dtype or its name, None for torch's default) as a floating torch.dtype."""
    if dtype is None:
        return torch.get_default_dtype()
    resolved = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"the SISA dtype must be a floating torch dtype such as torch.float64, got {dtype!r}.")
    return resolved


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _ids(ids) -> Tensor:
    return torch.as_tensor(ids, dtype=torch.long).flatten()


# ---------------------------------------------------------------- shard models
def _adam(model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
    hp = model.hparams
    return torch.optim.Adam(
        model.parameters(), lr=hp["lr"] if lr is None else lr, weight_decay=hp.get("weight_decay", 0.0)
    )


def _fresh_model(hparams: dict, init_seed: int, device: torch.device, dtype: torch.dtype) -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = Classifier(**hparams)
    return model.to(device=device, dtype=dtype)


def _model_from(hparams: dict, init_seed: int, weights: dict, device: torch.device, dtype: torch.dtype) -> Classifier:
    model = _fresh_model(hparams, init_seed, device, dtype)
    model.load_state_dict(weights)
    return model


def _restore(
    hparams: dict, init_seed: int, ckpt: dict, device: torch.device, dtype: torch.dtype
) -> tuple[Classifier, torch.optim.Optimizer]:
    model = _model_from(hparams, init_seed, ckpt["model"], device, dtype)
    optimizer = _adam(model)
    # deep copy: load_state_dict may alias the saved tensors, which Adam then updates in place
    optimizer.load_state_dict(copy.deepcopy(ckpt["optimizer"]))
    return model, optimizer


def _cpu(obj):
    """A copy of a (nested) state dict with every tensor copied to the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {"model": _cpu(model.state_dict()), "optimizer": _cpu(optimizer.state_dict())}
