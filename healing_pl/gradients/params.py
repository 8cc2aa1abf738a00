"""Parameter and batch helpers shared by the gradient math, the unlearning methods and the adversaries.

Everything here works on the *trainable* parameters of a model (those with
``requires_grad=True``) in ``model.named_parameters()`` order, which is also
the order of ``model.parameters()`` filtered to trainable ones.  A "flat"
vector is the concatenation of those parameters, each flattened.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn


def trainable_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs of ``model`` that require a gradient."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model`` that require a gradient, in order."""
    return [p for _, p in trainable_named_parameters(model)]


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate ``tensors`` into one flat vector."""
    if len(tensors) == 0:
        return torch.zeros(0)
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split the flat vector ``flat`` into views shaped like ``like``."""
    total = sum(t.numel() for t in like)
    if flat.numel() != total:
        raise ValueError(f"the flat vector has {flat.numel()} entries but the parameters have {total}.")
    out, start = [], 0
    for t in like:
        out.append(flat[start : start + t.numel()].view_as(t))
        start += t.numel()
    return out


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """The L2 norm of all ``tensors`` taken together as one vector."""
    if len(tensors) == 0:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def clip_by_global_norm(tensors: Sequence[Tensor], max_norm: float | None) -> list[Tensor]:
    """Scale ``tensors`` together so their joint L2 norm is at most ``max_norm``.

    ``max_norm=None`` returns them unchanged.  The result never has a larger
    norm than the input (a zero update stays zero).
    """
    tensors = list(tensors)
    if max_norm is None:
        return tensors
    if max_norm < 0:
        raise ValueError(f"max_norm must be non-negative, got {max_norm}.")
    norm = float(global_norm(tensors))
    if norm <= max_norm or norm == 0.0:
        return tensors
    factor = max_norm / norm
    return [t * factor for t in tensors]


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """True when every entry of every tensor is finite (no NaN, no inf)."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@torch.no_grad()
def add_(params: Sequence[Tensor], deltas: Sequence[Tensor]) -> None:
    """In place: ``p += d`` for each parameter and its update."""
    for p, d in zip(params, deltas, strict=True):
        p.add_(d.to(device=p.device, dtype=p.dtype))


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer), else the CPU."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating parameter (or floating buffer), else None."""
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    for t in model.buffers():
        if t.is_floating_point():
            return t.dtype
    return None


def to_model(batch, model: nn.Module):
    """Move ``batch`` (tensor, tuple, list, namedtuple or dict of them) to where ``model`` computes.

    Floating tensors go to the model's device *and* floating dtype (a float64 model gets float64
    inputs from a float32 loader); other tensors (integer labels, ids, masks) keep their dtype and
    only change device.  Anything else is returned as it is.  A tensor already in place is returned
    itself, not copied.
    """
    return _move(batch, model_device(model), model_dtype(model))


def _move(batch, device: torch.device, dtype: torch.dtype | None):
    if isinstance(batch, Tensor):
        non_blocking = device.type != "cpu"  # a non-blocking copy to the CPU may be read too early
        if dtype is not None and batch.is_floating_point():
            return batch.to(device=device, dtype=dtype, non_blocking=non_blocking)
        return batch.to(device=device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return type(batch)({k: _move(v, device, dtype) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_move(v, device, dtype) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move(v, device, dtype) for v in batch)
    return batch


def to_device(batch, device: torch.device):
    """Move every tensor inside ``batch`` (tensor, tuple, list or dict) to ``device``, dtypes kept.

    The unlearning methods use :func:`to_model`, which also matches the model's floating dtype.
    """
    return _move(batch, torch.device(device), None)


def batch_size(batch) -> int:
    """The number of samples in a batch: the leading size of its first tensor."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            try:
                return batch_size(item)
            except TypeError:
                continue
    raise TypeError("cannot tell the number of samples in this batch (no tensor in it).")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore every module's flag.

    Eval mode makes the per-sample losses independent of each other
    (BatchNorm uses its running statistics, dropout is off) and keeps
    BatchNorm's running statistics from being updated.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def cycle(loader) -> Iterator:
    """Yield the batches of ``loader`` forever, starting a new pass when one ends."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the loader yielded no batches.")
