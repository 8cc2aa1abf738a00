"""Request streams: an adversary's unlearn requests blended with regular users'.

The paper (sec. 3) notes that in a real system adversarial requests arrive
mixed with spontaneous ones from regular users, which may strengthen the
attack or blunt it.  :class:`RequestStream` builds such a mix:

* the adversary's requests, one per id it selected (requester ``adversary``);
* benign requests for random training samples the adversary did not name,
  each from a random regular user ``user-<n>``;
* an arrival ``order`` and a cut into rounds of ``round_size`` requests.

:func:`run_rounds` then feeds the rounds through the membership check and the
ledger, and hands each round's accepted ids to the pipeline's callback, which
unlearns, heals and evaluates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from healing_pl.adversary.ledger import Ledger
from healing_pl.adversary.membership import MembershipIndex, Request, sample_hash

__all__ = ["ORDERS", "RequestStream", "run_rounds"]

#: Arrival orders of a stream.
ORDERS: tuple[str, ...] = ("interleaved", "adversary_first", "benign_first", "shuffled")


def _ids(values) -> Tensor:
    t = torch.as_tensor(values if values is not None else [], dtype=torch.long)
    return t.reshape(-1).cpu()


class RequestStream:
    """A deterministic stream of unlearn requests, cut into rounds.

    Args:
        adversarial_ids: the ids the adversary asks to unlearn (e.g. a
            selector's output), in the adversary's order.
        benign_pool_ids: training ids regular users may ask for; the
            adversary's ids are left out of it, so users and the adversary
            never name the same sample.
        benign_ratio: the share of benign requests in the whole stream, in
            [0, 1): ``n_benign = round(ratio * n_adv / (1 - ratio))``.
        n_benign: the number of benign requests (instead of ``benign_ratio``).
        order: ``interleaved`` (benign and adversarial spread evenly through
            the stream, the adversary first on a tie), ``adversary_first``,
            ``benign_first`` or ``shuffled`` (a seeded permutation).
        round_size: requests per round (the last round may be shorter);
            None puts the whole stream in one round.
        n_users: regular users; each benign request comes from a random one.
        adversary: the adversary's requester name.
        name_by: ``id`` (requests carry pool ids) or ``hash`` (content
            hashes; needs ``dataset``).
        dataset: the pool, for ``name_by="hash"``.
        seed: seed of the benign draws, the users and the shuffle.

    Iterating yields the rounds (lists of :class:`Request`); ``requests`` is
    the flat list.  An empty stream raises ValueError.
    """

    def __init__(
        self,
        adversarial_ids=(),
        benign_pool_ids=None,
        *,
        benign_ratio: float | None = None,
        n_benign: int | None = None,
        order: str = "interleaved",
        round_size: int | None = None,
        n_users: int = 100,
        adversary: str = "adversary",
        name_by: str = "id",
        dataset=None,
        seed: int = 0,
    ):
        if order not in ORDERS:
            raise ValueError(f"Unknown order {order!r}; expected one of {', '.join(ORDERS)}.")
        if benign_ratio is not None and n_benign is not None:
            raise ValueError("Give either benign_ratio or n_benign, not both.")
        if benign_ratio is not None and not 0.0 <= benign_ratio < 1.0:
            raise ValueError(f"benign_ratio must lie in [0, 1), got {benign_ratio}.")
        if n_benign is not None and n_benign < 0:
            raise ValueError(f"n_benign must be >= 0, got {n_benign}.")
        if round_size is not None and round_size < 1:
            raise ValueError(f"round_size must be at least 1, got {round_size}.")
        if n_users < 1:
            raise ValueError(f"n_users must be at least 1, got {n_users}.")
        if name_by not in ("id", "hash"):
            raise ValueError(f"Unknown name_by {name_by!r}; expected 'id' or 'hash'.")
        if name_by == "hash" and dataset is None:
            raise ValueError("name_by='hash' needs the dataset to hash the samples.")

        adversarial = _ids(adversarial_ids)
        if len(torch.unique(adversarial)) != len(adversarial):
            raise ValueError("adversarial_ids repeats an id.")
        n_adv = len(adversarial)
        if benign_ratio is not None:
            n_benign = int(round(benign_ratio * n_adv / (1.0 - benign_ratio)))
        n_benign = int(n_benign or 0)
        if n_adv + n_benign == 0:
            raise ValueError("The request stream has no requests.")

        g = torch.Generator()
        g.manual_seed(int(seed))
        benign = torch.empty(0, dtype=torch.long)
        users = torch.empty(0, dtype=torch.long)
        if n_benign:
            pool = torch.unique(_ids(benign_pool_ids))
            pool = pool[~torch.isin(pool, adversarial)]
            if len(pool) < n_benign:
                raise ValueError(
                    f"{n_benign} benign requests need as many training samples outside the "
                    f"adversary's, but only {len(pool)} exist."
                )
            benign = pool[torch.randperm(len(pool), generator=g)[:n_benign]]
            users = torch.randint(n_users, (n_benign,), generator=g)

        def name(sid: int) -> dict:
            if name_by == "id":
                return {"sample_id": sid}
            return {"sample_hash": sample_hash(dataset[sid][0])}

        adv_requests = [Request(adversary, kind="adversarial", **name(i)) for i in adversarial.tolist()]
        benign_requests = [
            Request(f"user-{u}", kind="benign", **name(i)) for i, u in zip(benign.tolist(), users.tolist())
        ]
        self.requests: list[Request] = self._arrange(adv_requests, benign_requests, order, g)
        self.round_size = round_size
        self.order = order

    @staticmethod
    def _arrange(adv: list, benign: list, order: str, g: torch.Generator) -> list:
        if order == "adversary_first":
            return adv + benign
        if order == "benign_first":
            return benign + adv
        if order == "shuffled":
            merged = adv + benign
            return [merged[i] for i in torch.randperm(len(merged), generator=g).tolist()]
        # interleaved: place each request at the middle of its slot within its own
        # kind's share of the stream, then merge by position (adversary first on a tie).
        keyed = [((i + 0.5) / len(adv), 0, r) for i, r in enumerate(adv)]
        keyed += [((j + 0.5) / len(benign), 1, r) for j, r in enumerate(benign)]
        keyed.sort(key=lambda t: (t[0], t[1]))
        return [r for _, _, r in keyed]

    def rounds(self) -> list[list[Request]]:
        """The requests cut into rounds of ``round_size``."""
        size = self.round_size or len(self.requests)
        return [self.requests[i : i + size] for i in range(0, len(self.requests), size)]

    def __iter__(self) -> Iterator[list[Request]]:
        return iter(self.rounds())

    def __len__(self) -> int:
        """Number of rounds."""
        return len(self.rounds())

    @property
    def n_adversarial(self) -> int:
        return sum(r.kind == "adversarial" for r in self.requests)

    @property
    def n_benign(self) -> int:
        return sum(r.kind == "benign" for r in self.requests)


OnRound = Callable[[int, Tensor], dict | None]


#: The keys of a round summary (a ledger line adds its own: type, time, the chain's).
SUMMARY_KEYS = ("round", "n_requests", "n_accepted", "n_rejected", "reasons", "by_kind", "metrics")


def _stored_summary(stored: dict) -> dict:
    return {k: stored[k] for k in SUMMARY_KEYS if k in stored}


def _summary(round_index: int, decisions, metrics: dict) -> dict:
    by_kind: dict[str, dict[str, int]] = {}
    for d in decisions:
        counts = by_kind.setdefault(d.request.kind, {"accepted": 0, "rejected": 0})
        counts["accepted" if d.accepted else "rejected"] += 1
    n_accepted = sum(d.accepted for d in decisions)
    return {
        "round": round_index,
        "n_requests": len(decisions),
        "n_accepted": n_accepted,
        "n_rejected": len(decisions) - n_accepted,
        "reasons": dict(Counter(d.reason for d in decisions)),
        "by_kind": by_kind,
        "metrics": metrics,
    }


def _applied_prefix(ledger: Ledger, n_rounds: int) -> int:
    """How many rounds, from the first, have their summary in the ledger."""
    done = 0
    while done < n_rounds and ledger.round_record(done) is not None:
        done += 1
    return done


def run_rounds(
    stream: Iterable[Sequence[Request]],
    membership: MembershipIndex,
    ledger: Ledger,
    on_round: OnRound | None = None,
    *,
    restore: Callable[[int], bool] | None = None,
    model_hash: Callable[[], str] | None = None,
) -> list[dict]:
    """Check, record and apply the stream round by round.

    For each round: the membership check decides every request; every
    decision is appended to the ledger; the accepted samples are marked
    unlearned; ``on_round(round_index, accepted_ids)`` is called with this
    round's accepted ids (a LongTensor, in request order) and returns a dict
    of metrics (or None); a round summary is appended to the ledger.

    Returns one record per round: ``round``, ``n_requests``, ``n_accepted``,
    ``n_rejected``, ``reasons`` (count per reason), ``by_kind`` (accepted /
    rejected per benign / adversarial) and ``metrics``.

    Resuming: with a ledger that already holds some rounds, pass a *fresh*
    ``MembershipIndex`` and the same stream.  Requests already in the ledger
    are never appended twice, nor is a round summary.

    * Without ``restore``, a round whose summary is in the ledger is not
      applied again: its accepted ids are taken from the ledger, ``on_round``
      is not called and its stored summary is returned.
    * With ``restore``, the pipeline rebuilds its own state: ``restore(k)``
      loads the state after round ``k`` (its checkpoint) and returns False
      when it has none.  It is asked for the last round whose summary is in
      the ledger first, then for earlier ones; the rounds up to the restored
      one are skipped as above, every later round is applied again
      (``on_round`` is called; a summary already in the ledger is kept and
      returned as stored).

    ``model_hash``: the SHA-256 of the model's weights after ``on_round``
    (:func:`~healing_pl.adversary.ledger.weights_sha256`); given, every round
    that accepted requests gets an ``applied`` line naming them and the hash,
    before its summary.
    """
    # a sequence of rounds (e.g. slices of a long requests file) is read one round at a time
    rounds = stream if isinstance(stream, Sequence) else [list(requests) for requests in stream]
    resume_at = len(rounds)  # rounds before it are skipped
    if restore is not None:
        resume_at = _applied_prefix(ledger, len(rounds))
        while resume_at > 0 and not restore(resume_at - 1):
            resume_at -= 1
    records = []
    for round_index in range(len(rounds)):
        requests = list(rounds[round_index])
        if not requests:
            raise ValueError(f"Round {round_index} of the stream has no requests.")
        decisions = membership.check(requests)
        request_ids = ledger.record(decisions, round_index)
        stored = ledger.round_record(round_index)
        if stored is not None and round_index < resume_at:
            membership.mark_unlearned(ledger.accepted_sample_ids(request_ids))
            records.append(_stored_summary(stored))
            continue
        accepted = membership.commit(decisions)
        metrics = on_round(round_index, accepted) if on_round is not None else None
        if metrics is not None and not isinstance(metrics, dict):
            raise TypeError(f"on_round must return a dict of metrics or None, got {type(metrics).__name__}.")
        record = _summary(round_index, decisions, dict(metrics or {}))
        accepted_ids = ledger.accepted_request_ids(request_ids)
        if model_hash is not None and accepted_ids:
            ledger.applied(accepted_ids, model_hash(), round_index)
        if not ledger.append_round(record):  # applied again after a lost checkpoint: the ledger keeps its summary
            record = _stored_summary(stored)
        records.append(record)
    if not records:
        raise ValueError("The request stream has no requests.")
    return records
