"""Twin phase: replacements for the forget set from the backup set, under a spare policy and a metric."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from healing_pl import records as rk
from healing_pl.phases.config import TwinsConfig


@dataclass(frozen=True)
class TwinSet:
    """The twins of one forget set: ``pairs`` is ``[{request_id, twin_id, score}]`` (empty for R alone)."""

    config: TwinsConfig
    pairs: list[dict]
    time_s: float
    same_class: float | None  # share of twins of their request's class
    train_size: int  # size of the heal set R + T

    @property
    def twin_ids(self) -> list[int]:
        return [p["twin_id"] for p in self.pairs]

    def record(self) -> dict:
        return {
            rk.TWINS_METRIC: self.config.metric_name,
            rk.TWINS_POLICY: self.config.policy,
            rk.HEAL_SETUP: self.config.setup,
            rk.TWINS_PAIRS: self.pairs,
            rk.TWINS_COUNT: len(self.pairs),
            rk.TWINS_TIME_S: self.time_s,
            rk.TWINS_SAME_CLASS: self.same_class,
            rk.HEAL_TRAIN_SIZE: self.train_size,
        }


def spare_policy(twins: TwinsConfig, model, datamodule):
    """The spare policy of ``twins``, fitted on the backup set (and, for ``twins``, with surrogates
    precomputed for every primary sample). Its state keeps used spares across request rounds.
    Feature metrics embed with ``model`` (the baseline) on its device."""
    from healing_pl.healing.policies import get_policy

    policy_kwargs = {"k": twins.k} if twins.policy == "twins" else {}
    # a fresh metric per policy: the random control starts its draws over, seeded by twins.seed unless it has a seed
    metric = twins.metric.fresh(twins.seed)
    policy = get_policy(twins.policy, metric=metric, same_class=twins.same_class, group=twins.group, **policy_kwargs)
    metric = policy.metric
    dataset, embedder = datamodule.pool.train, model if metric.needs_features else None
    backup = spare_ids(twins, datamodule.backup_ids)
    policy.fit(
        backup.tolist(),
        metric.representations(dataset, backup, embedder),
        datamodule.targets[backup],
        forbidden_ids=datamodule.primary_ids.tolist(),
    )
    if twins.policy == "twins":  # surrogates for every primary sample, found before any request
        primary = datamodule.primary_ids
        policy.precompute(
            primary.tolist(), metric.representations(dataset, primary, embedder), datamodule.targets[primary]
        )
    return policy


def spare_ids(twins: TwinsConfig, backup: torch.Tensor) -> torch.Tensor:
    """The spares the search may use: the whole backup set, or ``twins.spares`` of it drawn with ``twins.seed``."""
    if twins.spares is None:
        return backup
    count = round(twins.spares * len(backup)) if twins.spares <= 1 else int(twins.spares)
    if not 1 <= count <= len(backup):
        raise ValueError(
            f"twins.spares={twins.spares} asks for {count} spares, but the backup set holds {len(backup)}."
        )
    order = torch.randperm(len(backup), generator=torch.Generator().manual_seed(twins.seed))
    return backup[order[:count].sort().values]


def assign_twins(policy, model, datamodule, forget_ids) -> list[dict]:
    """Twins for ``forget_ids`` from a fitted policy: ``[{request_id, twin_id, score}]`` (spares used up)."""
    if policy.remaining < len(forget_ids):
        raise ValueError(
            f"the backup set has {policy.remaining} unused spares, too few to replace "
            f"{len(forget_ids)} requests; enlarge --data.backup."
        )
    embedder = model if policy.metric.needs_features else None
    queries = policy.metric.representations(datamodule.pool.train, forget_ids, embedder)
    return policy.assign(forget_ids.tolist(), queries, datamodule.targets[forget_ids]).records()


def twin_phase(twins: TwinsConfig, model, datamodule, forget_ids, policy=None) -> TwinSet:
    """Twins of ``forget_ids`` (none for the R-alone setup), timed, with the size of the heal set.

    ``policy``: a fitted spare policy to draw from (a stream keeps one across rounds); default a fresh one.
    """
    start = time.perf_counter()
    pairs: list[dict] = []
    if twins.metric is not None:
        policy = policy or spare_policy(twins, model, datamodule)
        pairs = assign_twins(policy, model, datamodule, forget_ids)
    targets = datamodule.targets
    same = sum(int(targets[p["twin_id"]] == targets[p["request_id"]]) for p in pairs) / len(pairs) if pairs else None
    size = len(datamodule.heal_ids(forget_ids, [p["twin_id"] for p in pairs]))
    return TwinSet(twins, pairs, time.perf_counter() - start, same, size)


def ledger_twins(ledger, datamodule, pairs: list[dict]) -> None:
    """Write each twin into the ledger, next to the request it replaces."""
    from healing_pl.adversary.membership import sample_hash

    for p in pairs:
        ledger.append_twin(
            ledger.request_id_for_sample(p["request_id"]),
            p["twin_id"],
            sample_hash(datamodule.pool.train[p["twin_id"]][0]),
            p.get("score"),
        )
