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

from healing_pl import records as rk
from healing_pl.files import write_atomic
from healing_pl.phases.identity import identity_record, plain_classes
from healing_pl.tracking import log_summary, write_results


def save_config(run_dir: str, config: dict, logger=None) -> None:
    """Write the run's full configuration to ``config.yaml`` (as the CLI reads it) and into the W&B run's config."""
    write_atomic(os.path.join(run_dir, "config.yaml"), yaml.safe_dump(config, sort_keys=False))
    if logger is not None and hasattr(logger, "experiment"):
        # a chosen class as {class: <Class>, <knobs>}: W&B filters and groups on cli.unlearn.class
        logger.experiment.config.update({"cli": plain_classes(config)}, allow_val_change=True)


def compose(subcommand: str, header: dict, results) -> dict:
    """One flat record from the phase results (each ``record()`` adds its namespaced keys, named by
    :mod:`healing_pl.records`); the keys are plain strings."""
    record = {rk.PHASE: subcommand, **header}
    for result in results:
        if result is not None:
            record.update(result.record())
    return rk.plain(record)


def run_record(subcommand: str, header: dict, config: dict, results) -> dict:
    """A run's whole record, as :class:`~healing_pl.callbacks.phases.RunWriter` writes it: the phase results
    (:func:`compose`) and the run's experiment identity."""
    return compose(subcommand, header, results) | rk.plain(identity_record(subcommand, config, results))


def summary_scalars(record: dict) -> dict:
    """The record's final scalars (what the W&B summary holds): numbers, without the per-epoch curve."""
    return {
        k: v
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not rk.is_per_epoch(k)
    }


def write_record(run_dir: str, record: dict, logger=None) -> str:
    """Write ``results.json``; in the W&B run: the final scalars into the summary (never the history), the
    forget set as a Table, ``results.json`` and the ledger as a ``results`` artifact, and, for a run from a
    baseline, the baseline's ``model`` artifact as its input. Return the file's path."""
    from healing_pl.adversary.ledger import Ledger
    from healing_pl.tracking import artifact_name, declare_baseline, log_id_table, log_results_artifact, wandb_run

    log_summary(logger, summary_scalars(record))
    path = write_results(run_dir, record)
    run = wandb_run(logger)
    if run is not None:
        log_id_table(run, rk.FORGET_IDS_TABLE.name, record.get(rk.FORGET_IDS), "forget_id")
        if record.get(rk.PHASE) in rk.FROM_BASELINE and record.get(rk.BASELINE_SHA256):
            name = artifact_name(record[rk.DATASET], record[rk.BACKBONE], record[rk.BASELINE_SHA256])
            run.summary[rk.LINEAGE_DECLARED.name] = declare_baseline(run, name)
        ledger = os.path.join(run_dir, Ledger.FILENAME)  # and its head file, which anchors the hash chain
        log_results_artifact(run, run_dir, record, extra_files=(ledger, os.path.splitext(ledger)[0] + ".head"))
    return path


def save_model(model, datamodule, path: str, **extra) -> None:
    """Save a Classifier as a checkpoint that ``load_classifier`` and ``--ckpt_path`` accept (atomically)."""
    from healing_pl.files import save_torch
    from healing_pl.unlearning.naive import model_hparams

    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": model_hparams(model),
        type(datamodule).__qualname__: datamodule.state_dict(),
        **{k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in extra.items()},
    }
    save_torch(payload, path)


def read_record(run_dir: str) -> dict | None:
    """The run's ``results.json``, or None when the run wrote none."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
