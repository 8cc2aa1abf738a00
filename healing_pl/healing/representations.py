"""The vectors twin metrics compare: flattened pixels, or the baseline's penultimate-layer embedding.

:func:`raw_vectors` flattens ``dataset[id][0]``; :func:`feature_vectors` runs ``model.embed(x)``. Both
read ``dataset[id]`` as ``(x_tensor, y_int)`` for any pool id, in batches, and can also return the
labels (a CPU int64 tensor, bookkeeping built from Python ints).

Devices: pixel vectors stay on the device of the dataset's tensors, features on the model's device;
ranking runs where the vectors are (:func:`healing_pl.healing.search.nearest`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["Ids", "feature_vectors", "id_list", "raw_vectors"]

Ids = Sequence[int] | torch.Tensor | np.ndarray


def id_list(ids: Ids) -> list[int]:
    """``ids`` as a flat list of Python ints."""
    return [int(i) for i in torch.as_tensor(ids).reshape(-1).tolist()]


def _batches(ids: list[int], batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    for start in range(0, len(ids), batch_size):
        yield ids[start : start + batch_size]


def _load(dataset, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i][:2] for i in batch))
    return torch.stack([torch.as_tensor(x) for x in xs]), torch.as_tensor([int(y) for y in ys])


def raw_vectors(dataset, ids: Ids, batch_size: int = 1024, *, return_labels: bool = False):
    """Flattened pixels of ``dataset[id][0]`` for every id, as ``(len(ids), D)`` float32.

    ``dataset[id]`` must return ``(x_tensor, y_int)`` for any pool id.  The
    vectors stay on the device of the dataset's tensors (no copy to the CPU).
    With ``return_labels=True`` returns ``(vectors, labels)``; labels are a CPU
    int64 tensor (bookkeeping, built from Python ints).
    """
    ids = id_list(ids)
    vecs, labels = [], []
    for batch in _batches(ids, batch_size):
        x, y = _load(dataset, batch)
        vecs.append(x.reshape(len(batch), -1).to(torch.float32))
        labels.append(y)
    out = torch.cat(vecs) if vecs else torch.empty(0, 0)
    if return_labels:
        return out, (torch.cat(labels) if labels else torch.empty(0, dtype=torch.long))
    return out


def _device_and_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first floating parameter (or buffer); CPU float32 if none."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def feature_vectors(model: torch.nn.Module, dataset, ids: Ids, batch_size: int = 256, *, return_labels: bool = False):
    """``model.embed(x)`` (penultimate layer) for every id, as ``(len(ids), F)`` float32 on the model's device.

    Each batch is moved to the model's device *and* floating dtype (so a model
    converted with ``.double()`` or ``.half()`` gets inputs it can take); the
    embeddings are returned in float32, the precision :func:`nearest` searches
    in, and stay on the model's device.  Runs in eval mode without gradients
    and restores the model's training flag afterwards.  With
    ``return_labels=True`` returns ``(vectors, labels)``; labels are a CPU
    int64 tensor.
    """
    embed = getattr(model, "embed", None)
    if not callable(embed):
        raise ValueError(f"{type(model).__name__} has no embed() method, so feature metrics cannot compute embeddings.")
    device, dtype = _device_and_dtype(model)
    ids = id_list(ids)
    vecs, labels = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in _batches(ids, batch_size):
                x, y = _load(dataset, batch)
                f = embed(x.to(device=device, dtype=dtype))
                vecs.append(f.reshape(len(batch), -1).to(dtype=torch.float32))
                labels.append(y)
    finally:
        model.train(was_training)
    out = torch.cat(vecs) if vecs else torch.empty(0, 0, device=device)
    if return_labels:
        return out, (torch.cat(labels) if labels else torch.empty(0, dtype=torch.long))
    return out
