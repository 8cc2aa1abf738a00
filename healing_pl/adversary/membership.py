"""Membership check: honour an unlearn request only for a sample that was trained on.

An unlearn request names one sample of the pool, either by its pool id or by
its content hash (:func:`sample_hash`; a raw tensor is hashed on arrival).
:class:`MembershipIndex` resolves the request and decides:

==================  =========================================================
reason              decision
==================  =========================================================
``member``          accept: a training sample, not unlearned yet
``unknown_id``      reject: the id is outside the pool
``not_a_member``    reject: never trained on.  This is the defence against
                    'Unlearn and Burn'-style attacks that ask to unlearn
                    samples the model never saw (hash checking, paper sec. 2)
``already_unlearned``  reject: unlearned in an earlier batch
``duplicate``       reject: the same sample was already named earlier in the
                    same batch (the first request is the one decided)
==================  =========================================================

Reasons are checked in that order.  :meth:`MembershipIndex.check` is pure; the
index only changes when accepted decisions are committed with
:meth:`MembershipIndex.commit`, so a caller can record decisions first and
apply them after.

Identical copies: if several training samples have the same content, each
is a separate sample; a request by hash takes the lowest id among those
still present, and one request unlearns one copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["KINDS", "REASONS", "sample_hash", "Request", "Decision", "MembershipIndex"]

#: Who sent a request: a simulated regular user (benign), the adversary, or a real requester from a
#: ``--requests`` file (user, when the file does not say).
KINDS: tuple[str, ...] = ("benign", "adversarial", "user")
#: Every reason a decision may carry; only ``member`` accepts.
REASONS: tuple[str, ...] = ("member", "unknown_id", "not_a_member", "already_unlearned", "duplicate")


def sample_hash(x) -> str:
    """Content hash of one sample: hex SHA-256 of its dtype, shape and bytes.

    The digest covers the header ``"<dtype>|<shape>|"`` (e.g.
    ``"torch.float32|(1, 8, 8)|"``) followed by the raw bytes of the tensor
    made contiguous on the CPU, so two tensors hash alike exactly when they
    have the same dtype, shape and values (bit for bit; ``-0.0`` differs from
    ``0.0``).  Arrays and numbers are converted with ``torch.as_tensor``
    first.  The sample must be the one ``dataset[i][0]`` returns: a pool with
    random augmentation in ``__getitem__`` has no stable hashes.
    """
    t = x if isinstance(x, Tensor) else torch.as_tensor(x)
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    digest = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    digest.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())  # the raw bytes, without a copy
    return digest.hexdigest()


@dataclass(frozen=True)
class Request:
    """One unlearn request: who asks, and which sample (exactly one of id or hash).

    Attributes:
        requester: who sent it, e.g. ``"user-3"`` or ``"adversary"``.
        sample_id: the sample's pool id, or None when named by hash.
        sample_hash: the sample's :func:`sample_hash`, or None when named by id.
        kind: ``benign``, ``adversarial`` (ground truth for the experiment) or
            ``user`` (a real request of unknown intent); the membership check
            does not look at it.
    """

    requester: str
    sample_id: int | None = None
    sample_hash: str | None = None
    kind: str = "benign"

    def __post_init__(self) -> None:
        if not isinstance(self.requester, str) or not self.requester:
            raise ValueError("A request needs a non-empty requester name.")
        if (self.sample_id is None) == (self.sample_hash is None):
            raise ValueError("A request names its sample by exactly one of sample_id or sample_hash.")
        if self.sample_id is not None:
            if isinstance(self.sample_id, bool) or not isinstance(self.sample_id, int):
                raise ValueError(f"sample_id must be an int, got {self.sample_id!r}.")
        if self.kind not in KINDS:
            raise ValueError(f"Unknown request kind {self.kind!r}; expected one of {', '.join(KINDS)}.")

    @classmethod
    def for_content(cls, x, requester: str, kind: str = "benign") -> Request:
        """A request that names a sample by its content (the tensor is hashed)."""
        return cls(requester=requester, sample_hash=sample_hash(x), kind=kind)

    @property
    def named_by(self) -> str:
        return "id" if self.sample_id is not None else "hash"


@dataclass(frozen=True)
class Decision:
    """The membership check's answer to one request.

    Attributes:
        request: the request decided.
        sample_id: the resolved pool id (None when a hash matches no member).
        sample_hash: the sample's content hash (None for an unknown id).
        reason: one of :data:`REASONS`; ``member`` means accepted.
    """

    request: Request
    sample_id: int | None
    sample_hash: str | None
    reason: str

    @property
    def accepted(self) -> bool:
        return self.reason == "member"

    @property
    def decision(self) -> str:
        return "accept" if self.accepted else "reject"


RequestLike = Request | int | str | Tensor


class MembershipIndex:
    """Knows the training set, resolves requests and tracks what was unlearned.

    Args:
        dataset: the pool; ``dataset[i] -> (x, y)`` for every pool id.
        primary_ids: the training set D (ids into the pool).
        progress: show a progress bar while hashing the training set (done
            once, on the first request by hash).
    """

    def __init__(self, dataset, primary_ids, *, progress: bool = False):
        self.dataset = dataset
        self.pool_size = len(dataset)
        ids = torch.as_tensor(primary_ids).reshape(-1).long().cpu()
        if len(ids) and (ids.min() < 0 or ids.max() >= self.pool_size):
            raise ValueError(f"primary_ids must lie in [0, {self.pool_size}), the pool's id range.")
        self._member = torch.zeros(self.pool_size, dtype=torch.bool)
        self._member[ids] = True
        self._unlearned = torch.zeros(self.pool_size, dtype=torch.bool)
        self._progress = progress
        self._by_hash: dict[str, list[int]] | None = None
        self._hashes: dict[int, str] = {}  # pool id -> content hash, filled on use (the pool does not change)
        # numpy views sharing the tensors' memory: one element reads in ~0.1 us instead of ~2 us
        self._member_np = self._member.numpy()
        self._unlearned_np = self._unlearned.numpy()

    # ------------------------------------------------------------------ state
    @property
    def member_ids(self) -> Tensor:
        """The training ids, sorted."""
        return torch.nonzero(self._member).reshape(-1)

    @property
    def unlearned_ids(self) -> Tensor:
        """Training ids unlearned so far, sorted."""
        return torch.nonzero(self._unlearned).reshape(-1)

    @property
    def remaining_ids(self) -> Tensor:
        """Training ids not unlearned (the remain set R), sorted."""
        return torch.nonzero(self._member & ~self._unlearned).reshape(-1)

    def is_member(self, sample_id: int) -> bool:
        return 0 <= sample_id < self.pool_size and bool(self._member_np[sample_id])

    def hash_of(self, sample_id: int) -> str:
        """Content hash of one pool sample (computed once, then remembered)."""
        digest = self._hashes.get(sample_id)
        if digest is None:
            digest = self._hashes[sample_id] = sample_hash(self.dataset[sample_id][0])
        return digest

    def _hash_index(self) -> dict[str, list[int]]:
        """hash -> training ids with that content (ascending), built on first use."""
        if self._by_hash is None:
            ids = self.member_ids.tolist()
            if self._progress:
                from tqdm.auto import tqdm

                ids = tqdm(ids, desc="hashing the training set", leave=False)
            index: dict[str, list[int]] = {}
            for i in ids:
                index.setdefault(self.hash_of(i), []).append(i)
            self._by_hash = index
        return self._by_hash

    # --------------------------------------------------------------- resolve
    @staticmethod
    def as_request(request: RequestLike, requester: str = "anonymous") -> Request:
        """Turn an id, a hash string or a raw tensor into a :class:`Request`."""
        if isinstance(request, Request):
            return request
        if isinstance(request, Tensor) and request.dim() > 0:
            return Request.for_content(request, requester)
        if isinstance(request, str):
            return Request(requester, sample_hash=request)
        if isinstance(request, (int, Tensor)) and not isinstance(request, bool):
            return Request(requester, sample_id=int(request))
        raise ValueError(f"Cannot read {request!r} as an unlearn request.")

    def resolve(self, request: RequestLike) -> tuple[int | None, str | None]:
        """The pool id and content hash a request names.

        By id: ``(id, hash)``, or ``(id, None)`` for an id outside the pool.
        By hash (or tensor): the lowest training id with that content that is
        not unlearned (the lowest one if all are), or ``(None, hash)`` when
        no training sample has that content.
        """
        return self._resolve(self.as_request(request), claimed=set())

    def _resolve(self, request: Request, claimed: set[int]) -> tuple[int | None, str | None]:
        if request.sample_id is not None:
            sid = request.sample_id
            if not 0 <= sid < self.pool_size:
                return sid, None
            return sid, self.hash_of(sid)
        copies = self._hash_index().get(request.sample_hash)
        if not copies:
            return None, request.sample_hash
        unlearned = self._unlearned_np
        for sid in copies:  # the first copy still present and not named in this batch
            if not unlearned[sid] and sid not in claimed:
                return sid, request.sample_hash
        present = [sid for sid in copies if not unlearned[sid]]
        return (present or copies)[0], request.sample_hash

    # ---------------------------------------------------------------- decide
    def check(self, requests: Iterable[RequestLike], claimed: set[int] | None = None) -> list[Decision]:
        """Decide one batch of requests, in order; changes nothing (but ``claimed``).

        Within the batch, a sample named again after an earlier request for
        it is a ``duplicate`` (whatever the earlier decision was). ``claimed``: the pool ids named so far,
        updated in place; pass one set to every call that decides a part of the same batch (a long requests
        file decided in chunks).
        """
        decisions = []
        claimed = set() if claimed is None else claimed
        member, unlearned = self._member_np, self._unlearned_np
        for raw in requests:
            request = raw if isinstance(raw, Request) else self.as_request(raw)
            sid, digest = self._resolve(request, claimed)
            if sid is None:
                reason = "not_a_member"
            elif not 0 <= sid < self.pool_size:
                reason = "unknown_id"
            elif not member[sid]:
                reason = "not_a_member"
            elif unlearned[sid]:
                reason = "already_unlearned"
            elif sid in claimed:
                reason = "duplicate"
            else:
                reason = "member"
            if sid is not None and 0 <= sid < self.pool_size:
                claimed.add(sid)
            decisions.append(Decision(request, sid, digest, reason))
        return decisions

    def commit(self, decisions: Sequence[Decision]) -> Tensor:
        """Mark the accepted samples unlearned; return their ids in request order.

        Raises ValueError (and changes nothing) if a decision is stale: an
        accepted sample that is no longer a member still present.
        """
        accepted = [d.sample_id for d in decisions if d.accepted]
        if len(set(accepted)) != len(accepted):
            raise ValueError("The decisions accept the same sample twice; decide them in one check().")
        for sid in accepted:
            if not self._member_np[sid] or self._unlearned_np[sid]:
                raise ValueError(f"Decision for sample {sid} is stale: it is no longer unlearnable.")
        ids = torch.tensor(accepted, dtype=torch.long)
        self._unlearned[ids] = True
        return ids

    def mark_unlearned(self, ids) -> None:
        """Mark training ids unlearned (e.g. restored from a ledger); idempotent."""
        ids = torch.as_tensor(ids).reshape(-1).long().cpu()
        if len(ids) == 0:
            return
        if ids.min() < 0 or ids.max() >= self.pool_size or not self._member[ids].all():
            raise ValueError("Only training samples (primary ids) can be marked unlearned.")
        self._unlearned[ids] = True
