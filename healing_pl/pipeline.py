"""The phases of an experiment, shared by ``healing-pl unlearn`` and ``healing-pl heal``.

    baseline.ckpt -> adversary -> forget set F -> unlearner -> unlearned model -> eval
                                      |                              |
                                      v                              v
                       spare policy + similarity -> twins T -> fine-tune on R + T
                                                                     |
                         gold standard (cached by content hash) -> compare, log

Everything a phase measures goes into one flat ``record`` dict with
namespaced keys (``baseline/``, ``gold/``, ``unlearned/``, ``healed/``) that is
logged to W&B and written to the run's ``results.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Literal

import torch

from healing_pl.adversary.config import AdversaryConfig
from healing_pl.models.classifier import Classifier, check_compatible, evaluate, load_classifier
from healing_pl.unlearning.methods import UnlearnConfig, unlearn_with_repeats
from healing_pl.unlearning.naive import gold_standard, model_hparams

TWIN_METRICS = ("none", "raw_l2", "raw_mahalanobis", "feat_cosine", "feat_mahalanobis", "random")


@dataclass
class TwinsConfig:
    """How twins replace the unlearned samples.

    Args:
        metric: none (heal on the remain set R alone), raw_l2, raw_mahalanobis (pixels),
            feat_cosine, feat_mahalanobis (baseline embeddings) or random (the control).
        policy: general_spare_set (each request takes its nearest remaining spare of the
            backup set) or twins (k surrogates precomputed per primary sample).
        same_class: twins come from the unlearned sample's class.
        group: how one round's requests share spares: sequential, greedy or optimal.
        k: surrogates kept per primary sample by the twins policy.
        seed: seed of the random metric.
    """

    metric: Literal["none", "raw_l2", "raw_mahalanobis", "feat_cosine", "feat_mahalanobis", "random"] = "feat_cosine"
    policy: Literal["general_spare_set", "twins"] = "general_spare_set"
    same_class: bool = True
    group: Literal["sequential", "greedy", "optimal"] = "sequential"
    k: int = 3
    seed: int = 0

    def __post_init__(self):
        if self.metric not in TWIN_METRICS:
            raise ValueError(f"unknown twin metric '{self.metric}'; choose one of {', '.join(TWIN_METRICS)}.")
        if self.k < 1:
            raise ValueError(f"twins.k must be at least 1, got {self.k}.")

    @property
    def setup(self) -> str:
        """The heal-set label used in tables: R, or T-<metric>."""
        return "R" if self.metric == "none" else f"T-{self.metric}"


@dataclass
class HealConfig:
    """The healing fine-tune.

    Args:
        epochs: fine-tuning epochs; None: half the baseline's epochs (the paper's N/2).
        lr: Adam learning rate of the fine-tune; None: the baseline's.
        gold: also train (or load from the cache) the gold standard, to report Best-GS.
    """

    epochs: int | None = None
    lr: float | None = None
    gold: bool = True


# --------------------------------------------------------------------------- baseline
def load_baseline(ckpt_path: str | None, model: Classifier, datamodule) -> tuple[Classifier, dict]:
    """Load the baseline checkpoint, adopt its data splits, and return it with its recipe."""
    if not ckpt_path:
        raise ValueError("pass the baseline checkpoint with --ckpt_path (written by healing-pl fit).")
    baseline = load_classifier(ckpt_path)
    check_compatible(model, baseline, ckpt_path)
    state = baseline.checkpoint.get(type(datamodule).__qualname__)
    if state is None:
        raise ValueError(f"checkpoint '{ckpt_path}' holds no data splits; train the baseline with healing-pl fit.")
    datamodule.load_state_dict(state)
    recipe = dict(baseline.checkpoint.get("recipe") or {})
    recipe.setdefault("epochs", 10)
    recipe.setdefault("seed", 0)
    with open(ckpt_path, "rb") as f:
        recipe["sha256"] = hashlib.sha256(f.read()).hexdigest()
    return baseline.eval(), recipe


def select_forget_ids(adversary: AdversaryConfig, baseline: Classifier, datamodule, progress: bool = False) -> torch.Tensor:
    """The adversary's requested ids (only what its knowledge allows reaches the selector).

    A data-blind adversary may name samples that were never trained on:
    :func:`request_forget_set` passes the requests through the membership check.
    """
    from healing_pl.adversary.selectors import select_forget_set

    pool = torch.arange(len(datamodule.pool))
    non_members = pool[~torch.isin(pool, datamodule.primary_ids)]
    ids = select_forget_set(adversary, dataset=datamodule.pool.train, primary_ids=datamodule.primary_ids,
                            non_member_ids=non_members, num_classes=datamodule.num_classes, model=baseline,
                            val_ids=datamodule.splits["val"], progress=progress)
    return torch.as_tensor(ids, dtype=torch.long)


def request_forget_set(adversary: AdversaryConfig, baseline: Classifier, datamodule, ledger_dir: str | None,
                       progress: bool = False):
    """Select the adversary's requests, check membership, and write every decision to the ledger.

    Returns the accepted forget ids, a record of the decisions, and the ledger (None without a folder).
    Requests for non-members, duplicates and samples already unlearned are rejected with a reason.
    """
    from healing_pl.adversary.ledger import Ledger
    from healing_pl.adversary.membership import MembershipIndex, Request

    requested = select_forget_ids(adversary, baseline, datamodule, progress)
    membership = MembershipIndex(datamodule.pool.train, datamodule.primary_ids)
    requester = f"adversary-{adversary.selector}"
    decisions = membership.check([Request(requester, sample_id=int(i), kind="adversarial") for i in requested])
    accepted = torch.tensor([d.sample_id for d in decisions if d.accepted], dtype=torch.long)
    reasons: dict[str, int] = {}
    for d in decisions:
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
    if accepted.numel() == 0:
        raise ValueError(f"all {len(decisions)} unlearn requests were rejected ({reasons}); nothing to unlearn.")
    if accepted.numel() == len(datamodule.primary_ids):
        raise ValueError("the forget set covers the whole primary set; nothing would remain to train on.")
    ledger = None
    if ledger_dir is not None:
        ledger = Ledger(ledger_dir)
        ledger.record(decisions, round_index=0)
    record = {"requests/count": len(decisions), "requests/accepted": int(accepted.numel()),
              "requests/rejected": len(decisions) - int(accepted.numel()), "requests/reasons": reasons}
    return accepted, record, ledger


def ledger_twins(ledger, datamodule):
    """A callback that writes each twin into the ledger, next to the request it replaces."""
    from healing_pl.adversary.membership import sample_hash

    def write(pairs: list[dict]) -> None:
        for p in pairs:
            ledger.append_twin(ledger.request_id_for_sample(p["request_id"]), p["twin_id"],
                               sample_hash(datamodule.pool.train[p["twin_id"]][0]), p.get("score"))

    return write


def evaluate_sets(model, datamodule, forget_ids, prefix: str) -> dict[str, float]:
    """Accuracy of ``model`` on the test, remain and forget sets, keys under ``prefix``."""
    remain = datamodule.remain_ids(forget_ids)
    return {
        f"{prefix}/test/acc": evaluate(model, datamodule.test_dataloader())["acc"],
        f"{prefix}/remain/acc": evaluate(model, datamodule.loader(remain))["acc"],
        f"{prefix}/forget/acc": evaluate(model, datamodule.loader(forget_ids))["acc"],
    }


# --------------------------------------------------------------------------- unlearning
def unlearned_model(baseline: Classifier, recipe: dict, datamodule, forget_ids, cfg: UnlearnConfig,
                    progress: bool = False) -> tuple[Classifier, dict]:
    """Unlearn ``forget_ids`` with repeats; cached by content hash so a grid unlearns once."""
    content = {"baseline": recipe["sha256"], "forget": sorted(forget_ids.tolist()), "cfg": cfg.hyperparameters()}
    key = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:20]
    path = os.path.join(cfg.cache_dir, f"unlearned-{key}.pt") if cfg.cache_dir else None
    if path and os.path.isfile(path):
        saved = torch.load(path, map_location="cpu", weights_only=False)
        model = Classifier(**saved["hyper_parameters"])
        model.load_state_dict(saved["state_dict"])
        return model.eval(), {**saved["summary"], "cached": True}
    result = unlearn_with_repeats(baseline, datamodule, forget_ids, cfg, epochs=recipe["epochs"], progress=progress)
    summary = result.summary
    if path:
        os.makedirs(cfg.cache_dir, exist_ok=True)
        torch.save({"state_dict": result.model.state_dict(), "hyper_parameters": model_hparams(baseline),
                    "summary": summary}, path + ".tmp")
        os.replace(path + ".tmp", path)
    return result.model.eval(), {**summary, "cached": False}


def unlearn_record(summary: dict) -> dict:
    return {"unlearned/acc_mean": summary["acc_mean"], "unlearned/acc_std": summary["acc_std"],
            "unlearned/time_s": summary["time_mean_s"], "unlearned/representative": summary["representative"],
            "unlearned/acc_repeats": summary["acc_repeats"]}


def gold_record(baseline, recipe, datamodule, forget_ids, cfg: UnlearnConfig, progress=False) -> tuple[Classifier, dict]:
    gold, info = gold_standard(model_hparams(baseline), datamodule, forget_ids, epochs=recipe["epochs"],
                               seed=recipe["seed"], cache_dir=cfg.cache_dir, progress=progress)
    return gold, {**evaluate_sets(gold, datamodule, forget_ids, "gold"), "gold/time_s": info["time_s"],
                  "gold/cached": info["cached"]}


# --------------------------------------------------------------------------- twins
def spare_policy(twins: TwinsConfig, baseline: Classifier, datamodule):
    """The spare policy of ``twins``, fitted on the backup set (and, for ``twins``, with surrogates
    precomputed for every primary sample). Its state keeps used spares across request rounds."""
    from healing_pl.healing.policies import get_policy

    metric_kwargs = {"seed": twins.seed} if twins.metric == "random" else {}
    policy_kwargs = {"k": twins.k} if twins.policy == "twins" else {}
    policy = get_policy(twins.policy, metric=twins.metric, same_class=twins.same_class, group=twins.group,
                        metric_kwargs=metric_kwargs, **policy_kwargs)
    metric = policy.metric
    dataset, model = datamodule.pool.train, baseline if metric.needs_features else None
    backup = datamodule.backup_ids
    policy.fit(backup.tolist(), metric.representations(dataset, backup, model), datamodule.targets[backup],
               forbidden_ids=datamodule.primary_ids.tolist())
    if twins.policy == "twins":  # surrogates for every primary sample, found before any request
        primary = datamodule.primary_ids
        policy.precompute(primary.tolist(), metric.representations(dataset, primary, model), datamodule.targets[primary])
    return policy


def assign_twins(policy, baseline: Classifier, datamodule, forget_ids) -> list[dict]:
    """Twins for ``forget_ids`` from a fitted policy: ``[{request_id, twin_id, score}]`` (spares used up)."""
    if policy.remaining < len(forget_ids):
        raise ValueError(f"the backup set has {policy.remaining} unused spares, too few to replace "
                         f"{len(forget_ids)} requests; enlarge --data.backup.")
    model = baseline if policy.metric.needs_features else None
    queries = policy.metric.representations(datamodule.pool.train, forget_ids, model)
    return policy.assign(forget_ids.tolist(), queries, datamodule.targets[forget_ids]).records()


def find_twins(twins: TwinsConfig, baseline: Classifier, datamodule, forget_ids) -> list[dict]:
    """Twins of ``forget_ids`` from the backup set: ``[{request_id, twin_id, score}]``.

    Feature metrics embed with the baseline model (the paper's BL embeddings).
    """
    if twins.metric == "none":
        return []
    return assign_twins(spare_policy(twins, baseline, datamodule), baseline, datamodule, forget_ids)


# --------------------------------------------------------------------------- records and extras
def forget_set_record(adversary: AdversaryConfig, datamodule, forget_ids) -> dict:
    classes = torch.bincount(datamodule.targets[forget_ids], minlength=datamodule.num_classes)
    return {"adversary/selector": adversary.selector, "adversary/budget": adversary.budget,
            "adversary/system_knowledge": adversary.system_knowledge,
            "adversary/data_knowledge": adversary.data_knowledge, "adversary/target_class": adversary.target_class,
            "forget/count": len(forget_ids), "forget/ids": forget_ids.tolist(), "forget/classes": classes.tolist(),
            "dataset": datamodule.hparams.dataset, "primary/count": len(datamodule.primary_ids)}


def attack_strength(baseline, recipe, datamodule, forget_ids, cfg: UnlearnConfig, record: dict,
                    progress: bool = False) -> dict:
    """Accuracy drop of the adversary's forget set versus a random forget set of the same size."""
    reference = AdversaryConfig(selector="random", budget=len(forget_ids), seed=cfg.seed)
    random_ids = select_forget_ids(reference, baseline, datamodule)
    model, _ = unlearned_model(baseline, recipe, datamodule, random_ids, cfg, progress)
    random_acc = evaluate(model, datamodule.test_dataloader())["acc"]
    drop = record["baseline/test/acc"] - record["unlearned/test/acc"]
    drop_random = record["baseline/test/acc"] - random_acc
    return {"attack/random_forget/test/acc": random_acc, "attack/drop": drop, "attack/drop_random": drop_random,
            "attack/strength": drop - drop_random}


def sisa_phase(baseline, recipe, datamodule, forget_ids, cfg: UnlearnConfig, progress: bool = False) -> dict:
    """Train a SISA ensemble on the primary set (timed, as the paper's Table 1) and unlearn from it."""
    from healing_pl.unlearning.sisa import train_sisa, unlearn_sisa

    state = train_sisa(model_hparams(baseline), datamodule, shards=cfg.shards, slices=cfg.slices,
                       epochs=recipe["epochs"], seed=recipe["seed"], aggregation=cfg.aggregation, progress=progress)
    record = {f"sisa/{k}": v for k, v in evaluate_sets(state.ensemble, datamodule, forget_ids, "x").items()}
    record = {k.replace("sisa/x/", "sisa/"): v for k, v in record.items()}
    record["sisa/train_time_s"] = state.train_time
    start = time.perf_counter()
    new_state, info = unlearn_sisa(state, forget_ids, datamodule, progress=progress)
    record["unlearned/time_s"] = time.perf_counter() - start
    record.update(evaluate_sets(new_state.ensemble, datamodule, forget_ids, "unlearned"))
    record.update({f"sisa/unlearn_{k}": v for k, v in info.items() if isinstance(v, (int, float, list, dict, str))})
    return record


def save_model(model: Classifier, datamodule, path: str, **extra) -> None:
    """Save ``model`` as a checkpoint that :func:`load_classifier` and ``--ckpt_path`` accept."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = {"state_dict": model.state_dict(), "hyper_parameters": model_hparams(model),
               type(datamodule).__qualname__: datamodule.state_dict(),
               **{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in extra.items()}}
    torch.save(payload, path + ".tmp")
    os.replace(path + ".tmp", path)


# --------------------------------------------------------------------------- request streams
@dataclass
class StreamConfig:
    """A stream of benign and adversarial unlearn requests, applied in rounds.

    Args:
        benign_ratio: share of benign requests (random members, from regular users) in the stream, in [0, 1).
        order: arrival order: interleaved, adversary_first, benign_first or shuffled.
        round_size: requests per round; each round is unlearned (and healed) before the next.
        n_users: regular users sending the benign requests.
        name_by: requests name samples by pool id or by content hash.
        heal: heal after every round: twins (twins.*) plus a fine-tune of heal_epochs on the remain set.
        heal_epochs: fine-tuning epochs after each round when heal is on.
        seed: seed of the benign draws, the users and the shuffled order.
    """

    benign_ratio: float = 0.5
    order: Literal["interleaved", "adversary_first", "benign_first", "shuffled"] = "interleaved"
    round_size: int = 10
    n_users: int = 100
    name_by: Literal["id", "hash"] = "id"
    heal: bool = False
    heal_epochs: int = 1
    seed: int = 0


def fine_tune(model: Classifier, datamodule, train_ids, *, epochs: int, seed: int, lr: float | None = None) -> Classifier:
    """Fine-tune ``model`` in place on ``train_ids`` (Adam at ``lr`` or the model's own)."""
    import lightning as L

    from healing_pl.unlearning.naive import fit_on

    L.seed_everything(seed, verbose=False)
    if lr is not None:
        model.hparams.lr = lr
    return fit_on(model, datamodule, train_ids, epochs=epochs)


def run_stream(baseline, recipe, datamodule, unlearn: UnlearnConfig, adversary: AdversaryConfig,
               stream: StreamConfig, twins: TwinsConfig, run_dir: str, logger=None, progress: bool = False) -> dict:
    """Mix the adversary's requests with benign ones, and unlearn (and heal) them round by round.

    After each round the accepted samples leave the training set for good (the next round's remain
    set excludes them); test accuracy is evaluated and logged with the round as the step.
    """
    import copy

    from healing_pl.adversary.ledger import Ledger
    from healing_pl.adversary.membership import MembershipIndex
    from healing_pl.adversary.streams import RequestStream, run_rounds

    if unlearn.method == "sisa":
        raise ValueError("request streams support the naive, fisher and influence methods.")
    adversarial = select_forget_ids(adversary, baseline, datamodule, progress)
    requests = RequestStream(adversarial, datamodule.primary_ids, benign_ratio=stream.benign_ratio,
                             order=stream.order, round_size=stream.round_size, n_users=stream.n_users,
                             name_by=stream.name_by, dataset=datamodule.pool.train, seed=stream.seed)
    membership = MembershipIndex(datamodule.pool.train, datamodule.primary_ids)
    ledger = Ledger(run_dir)
    policy = spare_policy(twins, baseline, datamodule) if stream.heal and twins.metric != "none" else None
    state = {"model": copy.deepcopy(baseline), "twins": []}
    test = datamodule.test_dataloader()
    start_acc = evaluate(baseline, test)["acc"]
    curve = [{"round": -1, "test/acc": start_acc}]

    def on_round(index: int, accepted: torch.Tensor) -> dict:
        metrics: dict = {"round/accepted": int(accepted.numel())}
        if accepted.numel():
            result = unlearn_with_repeats(state["model"], datamodule, accepted, unlearn, epochs=recipe["epochs"],
                                          progress=progress)
            state["model"] = result.model
            datamodule.splits["primary"] = datamodule.remain_ids(accepted)  # the forgotten leave D for good
            metrics["unlearned/test/acc"] = evaluate(state["model"], test)["acc"]
            if stream.heal:
                if policy is not None:
                    pairs = assign_twins(policy, baseline, datamodule, accepted)
                    ledger_twins(ledger, datamodule)(pairs)
                    state["twins"] += [p["twin_id"] for p in pairs]
                heal_ids = torch.cat([datamodule.primary_ids, torch.tensor(state["twins"], dtype=torch.long)])
                fine_tune(state["model"], datamodule, heal_ids, epochs=stream.heal_epochs, seed=recipe["seed"] + index)
                metrics["healed/test/acc"] = evaluate(state["model"], test)["acc"]
        metrics["test/acc"] = evaluate(state["model"], test)["acc"]
        curve.append({"round": index, **metrics})
        if logger is not None:
            logger.log_metrics({f"stream/{k}": v for k, v in metrics.items()}, step=index)
        print(f"round {index}: {metrics['round/accepted']} accepted, test accuracy {metrics['test/acc']:.4f}")
        return metrics

    rounds = run_rounds(requests, membership, ledger, on_round)
    return {"stream/rounds": rounds, "stream/curve": curve, "stream/n_adversarial": requests.n_adversarial,
            "stream/n_benign": requests.n_benign, "baseline/test/acc": start_acc,
            "stream/final/test/acc": curve[-1]["test/acc"], "stream/unlearned_count": int(membership.unlearned_ids.numel()),
            "adversary/selector": adversary.selector, "forget/count": int(membership.unlearned_ids.numel()),
            "dataset": datamodule.hparams.dataset, "stream/ledger": ledger.path.as_posix()}
