"""The one writer of a run's record: phase results -> ``results.json`` and the W&B run.

Every subcommand's record has the same shape: ``phase`` (the subcommand), the
dataset, backbone and run folder, then each phase result's namespaced keys.
Final figures go to the W&B run *summary*; curves (per epoch or round) are
logged as history by the phase that measures them. ``config.yaml`` and the W&B
config hold the same nested CLI configuration for every subcommand. Only global
rank zero calls these functions.
"""

from __future__ import annotations

import json
import os

import torch
import yaml

from healing_pl.tracking import log_summary, write_results


def save_config(run_dir: str, config: dict, logger=None) -> None:
    """Write the run's full configuration to ``config.yaml`` and into the W&B run's config."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    if logger is not None and hasattr(logger, "experiment"):
        logger.experiment.config.update({"cli": config}, allow_val_change=True)


def compose(subcommand: str, header: dict, results) -> dict:
    """One flat record from the phase results (each ``record()`` adds its namespaced keys)."""
    record = {"phase": subcommand, **header}
    for result in results:
        if result is not None:
            record.update(result.record())
    return record


def write_record(run_dir: str, record: dict, logger=None) -> str:
    """Write ``results.json`` and put the record's scalars into the W&B summary; return the file's path."""
    scalars = {
        k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None
    }
    log_summary(logger, scalars)
    return write_results(run_dir, record)


def save_model(model, datamodule, path: str, **extra) -> None:
    """Save a Classifier as a checkpoint that ``load_classifier`` and ``--ckpt_path`` accept (atomically)."""
    from healing_pl.unlearning.naive import model_hparams, save_atomic

    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": model_hparams(model),
        type(datamodule).__qualname__: datamodule.state_dict(),
        **{k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in extra.items()},
    }
    save_atomic(payload, path)


def read_record(run_dir: str) -> dict | None:
    """The run's ``results.json``, or None when the run wrote none."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
