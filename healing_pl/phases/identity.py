"""A run's experiment identity: what it measured, so that reports compare like with like.

Two runs belong to one experiment when their configurations agree in everything that defines the
experiment, apart from the compared axes (``twins.metric``, ``twins.policy``: the heal setup) and
the seeds (runs that differ only in seeds are repeats of one experiment). The identity is the run's
full nested CLI configuration without

- what does not change the result: the run folder, W&B display settings (project, entity, job type,
  name, tags; the grid or sweep name, ``wandb.group``, stays), progress bars, logging intervals,
  where it ran (accelerator, devices, strategy; precision stays), data loading workers, caches;
- ``ckpt_path``, replaced by the baseline checkpoint's sha256 and its model hyperparameters;
- the seeds, kept apart in ``seeds`` (every key named ``seed``, ``seed_everything`` or ``*_seed``).

A chosen class (``{class_path, init_args}``: the unlearning method, the adversary, the twin metric) appears
as ``{"class": <Class>, <its knobs>}`` (:func:`plain_classes`); a method carries only its own knobs
(``Fisher`` has no ``depth``), so there is nothing of another method to leave out.

``experiment/id`` hashes the identity without seeds and without the baseline's sha256 (a baseline
retrained with another seed is another checkpoint of the same experiment); reports separate runs of
one id and one seed whose baselines differ.
"""

from __future__ import annotations

import copy
import hashlib
import json

from healing_pl import records as rk
from healing_pl.phases.baseline import Baseline

#: compared within one experiment: the heal setup (R or T-<metric>) and the spare policy
COMPARED = ("twins.metric", "twins.policy")

#: configuration keys that do not define the experiment (dotted paths)
NOT_EXPERIMENT = (
    "config",
    "run_dir",
    "ckpt_path",
    "wandb.enabled",
    "wandb.project",
    "wandb.entity",
    "wandb.job_type",
    "wandb.name",
    "wandb.tags",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.logger",
    "trainer.callbacks",
    "trainer.enable_checkpointing",
    "trainer.default_root_dir",
    "trainer.profiler",
    "trainer.enable_autolog_hparams",
    "trainer.model_registry",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.strategy",
    "trainer.num_nodes",
    "data.root",
    "data.download",
    "data.num_workers",
    "data.eval_batch_size",
    "unlearn.cache_dir",
    "unlearn.shard",
    "unlearn.mia",  # evaluation only: the MIA does not change the models
    "unlearn.on_collapse",  # a finished run is the same under stop and keep
)


def _is_seed(name: str) -> bool:
    return name in ("seed", "seed_everything") or name.endswith("_seed")


def _drop(tree: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.get(part)
        if not isinstance(tree, dict):
            return
    tree.pop(leaf, None)


def _split_seeds(tree: dict, prefix: str = "") -> dict:
    """Remove every seed from ``tree`` (in place); return them by dotted path."""
    seeds = {}
    for key in list(tree):
        path = f"{prefix}{key}"
        if isinstance(tree[key], dict):
            seeds.update(_split_seeds(tree[key], f"{path}."))
        elif _is_seed(str(key)):
            seeds[path] = tree.pop(key)
    return seeds


def plain_classes(tree):
    """``tree`` with every chosen class (``{"class_path": ..., "init_args": {...}}``, as the CLI dumps a method,
    an adversary or a twin metric) as ``{"class": <class name>, **init_args}``: one flat level of knobs."""
    if isinstance(tree, dict):
        if "class_path" in tree and set(tree) <= {"class_path", "init_args", "dict_kwargs"}:
            knobs = {k: plain_classes(v) for k, v in (tree.get("init_args") or {}).items()}
            return {"class": str(tree["class_path"]).rsplit(".", 1)[-1], **knobs}
        return {k: plain_classes(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [plain_classes(v) for v in tree]
    return tree


def short_hash(value) -> str:
    """A short stable hash of a JSON-able value (keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def experiment_identity(
    subcommand: str, config: dict, baseline_sha256: str | None = None, baseline_hparams: dict | None = None
) -> dict:
    """The experiment a run belongs to: ``subcommand``, ``config`` (nested, without what does not define
    the experiment, the compared axes and the seeds), ``baseline`` (sha256 and model hyperparameters, or
    None for ``fit``) and ``seeds`` (dotted path -> value)."""
    tree = plain_classes(copy.deepcopy(dict(config)))
    for dotted in NOT_EXPERIMENT + COMPARED:
        _drop(tree, dotted)
    seeds = _split_seeds(tree)
    baseline = None
    if baseline_sha256 is not None:
        baseline = {"sha256": baseline_sha256, "hparams": dict(baseline_hparams or {})}
    return {"subcommand": subcommand, "config": tree, "baseline": baseline, "seeds": seeds}


def experiment_id(identity: dict) -> str:
    """The short hash of an identity without its seeds and without the baseline's sha256."""
    baseline = identity.get("baseline") or {}
    return short_hash(
        {"subcommand": identity.get("subcommand"), "config": identity.get("config"), "hparams": baseline.get("hparams")}
    )


def identity_record(subcommand: str, config: dict, results) -> dict:
    """The record keys of a run's identity, its baseline taken from the phase ``results`` (if any)."""
    baseline = next((r for r in results if isinstance(r, Baseline)), None)
    identity = experiment_identity(
        subcommand,
        config,
        None if baseline is None else baseline.sha256,
        None if baseline is None else baseline.hparams,
    )
    return {rk.EXPERIMENT: identity, rk.EXPERIMENT_ID: experiment_id(identity), rk.EXPERIMENT_SEEDS: identity["seeds"]}
