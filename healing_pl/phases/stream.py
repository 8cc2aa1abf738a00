"""Stream phase: benign and adversarial requests in rounds, each unlearned (and healed) before the next."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from healing_pl import records as rk
from healing_pl.adversary import Selector
from healing_pl.adversary.ledger import weights_sha256
from healing_pl.adversary.requests import RequestsFile
from healing_pl.files import save_torch
from healing_pl.models.classifier import evaluate
from healing_pl.phases.baseline import Baseline
from healing_pl.phases.config import HealConfig, StreamConfig, TwinsConfig
from healing_pl.phases.forget import select_forget_ids
from healing_pl.phases.heal import fine_tune
from healing_pl.phases.twins import ledger_twins, spare_policy, twin_phase
from healing_pl.phases.unlearn import unlearned_model
from healing_pl.unlearning import UNLEARNERS, Context, Unlearner, copy_model


@dataclass(frozen=True)
class StreamResult:
    rounds: list[dict]
    curve: list[dict]  # test accuracy after every round (round -1: the baseline)
    n_adversarial: int
    n_benign: int
    unlearned_count: int
    adversary: Selector
    ledger: str
    source: RequestsFile | None = None  # the requests file (None: the adversary's stream)
    n_user: int = 0

    def record(self) -> dict:
        source = self.source.record() if self.source is not None else {rk.ADVERSARY_SELECTOR: self.adversary.name}
        return {
            rk.STREAM_ROUNDS: self.rounds,
            rk.STREAM_CURVE: self.curve,
            rk.STREAM_N_ADVERSARIAL: self.n_adversarial,
            rk.STREAM_N_BENIGN: self.n_benign,
            rk.STREAM_N_USER: self.n_user,
            rk.BASELINE_TEST_ACC: self.curve[0][rk.CURVE_TEST_ACC],
            rk.STREAM_FINAL_TEST_ACC: self.curve[-1][rk.CURVE_TEST_ACC],
            rk.STREAM_UNLEARNED_COUNT: self.unlearned_count,
            **source,
            rk.FORGET_COUNT: self.unlearned_count,
            rk.STREAM_LEDGER: self.ledger,
        }


def round_checkpoint(directory: str, index: int) -> str:
    """The state after round ``index`` of a stream: ``<directory>/round-<index>.pt``."""
    return os.path.join(directory, f"round-{index:04d}.pt")


def run_stream(
    model,
    baseline: Baseline,
    datamodule,
    *,
    unlearn: Unlearner,
    adversary: Selector,
    stream: StreamConfig,
    twins: TwinsConfig,
    heal: HealConfig,
    ledger,
    context: Context,
    log: Callable[[dict, int], None] | None = None,
    checkpoint_dir: str | None = None,
    requests: RequestsFile | None = None,
) -> StreamResult:
    """Mix the adversary's requests with benign ones and unlearn (and heal) them round by round.

    After each round the accepted samples leave the training set for good (the next round's remain
    set excludes them). Each round's unlearning goes through the unlearn cache (keyed by the round's
    starting weights); healing draws twins from one spare policy (no spare is used twice) and
    fine-tunes at ``heal.lr``. Test accuracy is evaluated after every round.

    ``checkpoint_dir``: after each round, before its summary goes to the ledger, the state after it (the model's
    weights on the CPU, the ids removed from the primary set, the twins and the spare policy's state) is written
    to :func:`round_checkpoint`. A rerun into the same run folder loads the state after the last round the ledger
    holds and goes on with the next round, so an interrupted stream ends with the uninterrupted one's model.

    ``requests``: a requests file; its requests, in file order and rounds of ``stream.round_size``, are the stream
    (the adversary and the benign mix are not used).
    """
    from healing_pl.adversary.membership import MembershipIndex
    from healing_pl.adversary.streams import RequestStream, run_rounds

    if unlearn.ensemble:
        raise ValueError(
            f"request streams cannot apply {type(unlearn).__name__} round by round; use "
            f"{', '.join(cls.__name__ for cls in UNLEARNERS.classes() if not cls.ensemble)}."
        )
    if requests is not None:
        listed = requests.requests  # columns: each round's requests are built as it runs
    else:
        adversarial = select_forget_ids(adversary, model, datamodule, context.progress, unlearn, context)
        listed = RequestStream(
            adversarial,
            datamodule.primary_ids,
            benign_ratio=stream.benign_ratio,
            order=stream.order,
            round_size=stream.round_size,
            n_users=stream.n_users,
            name_by=stream.name_by,
            dataset=datamodule.pool.train,
            seed=stream.seed,
        ).requests
    size = stream.round_size
    stream_rounds = _Rounds(listed, size)
    kinds = Counter(r.kind for r in listed)
    membership = MembershipIndex(datamodule.pool.train, datamodule.primary_ids)
    policy = spare_policy(twins, model, datamodule) if stream.heal and twins.metric is not None else None
    embedder = model
    current = {"model": model}
    twin_ids: list[int] = []
    primary = datamodule.primary_ids
    test = datamodule.test_dataloader()
    baseline_acc = evaluate(model, test)["acc"]

    def checkpoint(index: int) -> None:
        removed = primary[~torch.isin(primary, datamodule.primary_ids)]
        state = {
            "round": index,
            "state_dict": {k: v.detach().cpu().clone() for k, v in current["model"].state_dict().items()},
            "removed": removed.cpu(),
            "twin_ids": torch.tensor(twin_ids, dtype=torch.long),
            "policy": policy.state_dict() if policy is not None else None,
        }
        save_torch(state, round_checkpoint(checkpoint_dir, index))

    def restore(index: int) -> bool:
        path = round_checkpoint(checkpoint_dir, index)
        if not os.path.isfile(path):
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a planted pickle or a torn file: never run it, name it
            raise ValueError(
                f"round checkpoint '{path}' cannot be loaded as plain weights ({type(err).__name__}); "
                "delete it to replay that round."
            ) from None
        restored = copy_model(model)  # the baseline stays the embedder and round 0's start
        restored.load_state_dict(state["state_dict"])
        current["model"] = restored.eval()
        removed = state["removed"]
        datamodule.splits["primary"] = datamodule.remain_ids(removed) if removed.numel() else primary
        twin_ids[:] = state["twin_ids"].tolist()
        if policy is not None and state["policy"] is not None:
            policy.load_state_dict(state["policy"])
        print(f"resuming the stream after round {index} ({path})")
        return True

    def on_round(index: int, accepted: torch.Tensor) -> dict:
        metrics: dict = {rk.CURVE_ACCEPTED: int(accepted.numel())}
        if accepted.numel():
            start = current["model"]
            source = baseline if start is model else replace(baseline, sha256=weights_sha256(start))
            current["model"], _, _, _ = unlearned_model(start, source, datamodule, accepted, unlearn, context)
            metrics[rk.CURVE_UNLEARNED_TEST_ACC] = evaluate(current["model"], test)["acc"]
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
                metrics[rk.CURVE_HEALED_TEST_ACC] = evaluate(current["model"], test)["acc"]
            else:
                datamodule.splits["primary"] = datamodule.remain_ids(accepted)
        metrics[rk.CURVE_TEST_ACC] = evaluate(current["model"], test)["acc"]
        if checkpoint_dir:
            checkpoint(index)
        if log is not None:
            points = {rk.stream_history(k).name: v for k, v in {rk.CURVE_ROUND: index, **metrics}.items()}
            log(points, index)  # with stream/round, the rounds' x-axis in W&B
        print(f"round {index}: {metrics[rk.CURVE_ACCEPTED]} accepted, test accuracy {metrics[rk.CURVE_TEST_ACC]:.4f}")
        return rk.plain(metrics)

    rounds = run_rounds(
        stream_rounds,
        membership,
        ledger,
        on_round,
        restore=restore if checkpoint_dir else None,
        model_hash=lambda: weights_sha256(current["model"]),
    )
    if not membership.unlearned_ids.numel():
        reasons: Counter = Counter()
        for r in rounds:
            reasons.update(r["reasons"])
        summary = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        raise ValueError(f"all {len(listed)} requests of the stream were rejected ({summary}); nothing to unlearn.")
    curve = [{rk.CURVE_ROUND.name: -1, rk.CURVE_TEST_ACC.name: baseline_acc}]
    curve += [{rk.CURVE_ROUND.name: r["round"], **r["metrics"]} for r in rounds]
    return StreamResult(
        rounds,
        curve,
        kinds["adversarial"],
        kinds["benign"],
        int(membership.unlearned_ids.numel()),
        adversary,
        ledger.path.as_posix(),
        requests,
        kinds["user"],
    )


class _Rounds(Sequence):
    """``requests`` cut into rounds of ``size``, each round's list built when it is read."""

    def __init__(self, requests: Sequence, size: int):
        self.requests, self.size = requests, size

    def __len__(self) -> int:
        return -(-len(self.requests) // self.size)

    def __getitem__(self, index: int) -> list:
        if not 0 <= index < len(self):
            raise IndexError("round index out of range")
        return list(self.requests[index * self.size : (index + 1) * self.size])
