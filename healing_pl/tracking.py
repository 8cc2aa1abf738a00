"""Experiment tracking: the per-run folder, the W&B logger and the results record."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from lightning.pytorch.loggers import WandbLogger


def wandb_mode() -> str:
    """``offline`` unless the user asked for ``online`` (or ``disabled``) through WANDB_MODE."""
    mode = os.environ.get("WANDB_MODE", "offline").lower()
    return mode if mode in ("online", "offline", "disabled") else "offline"


def make_run_dir(base: str, stem: str) -> str:
    """Claim a fresh folder ``base/stem-YYYYmmdd-HHMMSS`` (suffixed ``-2``, ``-3``... if taken) and return it.

    The claim is the folder's creation (``os.mkdir`` fails if it exists), so two runners started in the
    same second never share a folder.
    """
    path = os.path.join(base, f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(base, exist_ok=True)
    candidate, n = path, 1
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{path}-{n}"


def build_logger(tracking, run_dir: str, job_type: str, config: dict | None = None):
    """A W&B logger writing under ``run_dir`` (None when tracking is off or W&B is disabled).

    ``tracking`` is the ``--wandb`` config (:class:`healing_pl.phases.config.Tracking`).
    """
    mode = wandb_mode()
    if not tracking.enabled or mode == "disabled":
        return None
    return RunLogger(
        save_dir=run_dir,
        project=tracking.project,
        entity=tracking.entity,
        group=tracking.group,
        job_type=tracking.job_type or job_type,
        tags=list(tracking.tags),
        name=tracking.name or os.path.basename(os.path.normpath(run_dir)),
        offline=mode != "online",
        config=config,
    )


class RunLogger(WandbLogger):
    """Lightning's WandbLogger, except that a spawned run (``ddp_spawn``) opens its W&B run in rank zero's
    process: Lightning's own logger opens it in the launching process and attaches the workers to it, which
    hangs in offline mode."""

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state


def write_results(run_dir: str, record: dict[str, Any], name: str = "results.json") -> str:
    """Write the run's machine-readable results record (atomically) and return its path."""
    import tempfile

    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, name)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=run_dir)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=_jsonable)
    os.replace(tmp, path)
    return path


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def log_summary(logger, values: dict[str, Any]) -> None:
    """Put ``values`` into the W&B run summary (no-op without a W&B logger)."""
    if logger is None or not hasattr(logger, "experiment"):
        return
    run = logger.experiment
    for key, value in values.items():
        run.summary[key] = value


def finish_wandb() -> None:
    """Close the current W&B run, if any, so the next run starts a fresh one."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def read_offline_run(run_folder: str) -> dict[str, dict]:
    """Read the config and summary of an offline W&B run folder (``.../wandb/offline-run-*``).

    Offline runs keep everything in one ``run-<id>.wandb`` file, a log of
    protobuf records in 32 KiB blocks (each record: crc32, length, type).
    This reads it back without a server, so tests and reports can check what
    a run recorded before it is synced.
    """
    import glob
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    files = glob.glob(os.path.join(run_folder, "*.wandb"))
    if not files:
        raise FileNotFoundError(f"no .wandb file in '{run_folder}'.")
    data = open(files[0], "rb").read()
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too small for a header: skip to the next block
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0:  # zero padding up to the block's end
            pos += (block - pos % block) % block
            continue
        pending += data[pos : pos + length]
        pos += length
        if kind in (1, 4):  # a full record, or the last piece of one
            records.append(pending)
            pending = b""
    config, summary = {}, {}

    def apply(target, items):
        for item in items:
            key = item.key or "/".join(item.nested_key)
            try:
                target[key] = json.loads(item.value_json)
            except ValueError:
                target[key] = item.value_json

    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            apply(config, record.run.config.update)
        elif kind == "config":
            apply(config, record.config.update)
        elif kind == "summary":
            apply(summary, record.summary.update)
    return {"config": config, "summary": summary}
