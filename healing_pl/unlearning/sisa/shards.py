"""The SISA assignment (ids to shards and slices), the training recipe, and the shard file format.

Shards as separate jobs
-----------------------
:func:`~healing_pl.unlearning.sisa.train_sisa_shard` trains one shard of the seeded assignment and writes
``directory/shard{i}.pt`` atomically (:func:`healing_pl.files.save_torch`: a temporary file in ``directory``,
flushed to disk with fsync, then renamed), so a cluster can train the ``S`` shards
in ``S`` jobs; :func:`load_sisa` then aggregates the files into a
:class:`~healing_pl.unlearning.sisa.SisaState`.  ``train_sisa(..., directory=...)`` goes through the same
per-shard code (skipping shards whose file exists with the same recipe), so
both routes give the same ensemble bit for bit.  A shard file is a dict of
tensors and plain values (it loads with ``torch.load(..., weights_only=True)``)::

    {"format": "healing_pl.sisa_shard/1",
     "shard": i,                                  # 0-based shard index
     "slices": [Tensor, ...],                     # the R id tensors of this shard's slices
     "checkpoints": [{"model": {name: Tensor}, "optimizer": Adam state dict}, ...],  # R + 1, CPU tensors
     "train_time": seconds, "device": "cuda:0",  # informational
     "holdout": Tensor,                           # protocol "paper" only: the shard's held-out ids
     "meta": {"hparams": {...}, "shards": S, "slices": R, "epochs_per_slice": E, "seed": seed,
              "batch_size": B, "dtype": "float32", "primary_hash": sha256 of the primary ids,
              "assignment_hash": sha256 of the whole assignment, "protocol": "bourtoule" or "paper"}}

A file without ``protocol`` (written before the paper's protocol existed) is a ``bourtoule`` file.

Shards whose ``meta`` differ in any key are never mixed.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from healing_pl.files import save_torch
from healing_pl.unlearning.sisa.common import _as_device, _as_dtype, _dtype_name, _ids, _model_from, seed_for
from healing_pl.unlearning.sisa.epochs import slice_epochs
from healing_pl.unlearning.sisa.protocol import reweigh
from healing_pl.unlearning.sisa.state import AGGREGATIONS, Assignment, SisaEnsemble, SisaState, _clean_hparams

SHARD_FORMAT = "healing_pl.sisa_shard/1"
#: the ``meta`` keys of a shard file that must agree before shards are mixed
RECIPE_KEYS = (
    "hparams",
    "shards",
    "slices",
    "epochs_per_slice",
    "seed",
    "batch_size",
    "dtype",
    "primary_hash",
    "assignment_hash",
    "protocol",
)
_SHARD_FILE = re.compile(r"shard(\d+)\.pt")


# --------------------------------------------------------------- assignment
def make_assignment(ids, shards: int, slices: int, seed: int = 0) -> Assignment:
    """Split ``ids`` by a seeded permutation into ``shards`` disjoint near-equal shards of
    ``slices`` near-equal slices each (ids sorted within a slice)."""
    ids = _ids(ids)
    if shards < 1 or slices < 1:
        raise ValueError(f"SISA needs at least one shard and one slice, got shards={shards}, slices={slices}.")
    if ids.numel() < shards * slices:
        raise ValueError(
            f"{ids.numel()} samples cannot fill {shards} shards x {slices} slices (one sample each at least)."
        )
    order = ids[torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(seed_for("assign", seed)))]
    return [
        [sl.sort().values for sl in torch.tensor_split(shard, slices)] for shard in torch.tensor_split(order, shards)
    ]


def _check_assignment(assignment, datamodule) -> Assignment:
    if not assignment or not all(len(sh) for sh in assignment):
        raise ValueError("the SISA assignment must hold at least one shard with at least one slice.")
    slices = len(assignment[0])
    if any(len(sh) != slices for sh in assignment):
        raise ValueError(
            f"every shard of the SISA assignment must have the same number of slices, "
            f"got {[len(sh) for sh in assignment]}."
        )
    out = [[_ids(sl) for sl in sh] for sh in assignment]
    for s, sh in enumerate(out):
        if sum(sl.numel() for sl in sh) == 0:
            raise ValueError(f"shard {s} of the SISA assignment is empty.")
    datamodule.check_members(torch.cat([torch.cat(sh) for sh in out]), "primary", "SISA assignment")
    return out


# ------------------------------------------------------------------- recipe
@dataclass(frozen=True)
class _Recipe:
    hparams: dict
    assignment: Assignment
    epochs_per_slice: int
    seed: int
    batch_size: int
    dtype: torch.dtype
    protocol: str = "bourtoule"

    def meta(self, datamodule) -> dict:
        """The ``meta`` dict of a shard file (plain values only)."""
        return {
            "hparams": _plain(self.hparams, "hparams"),
            "shards": len(self.assignment),
            "slices": len(self.assignment[0]),
            "epochs_per_slice": self.epochs_per_slice,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "dtype": _dtype_name(self.dtype),
            "primary_hash": _hash_ids([datamodule.primary_ids]),
            "assignment_hash": _hash_assignment(self.assignment),
            "protocol": self.protocol,
        }


def _recipe(
    hparams: Mapping,
    datamodule,
    *,
    shards: int | None,
    slices: int | None,
    epochs: int,
    epochs_per_slice: int | str | None,
    seed: int,
    assignment: Assignment | None,
    batch_size: int | None,
    dtype,
    protocol: str = "bourtoule",
) -> _Recipe:
    """Check and resolve a SISA training recipe (the seeded assignment unless one is given)."""
    hparams = _clean_hparams(hparams)
    if assignment is None:
        shards, slices = 3 if shards is None else shards, 5 if slices is None else slices
        assignment = make_assignment(datamodule.primary_ids, shards, slices, seed)
    else:
        assignment = _check_assignment(assignment, datamodule)
        if shards is not None and shards != len(assignment) or slices is not None and slices != len(assignment[0]):
            raise ValueError(
                f"the assignment has {len(assignment)} shards x {len(assignment[0])} slices, "
                f"but shards={shards}, slices={slices} were asked for."
            )
    rule = "passes" if epochs_per_slice is None else epochs_per_slice
    eps = slice_epochs(epochs, len(assignment[0]), rule)
    batch_size = int(batch_size or datamodule.hparams.batch_size)
    return _Recipe(hparams, assignment, eps, int(seed), batch_size, _as_dtype(dtype), protocol)


# ---------------------------------------------------------------- shard files
def _plain(value, where: str):
    """``value`` if it is made of plain values only (what ``weights_only=True`` loads), else a ValueError."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, where) for v in value)
    if isinstance(value, Mapping):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise ValueError(
        f"{where} holds a {type(value).__name__}, which a SISA shard file cannot store; "
        f"use plain values (numbers, strings, lists, dicts)."
    )


def _hash_ids(tensors: Sequence[Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = _ids(t).contiguous()
        h.update(f"{t.numel()};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _hash_assignment(assignment: Assignment) -> str:
    return _hash_ids([sl for sh in assignment for sl in sh] + [torch.tensor([len(sh) for sh in assignment])])


def _shard_path(directory: str, shard: int) -> str:
    return os.path.join(directory, f"shard{shard}.pt")


def _write_shard(
    directory: str,
    shard: int,
    slices: list[Tensor],
    ckpts: list[dict],
    *,
    meta: dict,
    train_time: float,
    device,
    holdout: Tensor | None = None,
) -> str:
    """Write ``directory/shard{shard}.pt`` atomically (temporary file, fsync, rename) and return its path."""
    payload = {
        "format": SHARD_FORMAT,
        "shard": shard,
        "slices": [sl.clone() for sl in slices],
        "checkpoints": ckpts,
        "train_time": train_time,
        "device": str(device),
        "meta": meta,
    }
    if holdout is not None:
        payload["holdout"] = holdout.clone()
    return save_torch(payload, _shard_path(directory, shard))


def _read_shard(path: str, shard: int) -> dict:
    """Load and check the structure of one shard file (CPU tensors), or a ValueError in one sentence."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or holding something weights_only refuses
        raise ValueError(
            f"{path} is not a readable SISA shard file ({type(err).__name__}); delete it and train shard {shard} again."
        ) from None
    meta = data.get("meta") if isinstance(data, dict) else None
    if isinstance(meta, dict):
        meta.setdefault("protocol", "bourtoule")
    ok = (
        isinstance(meta, dict)
        and data.get("format") == SHARD_FORMAT
        and all(k in meta for k in RECIPE_KEYS)
        and data.get("shard") == shard
        and isinstance(data.get("slices"), list)
        and len(data["slices"]) == meta["slices"]
        and all(isinstance(t, Tensor) for t in data["slices"])
        and isinstance(data.get("checkpoints"), list)
        and len(data["checkpoints"]) == meta["slices"] + 1
        and all(isinstance(c, dict) and {"model", "optimizer"} <= c.keys() for c in data["checkpoints"])
        and (meta["protocol"] != "paper" or isinstance(data.get("holdout"), Tensor))
    )
    if not ok:
        raise ValueError(
            f"{path} is corrupt or not a {SHARD_FORMAT} file of shard {shard}; delete it and train shard {shard} again."
        )
    return data


def _recipe_diff(a: dict, b: dict) -> list[str]:
    diff = []
    for k in RECIPE_KEYS:
        if k == "hparams" and a[k] != b[k]:
            keys = sorted(set(a[k]) | set(b[k]), key=str)
            diff += [f"hparams.{n} {a[k].get(n)!r} vs {b[k].get(n)!r}" for n in keys if a[k].get(n) != b[k].get(n)]
        elif k.endswith("_hash") and a[k] != b[k]:
            diff.append(f"another {k.removesuffix('_hash')}" + (" set" if k == "primary_hash" else ""))
        elif a[k] != b[k]:
            diff.append(f"{k} {a[k]!r} vs {b[k]!r}")
    return diff


def _check_recipe(meta: dict, want: dict, path: str, what: str) -> None:
    diff = _recipe_diff(meta, want)
    if diff:
        raise ValueError(
            f"{path} was trained with another recipe than {what} ({'; '.join(diff)}), and SISA "
            f"never mixes shards of different recipes: delete it or use another folder."
        )


def load_sisa(directory: str, datamodule, *, aggregation: str = "vote", device) -> SisaState:
    """Aggregate the shard files of ``directory`` (written by :func:`train_sisa_shard`) into a :class:`SisaState`.

    Every file must be readable, of the same recipe, trained on this datamodule's primary set, and
    together they must hold shards ``0..S-1`` exactly; otherwise a ValueError says which file is wrong.
    The shard models are built on ``device`` in the recipe's dtype; checkpoints stay on the CPU.
    ``train_time`` is the sum of the shards' recorded training times.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown SISA aggregation '{aggregation}'; choose one of {', '.join(AGGREGATIONS)}.")
    device = _as_device(device)
    if not os.path.isdir(directory):
        raise ValueError(f"the SISA shard folder '{directory}' does not exist.")
    found = {
        int(m.group(1)): os.path.join(directory, name)
        for name in os.listdir(directory)
        if (m := _SHARD_FILE.fullmatch(name))
    }
    if not found:
        raise ValueError(
            f"'{directory}' holds no SISA shard files (shard0.pt, shard1.pt, ...); "
            f"train them with train_sisa_shard first."
        )
    files = {i: _read_shard(found[i], i) for i in sorted(found)}
    first = min(files)
    meta = files[first]["meta"]
    for i, data in files.items():
        _check_recipe(data["meta"], meta, found[i], found[first])
    n_shards = meta["shards"]
    extra = [found[i] for i in files if i >= n_shards]
    if extra:
        raise ValueError(
            f"{extra[0]} lies beyond the {n_shards} shards of the recipe of {found[first]}, and SISA "
            f"never mixes shards of different recipes: delete it or use another folder."
        )
    missing = [f"shard{i}.pt" for i in range(n_shards) if i not in files]
    if missing:
        raise ValueError(
            f"the SISA folder '{directory}' misses the shard file(s) {', '.join(missing)} of its "
            f"{n_shards} shards; train them with train_sisa_shard first."
        )
    if meta["primary_hash"] != _hash_ids([datamodule.primary_ids]):
        raise ValueError(
            f"the SISA shard files in '{directory}' were trained on another primary set than this "
            f"datamodule's; load them with the data config and seed they were trained with."
        )
    assignment = [[_ids(sl) for sl in files[i]["slices"]] for i in range(n_shards)]
    if _hash_assignment(assignment) != meta["assignment_hash"]:
        raise ValueError(
            f"the slices of the SISA shard files in '{directory}' are not the assignment they were "
            f"trained on (a file is corrupt or was altered); delete them and train again."
        )
    hparams, dtype, seed = dict(meta["hparams"]), _as_dtype(meta["dtype"]), meta["seed"]
    models = []
    for i in range(n_shards):
        try:
            weights = files[i]["checkpoints"][-1]["model"]
            model = _model_from(hparams, seed_for("init", seed, i), weights, device, dtype)
        except (RuntimeError, KeyError, TypeError) as err:
            raise ValueError(
                f"{found[i]} holds weights that do not fit the model of its recipe "
                f"({type(err).__name__}); delete it and train shard {i} again."
            ) from None
        models.append(model.eval())
    shard_times = [float(files[i]["train_time"]) for i in range(n_shards)]
    protocol = meta["protocol"]
    holdout = [_ids(files[i]["holdout"]) for i in range(n_shards)] if protocol == "paper" else []
    state = SisaState(
        ensemble=SisaEnsemble.from_models(models, aggregation).eval(),
        assignment=assignment,
        checkpoints=[files[i]["checkpoints"] for i in range(n_shards)],
        hparams=hparams,
        seed=seed,
        epochs_per_slice=meta["epochs_per_slice"],
        batch_size=meta["batch_size"],
        train_time=sum(shard_times),
        shard_times=shard_times,
        device=str(device),
        dtype=dtype,
        protocol=protocol,
        holdout=holdout,
    )
    return reweigh(state, datamodule)
