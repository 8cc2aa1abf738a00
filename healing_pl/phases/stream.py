"""Stream phase: benign and adversarial requests in rounds, each unlearned (and healed) before the next."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from healing_pl.models.classifier import evaluate
from healing_pl.phases.baseline import Baseline
from healing_pl.phases.config import AdversaryConfig, HealConfig, StreamConfig, TwinsConfig, UnlearnConfig
from healing_pl.phases.forget import select_forget_ids
from healing_pl.phases.heal import fine_tune
from healing_pl.phases.twins import ledger_twins, spare_policy, twin_phase
from healing_pl.phases.unlearn import unlearned_model
from healing_pl.unlearning.methods import METHODS, Context


@dataclass(frozen=True)
class StreamResult:
    rounds: list[dict]
    curve: list[dict]  # test accuracy after every round (round -1: the baseline)
    n_adversarial: int
    n_benign: int
    unlearned_count: int
    adversary: AdversaryConfig
    ledger: str

    def record(self) -> dict:
        return {
            "stream/rounds": self.rounds,
            "stream/curve": self.curve,
            "stream/n_adversarial": self.n_adversarial,
            "stream/n_benign": self.n_benign,
            "baseline/test/acc": self.curve[0]["test/acc"],
            "stream/final/test/acc": self.curve[-1]["test/acc"],
            "stream/unlearned_count": self.unlearned_count,
            "adversary/selector": self.adversary.selector,
            "forget/count": self.unlearned_count,
            "stream/ledger": self.ledger,
        }


def state_sha256(model: torch.nn.Module) -> str:
    """Content hash of a model's weights (names a round's starting model in the unlearn cache)."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_stream(
    model,
    baseline: Baseline,
    datamodule,
    *,
    unlearn: UnlearnConfig,
    adversary: AdversaryConfig,
    stream: StreamConfig,
    twins: TwinsConfig,
    heal: HealConfig,
    ledger,
    context: Context,
    log: Callable[[dict, int], None] | None = None,
) -> StreamResult:
    """Mix the adversary's requests with benign ones and unlearn (and heal) them round by round.

    After each round the accepted samples leave the training set for good (the next round's remain
    set excludes them). Each round's unlearning goes through the unlearn cache (keyed by the round's
    starting weights); healing draws twins from one spare policy (no spare is used twice) and
    fine-tunes at ``heal.lr``. Test accuracy is evaluated after every round.
    """
    from healing_pl.adversary.membership import MembershipIndex
    from healing_pl.adversary.streams import RequestStream, run_rounds

    if METHODS[unlearn.method].ensemble:
        raise ValueError(
            f"request streams cannot apply '{unlearn.method}' round by round; use naive, fisher or influence."
        )
    adversarial = select_forget_ids(adversary, model, datamodule, context.progress)
    requests = RequestStream(
        adversarial,
        datamodule.primary_ids,
        benign_ratio=stream.benign_ratio,
        order=stream.order,
        round_size=stream.round_size,
        n_users=stream.n_users,
        name_by=stream.name_by,
        dataset=datamodule.pool.train,
        seed=stream.seed,
    )
    membership = MembershipIndex(datamodule.pool.train, datamodule.primary_ids)
    policy = spare_policy(twins, model, datamodule) if stream.heal and twins.metric != "none" else None
    embedder = model
    current = {"model": model}
    twin_ids: list[int] = []
    test = datamodule.test_dataloader()
    curve = [{"round": -1, "test/acc": evaluate(model, test)["acc"]}]

    def on_round(index: int, accepted: torch.Tensor) -> dict:
        metrics: dict = {"round/accepted": int(accepted.numel())}
        if accepted.numel():
            start = current["model"]
            source = baseline if start is model else replace(baseline, sha256=state_sha256(start))
            current["model"], _, _, _ = unlearned_model(start, source, datamodule, accepted, unlearn, context)
            metrics["unlearned/test/acc"] = evaluate(current["model"], test)["acc"]
            if stream.heal:
                twin_set = twin_phase(twins, embedder, datamodule, accepted, policy) if policy is not None else None
                datamodule.splits["primary"] = datamodule.remain_ids(accepted)  # the forgotten leave D for good
                if twin_set is not None:
                    ledger_twins(ledger, datamodule, twin_set.pairs)
                    twin_ids.extend(twin_set.twin_ids)
                heal_ids = torch.cat([datamodule.primary_ids, torch.tensor(twin_ids, dtype=torch.long)])
                fine_tune(
                    current["model"],
                    datamodule,
                    heal_ids,
                    epochs=stream.heal_epochs,
                    seed=baseline.seed + index,
                    lr=heal.lr,
                    trainer=context.trainer,
                )
                metrics["healed/test/acc"] = evaluate(current["model"], test)["acc"]
            else:
                datamodule.splits["primary"] = datamodule.remain_ids(accepted)
        metrics["test/acc"] = evaluate(current["model"], test)["acc"]
        curve.append({"round": index, **metrics})
        if log is not None:
            log({f"stream/{k}": v for k, v in metrics.items()}, index)
        print(f"round {index}: {metrics['round/accepted']} accepted, test accuracy {metrics['test/acc']:.4f}")
        return metrics

    rounds = run_rounds(requests, membership, ledger, on_round)
    return StreamResult(
        rounds,
        curve,
        requests.n_adversarial,
        requests.n_benign,
        int(membership.unlearned_ids.numel()),
        adversary,
        ledger.path.as_posix(),
    )
