"""Forget-set phase: the adversary's requests, the membership check, and the ledger."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import torch

from healing_pl import records as rk
from healing_pl.adversary import Selector
from healing_pl.adversary.ledger import Occurrences
from healing_pl.adversary.requests import RequestsFile
from healing_pl.unlearning import UNLEARNERS, Context, Unlearner

#: requests decided and written to the ledger per step (one write and one fsync each)
CHUNK = 10_000


@dataclass(frozen=True)
class ForgetSet:
    """The accepted forget set F and what happened to every request."""

    ids: torch.Tensor  # accepted pool ids, in request order
    adversary: Selector
    requested: int
    reasons: dict[str, int]  # decision reason -> count
    classes: list[int]  # samples of F per class
    primary_count: int
    request_ids: tuple[str, ...] = ()  # the ledger ids of the accepted requests (empty without a ledger)
    source: RequestsFile | None = None  # the RequestsFile the requests came from (None: the adversary)

    @property
    def accepted(self) -> int:
        return int(self.ids.numel())

    def record(self) -> dict:
        source = self.source.record() if self.source is not None else self.adversary.record()
        return {
            **source,
            rk.FORGET_COUNT: self.accepted,
            rk.FORGET_IDS: self.ids.tolist(),
            rk.FORGET_CLASSES: self.classes,
            rk.PRIMARY_COUNT: self.primary_count,
            rk.REQUESTS_COUNT: self.requested,
            rk.REQUESTS_ACCEPTED: self.accepted,
            rk.REQUESTS_REJECTED: self.requested - self.accepted,
            rk.REQUESTS_REASONS: self.reasons,
        }


def unlearning_simulator(unlearn: Unlearner, model, datamodule, context: Context | None = None):
    """``simulate(forget_ids) -> model``: the deployed method with its hyperparameters on a copy of ``model``.

    Every simulation uses the first repeat's seed (``unlearn.seed``): the unlearning-aware adversary
    compares candidate sets under the same noise draw.  No progress bars, no cache, no divergence check
    (a diverged copy simply scores as very damaging).
    """
    if not unlearn.simulable:
        simulable = " or ".join(cls.__name__ for cls in UNLEARNERS.classes() if cls.simulable)
        raise ValueError(
            f"the unlearning_aware adversary simulates the unlearning once per candidate, which it can for "
            f"{simulable}, not for {type(unlearn).__name__} (it retrains); pick another selector."
        )
    quiet = replace(context or Context(), progress=False)

    def simulate(forget_ids: torch.Tensor) -> torch.nn.Module:
        return unlearn.run(model, datamodule, forget_ids, quiet, unlearn.seed)[0]

    return simulate


def select_forget_ids(
    adversary: Selector,
    model,
    datamodule,
    progress: bool = False,
    unlearn: Unlearner | None = None,
    context: Context | None = None,
) -> torch.Tensor:
    """The adversary's requested ids (only what its knowledge allows reaches the selector).

    A data-blind adversary may name samples that were never trained on: :func:`request_forget_set`
    passes the requests through the membership check. ``unlearn`` (and the ``context`` it runs in): the
    deployed unlearning config, which the ``unlearning_aware`` adversary knows and simulates.
    """
    from healing_pl.adversary.selectors import select_forget_set

    simulate = None
    if adversary.simulates_unlearning:
        if unlearn is None:
            raise ValueError("the unlearning_aware adversary needs the unlearn config it attacks.")
        simulate = unlearning_simulator(unlearn, model, datamodule, context)

    pool = torch.arange(len(datamodule.pool))
    non_members = pool[~torch.isin(pool, datamodule.primary_ids)]
    ids = select_forget_set(
        adversary,
        dataset=datamodule.pool.train,
        primary_ids=datamodule.primary_ids,
        non_member_ids=non_members,
        num_classes=datamodule.num_classes,
        model=model,
        val_ids=datamodule.splits["val"],
        unlearn=simulate,
        progress=progress,
    )
    return torch.as_tensor(ids, dtype=torch.long).cpu()


def request_forget_set(
    adversary: Selector,
    model,
    datamodule,
    ledger=None,
    progress: bool = False,
    requests: RequestsFile | None = None,
    unlearn: Unlearner | None = None,
    context: Context | None = None,
) -> ForgetSet:
    """Select the adversary's requests, check membership, and write every decision to ``ledger`` (if any).

    ``requests``: a :class:`~healing_pl.adversary.requests.RequestsFile`; its requests, in file order, replace
    the adversary's (which is then not run) and go through the same check and ledger. ``unlearn`` and
    ``context``: the deployed unlearning, for the ``unlearning_aware`` adversary.

    Requests for non-members, duplicates and samples already unlearned are rejected with a reason.  Every
    decision is recorded before anything can fail: when all requests are rejected, the rejections are in the
    ledger before the ValueError; when the accepted ones would leave nothing to train on, a ``failed`` line
    follows them.  Runs on one rank (the ledger is written once).
    """
    from healing_pl.adversary.membership import MembershipIndex, Request

    membership = MembershipIndex(datamodule.pool.train, datamodule.primary_ids)
    if requests is not None:
        listed = requests.requests
    else:
        requested = select_forget_ids(adversary, model, datamodule, progress, unlearn, context)
        requester = f"adversary-{adversary.name}"
        listed = [Request(requester, sample_id=int(i), kind="adversarial") for i in requested]
    # decided and written in chunks: memory follows the accepted requests (at most the training set), not the
    # file's length; one claimed set and one occurrence count make the chunks decide as one batch would
    claimed: set[int] = set()
    occurrences = Occurrences()
    accepted_ids: list[int] = []
    accepted_requests_list: list[str] = []
    counts: Counter = Counter()
    for start in range(0, len(listed), CHUNK):
        decisions = membership.check(listed[start : start + CHUNK], claimed=claimed)
        ids = ledger.record(decisions, 0, occurrences) if ledger is not None else [None] * len(decisions)
        counts.update(d.reason for d in decisions)
        for rid, d in zip(ids, decisions):
            if d.accepted:
                accepted_ids.append(d.sample_id)
                if rid is not None:
                    accepted_requests_list.append(rid)
    n_decided = len(listed)
    accepted_requests = tuple(accepted_requests_list)
    accepted = torch.tensor(accepted_ids, dtype=torch.long)
    reasons = dict(counts)
    if accepted.numel() == 0:
        raise ValueError(f"all {n_decided} unlearn requests were rejected ({reasons}); nothing to unlearn.")
    if accepted.numel() == len(datamodule.primary_ids):
        message = "the forget set covers the whole primary set; nothing would remain to train on."
        if accepted_requests:
            ledger.failed(accepted_requests, message)
        raise ValueError(message)
    classes = torch.bincount(datamodule.targets[accepted], minlength=datamodule.num_classes).tolist()
    return ForgetSet(
        accepted, adversary, n_decided, reasons, classes, len(datamodule.primary_ids), accepted_requests, requests
    )
