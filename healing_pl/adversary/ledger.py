"""Append-only JSON-lines ledger of unlearn requests, in a run folder.

Every request is written, honoured or rejected, as soon as it is decided
(one line, flushed and fsynced).  Nothing is ever rewritten: what happens to
a request later is a new line that points back at it.  Three record types:

``request``
    ``{"type": "request", "request_id", "requester", "kind", "named_by",
    "time", "round", "sample_id", "sample_hash", "decision", "reason"}``;
    ``decision`` is ``accept`` or ``reject``, ``reason`` one of
    :data:`~healing_pl.adversary.membership.REASONS`, ``time`` ISO-8601 UTC.
``twin``
    ``{"type": "twin", "request_id", "twin_id", "twin_hash", "score", "time"}``:
    the twin that replaced an accepted request's sample.  A later twin
    record for the same request supersedes the earlier one.
``round``
    ``{"type": "round", "round", "n_requests", "n_accepted", "n_rejected",
    "reasons", "by_kind", "metrics", "time"}``: written once a round has been
    applied (see :func:`healing_pl.adversary.streams.run_rounds`).

Stable request ids: ``request_id`` is the first 32 hex digits of
SHA-256 over ``requester``, the sample key (its content hash, or
``id:<n>`` for an id outside the pool), the round, and the occurrence (0 for
the first request with that requester, sample and round in the batch, 1 for
the next...).  The wall-clock time is left out, so the same requests in the
same rounds always get the same ids: replaying a stream or a ledger into a
fresh membership state appends nothing that is already there.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor

from healing_pl.adversary.membership import Decision, MembershipIndex, Request

__all__ = ["Ledger", "LedgerState", "make_request_id", "utc_now"]

RECORD_TYPES = ("request", "twin", "round")


def utc_now() -> str:
    """The current time, ISO-8601 in UTC with milliseconds, e.g. ``2025-01-31T12:00:00.000Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sample_key(sample_id: int | None, sample_hash: str | None) -> str:
    return sample_hash if sample_hash is not None else f"id:{sample_id}"


def make_request_id(requester: str, sample_key: str, round_index: int, occurrence: int = 0) -> str:
    """The stable id of a request (see the module docstring)."""
    text = "\x1f".join([requester, sample_key, str(int(round_index)), str(int(occurrence))])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _jsonable(value):
    """JSON fallback for tensors and numpy numbers in metrics."""
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    for attr in ("item", "tolist"):  # numpy scalars and arrays
        if hasattr(value, attr):
            return getattr(value, attr)()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@dataclass
class LedgerState:
    """What a ledger file says, reconstructed by :meth:`Ledger.replay`.

    Attributes:
        requests: request records in file order.
        twins: request_id -> its latest twin record.
        rounds: round index -> round record.
    """

    requests: list[dict] = field(default_factory=list)
    twins: dict[str, dict] = field(default_factory=dict)
    rounds: dict[int, dict] = field(default_factory=dict)

    @property
    def request_ids(self) -> set[str]:
        return {r["request_id"] for r in self.requests}

    @property
    def accepted_ids(self) -> Tensor:
        """Sample ids of the accepted requests, in the order they were accepted."""
        ids = [r["sample_id"] for r in self.requests if r["decision"] == "accept"]
        return torch.tensor(ids, dtype=torch.long)

    def rounds_of_requests(self) -> list[list[Request]]:
        """The requests rebuilt as :class:`Request` objects, grouped by round in order."""
        by_round: dict[int, list[Request]] = {}
        for r in self.requests:
            by_id = r["named_by"] == "id"
            by_round.setdefault(r["round"], []).append(
                Request(
                    requester=r["requester"],
                    sample_id=r["sample_id"] if by_id else None,
                    sample_hash=None if by_id else r["sample_hash"],
                    kind=r["kind"],
                )
            )
        return [by_round[k] for k in sorted(by_round)]

    def apply_to(self, membership: MembershipIndex) -> None:
        """Mark every accepted sample unlearned in ``membership`` (idempotent)."""
        membership.mark_unlearned(self.accepted_ids)


class Ledger:
    """The append-only request ledger of one run.

    Args:
        path: a run folder (the ledger is ``<folder>/ledger.jsonl``, the
            folder is created) or a path ending in ``.jsonl``.  An existing
            ledger is read on opening and appended to.
    """

    FILENAME = "ledger.jsonl"

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if path.suffix != ".jsonl":
            path = path / self.FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        state = self.replay(path) if path.exists() else LedgerState()
        self._request_ids = state.request_ids
        self._rounds = dict(state.rounds)
        self._accepted_by_sample = {
            r["sample_id"]: r["request_id"] for r in state.requests if r["decision"] == "accept"
        }
        self._accepted_by_request = {rid: sid for sid, rid in self._accepted_by_sample.items()}
        self._twins = {rid: (t["twin_id"], t["twin_hash"]) for rid, t in state.twins.items()}

    # ---------------------------------------------------------------- write
    def _append(self, record: dict) -> None:
        line = json.dumps(record, default=_jsonable, sort_keys=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def record(self, decisions: Sequence[Decision], round_index: int) -> list[str]:
        """Write the decisions of one batch; return their request ids in order.

        A decision whose request id is already in the ledger is not written
        again (that is what makes a replay idempotent).
        """
        ids = []
        seen: Counter = Counter()
        for d in decisions:
            key = _sample_key(d.sample_id, d.sample_hash)
            occurrence = seen[(d.request.requester, key)]
            seen[(d.request.requester, key)] += 1
            rid = make_request_id(d.request.requester, key, round_index, occurrence)
            ids.append(rid)
            if rid in self._request_ids:
                continue
            self._append(
                {
                    "type": "request",
                    "request_id": rid,
                    "requester": d.request.requester,
                    "kind": d.request.kind,
                    "named_by": d.request.named_by,
                    "time": utc_now(),
                    "round": int(round_index),
                    "sample_id": d.sample_id,
                    "sample_hash": d.sample_hash,
                    "decision": d.decision,
                    "reason": d.reason,
                }
            )
            self._request_ids.add(rid)
            if d.accepted:
                self._accepted_by_sample[d.sample_id] = rid
                self._accepted_by_request[rid] = d.sample_id
        return ids

    def append_twin(self, request_id: str, twin_id: int, twin_hash: str, score: float | None = None) -> bool:
        """Record the twin that replaced an accepted request's sample.

        Returns False (and writes nothing) when the ledger already says this
        request's twin is ``twin_id``.
        """
        if request_id not in self._request_ids:
            raise ValueError(f"The ledger has no request {request_id!r} to attach a twin to.")
        if request_id not in self._accepted_by_request:
            raise ValueError(f"Request {request_id!r} was rejected, so it has no twin.")
        if self._twins.get(request_id) == (int(twin_id), twin_hash):
            return False
        self._append(
            {
                "type": "twin",
                "request_id": request_id,
                "twin_id": int(twin_id),
                "twin_hash": twin_hash,
                "score": None if score is None else float(score),
                "time": utc_now(),
            }
        )
        self._twins[request_id] = (int(twin_id), twin_hash)
        return True

    def append_round(self, record: dict) -> bool:
        """Write a round summary (needs a ``round`` key); False if that round is already there."""
        round_index = int(record["round"])
        if round_index in self._rounds:
            return False
        full = {"type": "round", **record, "round": round_index, "time": utc_now()}
        self._append(full)
        self._rounds[round_index] = full
        return True

    # ----------------------------------------------------------------- read
    def __contains__(self, request_id: str) -> bool:
        return request_id in self._request_ids

    def __len__(self) -> int:
        """Number of request records."""
        return len(self._request_ids)

    def round_record(self, round_index: int) -> dict | None:
        """The summary of a round already applied, or None."""
        return self._rounds.get(int(round_index))

    def accepted_sample_ids(self, request_ids: Sequence[str]) -> Tensor:
        """Sample ids of those requests that the ledger says were accepted, in order."""
        ids = [self._accepted_by_request[r] for r in request_ids if r in self._accepted_by_request]
        return torch.tensor(ids, dtype=torch.long)

    def request_id_for_sample(self, sample_id: int) -> str:
        """The id of the accepted request that unlearned ``sample_id`` (to attach its twin)."""
        try:
            return self._accepted_by_sample[int(sample_id)]
        except KeyError:
            raise ValueError(f"No accepted request in the ledger unlearned sample {sample_id}.") from None

    @staticmethod
    def replay(path: str | os.PathLike) -> LedgerState:
        """Read a ledger file (or run folder) back into a :class:`LedgerState`."""
        path = Path(path)
        if path.suffix != ".jsonl":
            path = path / Ledger.FILENAME
        if not path.exists():
            raise ValueError(f"There is no ledger at {path}.")
        state = LedgerState()
        seen: set[str] = set()
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise ValueError(f"Line {number} of {path} is not valid JSON.") from None
                kind = record.get("type") if isinstance(record, dict) else None
                if kind not in RECORD_TYPES:
                    raise ValueError(f"Line {number} of {path} has no known record type.")
                if kind == "request":
                    if record["request_id"] in seen:
                        raise ValueError(f"Line {number} of {path} repeats request {record['request_id']}.")
                    seen.add(record["request_id"])
                    state.requests.append(record)
                elif kind == "twin":
                    state.twins[record["request_id"]] = record
                else:
                    state.rounds[int(record["round"])] = record
        return state
