"""Append-only, hash-chained JSON-lines ledger of unlearn requests, in a run folder.

Every request is written, honoured or rejected, as soon as it is decided.
Nothing is ever rewritten: what happens to a request later is a new line that
points back at it.  The decisions of one :meth:`Ledger.record` call go out in
one write and one fsync (still one line per decision).  Five record types:

``request``
    ``{"type": "request", "request_id", "requester", "kind", "named_by",
    "time", "round", "sample_id", "sample_hash", "decision", "reason"}``;
    ``decision`` is ``accept`` or ``reject``, ``reason`` one of
    :data:`~healing_pl.adversary.membership.REASONS` (``accept`` exactly when
    it is ``member``), ``time`` ISO-8601 UTC.  An accepted request is only
    accepted *at check time*: an ``applied`` or ``failed`` line says what
    became of it.
``applied``
    ``{"type": "applied", "request_ids", "model_sha256", "round", "time"}``:
    the accepted requests were unlearned; ``model_sha256`` is the hash of
    the resulting model's weights (:func:`weights_sha256`).
``failed``
    ``{"type": "failed", "request_ids", "reason", "round", "time"}``: the
    run failed after the requests were accepted; ``reason`` is the error's
    sentence.  A later ``applied`` line (a successful rerun) supersedes it.
``twin``
    ``{"type": "twin", "request_id", "twin_id", "twin_hash", "score", "time"}``:
    the twin that replaced an accepted request's sample.  A later twin
    record for the same request supersedes the earlier one.
``round``
    ``{"type": "round", "round", "n_requests", "n_accepted", "n_rejected",
    "reasons", "by_kind", "metrics", "time"}``: written once a round has been
    applied (see :func:`healing_pl.adversary.streams.run_rounds`).

Hash chain.  Every line ends in two more keys, ``"prev"`` and ``"hash"``:
``hash`` is the SHA-256 (hex) of the line's exact bytes up to ``"prev"``'s
value and the closing brace, i.e. the line with its trailing
``, "hash": "<64 hex>"`` removed; ``prev`` is the previous line's ``hash``
(:data:`GENESIS`, 64 zeros, on the first line).  So a line's own content is
covered by its ``hash`` and, through the next line's ``prev``, by the rest of
the chain: a changed line breaks its own hash, a deleted or inserted line
breaks the ``prev`` of the line after it.  A sidecar ``ledger.head`` (next to
``ledger.jsonl``; ``<name>.head`` for ``<name>.jsonl``) holds
``{"lines": N, "hash": <last hash>}``, replaced atomically after every append,
so deleting the last lines is caught too.  The chain has no secret: it proves
the file was not changed by accident or by hand, not against someone who
rewrites the whole chain and the head.

Keyed chain.  When the environment variable :data:`KEY_ENV`
(``HEALING_PL_LEDGER_KEY``) is set, ``hash`` is instead the HMAC-SHA256 of
those bytes under that key: without the key nobody can write a chain that
verifies, so a consistent rewrite of the file and its head is detected.  A
keyed ledger must be verified (and appended to) with the same key set; one
written without a key is refused while a key is set, and the other way round,
with a sentence that says so.

:func:`verify` walks a ledger and names the first broken line;
``healing-pl ledger verify RUN_DIR_OR_FILE`` (:func:`ledger_main`) prints it.
A torn last line (a crash mid-write: no newline at the end) is moved aside
when a :class:`Ledger` is opened: its bytes are appended to
``<ledger>.torn`` (``ledger.jsonl.torn``) beside the ledger, the ledger is cut
back to its last whole line, and a warning names both.  A complete last line
that is not valid JSON is not a crash's mark: it is never cut, the ledger is
refused as broken.  No line a command did not write itself is ever deleted.

Stable request ids: ``request_id`` is the first 32 hex digits of
SHA-256 over ``requester``, the sample key (its content hash, or
``id:<n>`` for an id outside the pool), the round, and the occurrence (0 for
the first request with that requester, sample and round in the batch, 1 for
the next...).  The wall-clock time is left out, so the same requests in the
same rounds always get the same ids: replaying a stream or a ledger into a
fresh membership state appends nothing that is already there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor

from healing_pl.adversary.membership import REASONS, Decision, MembershipIndex, Request
from healing_pl.files import write_atomic

__all__ = [
    "GENESIS",
    "KEY_ENV",
    "Ledger",
    "Occurrences",
    "LedgerState",
    "VerifyReport",
    "ledger_main",
    "make_request_id",
    "utc_now",
    "verify",
    "weights_sha256",
]

RECORD_TYPES = ("request", "applied", "failed", "twin", "round")
#: The ``prev`` of a ledger's first line.
GENESIS = "0" * 64
#: The environment variable whose value (any text) makes the chain an HMAC-SHA256 under that key.
KEY_ENV = "HEALING_PL_LEDGER_KEY"

_HASH_KEY = b', "hash": "'
_TAIL = len(_HASH_KEY) + 64 + 2  # , "hash": "<64 hex>"}
_HEX = re.compile(rb"[0-9a-f]{64}")


def utc_now() -> str:
    """The current time, ISO-8601 in UTC with milliseconds, e.g. ``2025-01-31T12:00:00.000Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sample_key(sample_id: int | None, sample_hash: str | None) -> str:
    return sample_hash if sample_hash is not None else f"id:{sample_id}"


class Occurrences:
    """How many times each (requester, sample key) was already named in one round, across :meth:`Ledger.record`
    calls (a round written in chunks numbers its repeats as one call would).

    A pair named once costs a 64-bit digest in a set (about 60 bytes); only pairs named again get an exact
    counter. Two different pairs that share a digest (about 3e-8 for a million pairs) give the second one
    occurrence 1 instead of 0: its request id is still unique and the same on every rerun.
    """

    def __init__(self) -> None:
        self._once: set[int] = set()
        self._again: Counter = Counter()

    def next(self, requester: str, sample_key: str) -> int:
        """The occurrence number of this pair (0 the first time), counting it."""
        text = f"{requester}\x1f{sample_key}".encode()
        digest = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")
        if digest not in self._once:
            self._once.add(digest)
            return 0
        self._again[(requester, sample_key)] += 1
        return self._again[(requester, sample_key)]


def make_request_id(requester: str, sample_key: str, round_index: int, occurrence: int = 0) -> str:
    """The stable id of a request (see the module docstring)."""
    text = "\x1f".join([requester, sample_key, str(int(round_index)), str(int(occurrence))])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def weights_sha256(model_or_state) -> str:
    """SHA-256 of a model's weights (a module, e.g. a SISA ensemble, or a state dict).

    Over the state dict's entries sorted by name: each name, then the tensor's raw bytes (contiguous, on the
    CPU); it also takes bfloat16. Streams name a round's starting model in the unlearn cache by it.
    """
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    digest = hashlib.sha256()
    for name, value in sorted(state.items()):
        digest.update(name.encode())
        t = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _jsonable(value):
    """JSON fallback for tensors and numpy numbers in metrics."""
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    for attr in ("item", "tolist"):  # numpy scalars and arrays
        if hasattr(value, attr):
            return getattr(value, attr)()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _ledger_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.suffix == ".jsonl" else path / Ledger.FILENAME


def _head_path(path: Path) -> Path:
    return path.with_suffix(".head")


def ledger_key() -> bytes | None:
    """The chain's key from :data:`KEY_ENV`, or None (a plain SHA-256 chain)."""
    key = os.environ.get(KEY_ENV)
    return key.encode() if key else None


def _hasher(key: bytes | None):
    """``bytes -> hex digest``: SHA-256, or HMAC-SHA256 under ``key``."""
    if key is None:
        return lambda body: hashlib.sha256(body).hexdigest()
    # HMAC (RFC 2104) from two precomputed SHA-256 states: what hmac.new(key, body, sha256) computes, faster
    block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def keyed(body: bytes) -> str:
        i = inner.copy()
        i.update(body)
        o = outer.copy()
        o.update(i.digest())
        return o.hexdigest()

    return keyed


def _chain_line(record: dict, prev: str, digest_of=None) -> tuple[str, str]:
    """The line (with its newline) for ``record`` after a line whose hash is ``prev``; and its own hash."""
    if "prev" in record or "hash" in record:
        raise ValueError("A ledger record may not carry its own 'prev' or 'hash' key.")
    body = json.dumps({**record, "prev": prev}, default=_jsonable)
    digest = (digest_of or _hasher(ledger_key()))(body.encode())
    return f'{body[:-1]}, "hash": "{digest}"}}\n', digest


def _torn_tail(data: bytes) -> int | None:
    """Where to cut ``data`` when its last line is torn (no newline at the end: a write cut short); else None."""
    if not data or data.endswith(b"\n"):
        return None
    return data.rfind(b"\n") + 1


@dataclass
class LedgerState:
    """What a ledger file says, reconstructed by :meth:`Ledger.replay`.

    Attributes:
        requests: request records in file order.
        twins: request_id -> its latest twin record.
        rounds: round index -> round record.
        outcomes: request_id -> the latest ``applied`` or ``failed`` record naming it.
        lines: number of lines.
        head: the last line's hash (:data:`GENESIS` for an empty ledger).
    """

    requests: list[dict] = field(default_factory=list)
    twins: dict[str, dict] = field(default_factory=dict)
    rounds: dict[int, dict] = field(default_factory=dict)
    outcomes: dict[str, dict] = field(default_factory=dict)
    lines: int = 0
    head: str = GENESIS

    @property
    def request_ids(self) -> set[str]:
        return {r["request_id"] for r in self.requests}

    @property
    def accepted_ids(self) -> Tensor:
        """Sample ids of the accepted requests, in the order they were accepted."""
        ids = [r["sample_id"] for r in self.requests if r["decision"] == "accept"]
        return torch.tensor(ids, dtype=torch.long)

    def _with_outcome(self, kind: str | None) -> list[str]:
        return [
            r["request_id"]
            for r in self.requests
            if r["decision"] == "accept" and (self.outcomes.get(r["request_id"]) or {}).get("type") == kind
        ]

    @property
    def applied_request_ids(self) -> list[str]:
        """Accepted requests whose latest outcome is ``applied``, in request order."""
        return self._with_outcome("applied")

    @property
    def failed_request_ids(self) -> list[str]:
        """Accepted requests whose latest outcome is ``failed`` (not applied since), in request order."""
        return self._with_outcome("failed")

    @property
    def pending_request_ids(self) -> list[str]:
        """Accepted requests with no ``applied`` or ``failed`` line (yet), in request order."""
        return self._with_outcome(None)

    @property
    def applied_sample_ids(self) -> Tensor:
        """Sample ids of the accepted requests that were applied, in request order."""
        applied = set(self.applied_request_ids)
        ids = [r["sample_id"] for r in self.requests if r["request_id"] in applied]
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


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` found.

    Attributes:
        path: the ledger file.
        lines: lines in the file.
        line: the first broken line (1-based), or None when the ledger is intact (or when only
            ``ledger.head`` itself is unreadable).
        reason: why it is broken (a sentence without the line number), or None.
    """

    path: Path
    lines: int
    line: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def __bool__(self) -> bool:
        return self.ok

    @property
    def message(self) -> str:
        """One sentence: ``ledger ok: N lines``, or the first broken line and why."""
        if self.ok:
            return f"ledger ok: {self.lines} lines"
        where = f"line {self.line} of {self.path}" if self.line is not None else str(self.path)
        return f"{where[0].upper()}{where[1:]} is broken: {self.reason}."

    def __str__(self) -> str:
        return self.message


def _need_accepted(request_id, accepted: set[str], known: set[str]) -> str | None:
    if request_id not in known:
        return f"it names request {request_id!r}, which no earlier line records"
    if request_id not in accepted:
        return f"it names request {request_id!r}, which was rejected"
    return None


def _scan(
    data: bytes, *, check_head: bytes | None, key: bytes | None = None
) -> tuple[LedgerState, int | None, str | None]:
    """Read a ledger's bytes; the state of its good prefix, and the first broken line (number, reason) if any.

    ``check_head``: the bytes of the ``.head`` sidecar (None when there is none); ``key``: the chain's HMAC key
    (None: plain SHA-256).
    """
    state = LedgerState()
    seen: set[str] = set()
    accepted: set[str] = set()
    hashes: list[str] = []
    prev = GENESIS
    raws = data.split(b"\n")
    torn = raws[-1] != b""  # the last line has no newline
    if not torn:
        raws.pop()
    decode, digest_of, key_end = json.JSONDecoder().raw_decode, _hasher(key), -_TAIL + len(_HASH_KEY)
    number = 0
    for number, raw in enumerate(raws, start=1):
        if torn and number == len(raws):
            return state, number, "it is torn (no newline at the end: a write was cut short)"
        if not raw:
            return state, number, "it is empty"
        try:
            text = raw.decode()
            record, end = decode(text)
            if end != len(text):
                raise ValueError(text)
        except ValueError:  # UnicodeDecodeError too
            return state, number, "it is not valid JSON"
        kind = record.get("type") if isinstance(record, dict) else None
        if kind not in RECORD_TYPES:
            return state, number, "it has no known record type"
        if raw[-_TAIL:key_end] != _HASH_KEY or raw[-2:] != b'"}':
            return state, number, "it carries no hash (not written by a hash-chained ledger)"
        digest = digest_of(raw[:-_TAIL] + b"}")
        if text[-66:-2] != digest:
            return state, number, _hash_mismatch(raw, text, key)
        if record.get("prev") != prev:
            if number == 1:
                return state, number, "its prev is not the genesis value (the ledger's first lines are missing)"
            return (
                state,
                number,
                (f"its prev is not the hash of line {number - 1} (a line before it was deleted, inserted or changed)"),
            )
        problem = None
        if kind == "request":
            rid = record.get("request_id")
            if rid in seen:
                problem = f"it repeats request {rid}"
            elif record.get("decision") not in ("accept", "reject") or record.get("reason") not in REASONS:
                problem = "its decision or reason is not a known value"
            elif (record["decision"] == "accept") != (record["reason"] == "member"):
                problem = f"its decision {record['decision']!r} does not match its reason {record['reason']!r}"
            else:
                seen.add(rid)
                if record["decision"] == "accept":
                    accepted.add(rid)
                state.requests.append(record)
        elif kind == "twin":
            problem = _need_accepted(record.get("request_id"), accepted, seen)
            if problem is None:
                state.twins[record["request_id"]] = record
        elif kind in ("applied", "failed"):
            ids = record.get("request_ids")
            if not isinstance(ids, list) or not ids:
                problem = "it names no request ids"
            else:
                problem = next((p for rid in ids if (p := _need_accepted(rid, accepted, seen))), None)
            if problem is None and kind == "applied" and not _HEX.fullmatch(str(record.get("model_sha256")).encode()):
                problem = "its model_sha256 is not a SHA-256 hex digest"
            if problem is None:
                for rid in ids:
                    state.outcomes[rid] = record
        else:
            if not isinstance(record.get("round"), int):
                problem = "its round is not an integer"
            else:
                state.rounds[record["round"]] = record
        if problem is not None:
            return state, number, problem
        prev = digest
        hashes.append(prev)
        state.lines, state.head = number, prev
    if check_head is not None:
        try:
            head = json.loads(check_head)
            n, h = int(head["lines"]), str(head["hash"])
        except (ValueError, KeyError, TypeError):
            return state, None, "its .head file is not readable"
        if n > len(hashes):
            return (
                state,
                len(hashes) + 1,
                (f"it is missing: the .head file records {n} lines, but the ledger ends after line {len(hashes)}"),
            )
        if n and hashes[n - 1] != h:
            return state, n, "its hash is not the one the .head file records for it"
        if not n and h != GENESIS:
            return state, None, "its .head file records no lines but a hash"
    elif hashes:
        return state, None, "it has no .head file, so a deleted last line would go unnoticed"
    return state, None, None


def _hash_mismatch(raw: bytes, text: str, key: bytes | None) -> str:
    """Why a line's hash does not match: changed, or written with(out) a key while verified without (with) one."""
    body = raw[:-_TAIL] + b"}"
    if key is not None and hashlib.sha256(body).hexdigest() == text[-66:-2]:
        return f"it was written without a key, but {KEY_ENV} is set (unset it to verify an unkeyed ledger)"
    if key is None and _HEX.fullmatch(text[-66:-2].encode()):
        return (
            "its content does not match its hash (the line was changed after it was written, or the ledger is "
            f"keyed: set {KEY_ENV} to its key)"
        )
    return "its content does not match its hash (the line was changed after it was written, or another key was used)"


def _read_head(path: Path) -> bytes | None:
    head = _head_path(path)
    return head.read_bytes() if head.exists() else None


def verify(path: str | os.PathLike) -> VerifyReport:
    """Walk a ledger (file or run folder) and report the first broken line.

    Checks, line by line: valid JSON with a known type; the line's ``hash`` over its bytes; ``prev`` equal to
    the previous line's hash; a request id not repeated; a decision that matches its reason; twin, applied and
    failed lines naming only earlier accepted requests.  Then the ``.head`` sidecar: the ledger must still
    hold the line (and hash) it records last.  Raises FileNotFoundError when there is no ledger.
    """
    path = _ledger_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"There is no ledger at {path}.")
    data = path.read_bytes()
    state, line, reason = _scan(data, check_head=_read_head(path), key=ledger_key())
    return VerifyReport(path, data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1), line, reason)


class Ledger:
    """The append-only, hash-chained request ledger of one run.

    Args:
        path: a run folder (the ledger is ``<folder>/ledger.jsonl``, the
            folder is created) or a path ending in ``.jsonl``.  An existing
            ledger is verified on opening (ValueError when it is broken) and
            appended to; a torn last line is cut back first, with a warning.
    """

    FILENAME = "ledger.jsonl"

    def __init__(self, path: str | os.PathLike):
        path = _ledger_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.head_path = path, _head_path(path)
        self._key = ledger_key()
        self._digest_of = _hasher(self._key)
        self.moved_aside: Path | None = None
        state = LedgerState()
        if path.exists():
            data = path.read_bytes()
            cut = _torn_tail(data)
            if cut is not None:
                data = self._move_aside(data, cut)
            state, line, reason = _scan(data, check_head=_read_head(path), key=self._key)
            if reason is not None and line is not None:
                raise ValueError(VerifyReport(path, state.lines, line, reason).message)
            if reason is not None:  # the lines are sound, the head is missing or unreadable: rewritten below
                warnings.warn(f"{path}: {reason}; it is written again.", RuntimeWarning, stacklevel=2)
        self._request_ids = state.request_ids
        self._rounds = dict(state.rounds)
        self._accepted_by_sample = {
            r["sample_id"]: r["request_id"] for r in state.requests if r["decision"] == "accept"
        }
        self._accepted_by_request = {rid: sid for sid, rid in self._accepted_by_sample.items()}
        self._twins = {rid: (t["twin_id"], t["twin_hash"]) for rid, t in state.twins.items()}
        self._outcomes = dict(state.outcomes)
        self._lines, self._prev = state.lines, state.head
        if state.lines and self._stored_head() != (state.lines, state.head):
            self._write_head()  # missing, or behind after a crash between an append and its head

    # ---------------------------------------------------------------- write
    def _move_aside(self, data: bytes, cut: int) -> bytes:
        """Keep a torn last line's bytes in ``<ledger>.torn`` (appended, fsynced), then cut the ledger back."""
        aside = self.path.with_name(self.path.name + ".torn")
        with open(aside, "ab") as f:
            f.write(data[cut:] + b"\n")
            f.flush()
            os.fsync(f.fileno())
        with open(self.path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
        n = data.count(b"\n", 0, cut)
        warnings.warn(
            f"{self.path}: line {n + 1} was torn (a write cut short by a crash); its {len(data) - cut} bytes were "
            f"moved aside to {aside} and the ledger continues after its {n} whole lines.",
            RuntimeWarning,
            stacklevel=3,
        )
        self.moved_aside = aside
        return data[:cut]

    def _stored_head(self) -> tuple[int, str] | None:
        try:
            head = json.loads(self.head_path.read_bytes())
            return int(head["lines"]), str(head["hash"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_head(self) -> None:
        """Replace the head atomically (no fsync: it is written after the lines it names are on disk, so after a
        crash it can only lag behind the file, which opening the ledger repairs; it never runs ahead)."""
        write_atomic(self.head_path, json.dumps({"lines": self._lines, "hash": self._prev}) + "\n", fsync=False)

    def _append(self, records: Sequence[dict]) -> None:
        """Chain ``records`` onto the ledger: one write, one fsync, then the head."""
        if not records:
            return
        lines, prev = [], self._prev
        for record in records:
            line, prev = _chain_line(record, prev, self._digest_of)
            lines.append(line)
        with open(self.path, "ab") as f:
            f.write("".join(lines).encode())
            f.flush()
            os.fsync(f.fileno())
        self._lines, self._prev = self._lines + len(lines), prev
        self._write_head()

    def record(
        self, decisions: Sequence[Decision], round_index: int, occurrences: Occurrences | None = None
    ) -> list[str]:
        """Write the decisions of one batch (one write, one fsync); return their request ids in order.

        A decision whose request id is already in the ledger is not written
        again (that is what makes a replay idempotent). ``occurrences``: pass one :class:`Occurrences` to
        every call that writes a part of the same round (a long requests file written in chunks).
        """
        ids, new = [], []
        occurrences = Occurrences() if occurrences is None else occurrences
        time = utc_now()
        for d in decisions:
            key = _sample_key(d.sample_id, d.sample_hash)
            occurrence = occurrences.next(d.request.requester, key)
            rid = make_request_id(d.request.requester, key, round_index, occurrence)
            ids.append(rid)
            if rid in self._request_ids:
                continue
            new.append(
                (
                    d,
                    {
                        "type": "request",
                        "request_id": rid,
                        "requester": d.request.requester,
                        "kind": d.request.kind,
                        "named_by": d.request.named_by,
                        "time": time,
                        "round": int(round_index),
                        "sample_id": d.sample_id,
                        "sample_hash": d.sample_hash,
                        "decision": d.decision,
                        "reason": d.reason,
                    },
                )
            )
        self._append([r for _, r in new])
        for d, r in new:
            self._request_ids.add(r["request_id"])
            if d.accepted:
                self._accepted_by_sample[d.sample_id] = r["request_id"]
                self._accepted_by_request[r["request_id"]] = d.sample_id
        return ids

    def _accepted_request_ids(self, request_ids: Sequence[str]) -> list[str]:
        ids = [str(r) for r in request_ids]
        if not ids:
            raise ValueError("An applied or failed line needs at least one request id.")
        for rid in ids:
            if rid not in self._request_ids:
                raise ValueError(f"The ledger has no request {rid!r}.")
            if rid not in self._accepted_by_request:
                raise ValueError(f"Request {rid!r} was rejected, so it cannot be applied or fail.")
        return ids

    def _outcome(self, record: dict) -> bool:
        ids = record["request_ids"]
        same = ("type", "round", "model_sha256", "reason")
        if all(
            {k: (self._outcomes.get(r) or {}).get(k) for k in same} == {k: record.get(k) for k in same} for r in ids
        ):
            return False  # a rerun that ended the same way
        self._append([{**record, "time": utc_now()}])
        for rid in ids:
            self._outcomes[rid] = record
        return True

    def applied(self, request_ids: Sequence[str], model_sha256: str, round_index: int = 0) -> bool:
        """Record that these accepted requests were unlearned, giving the resulting model's weight hash.

        Returns False (and writes nothing) when the ledger already says so for every one of them, with the
        same model hash and round (a rerun).
        """
        ids = self._accepted_request_ids(request_ids)
        if not re.fullmatch(r"[0-9a-f]{64}", str(model_sha256)):
            raise ValueError(f"model_sha256 must be a SHA-256 hex digest, got {model_sha256!r}.")
        record = {"type": "applied", "request_ids": ids, "model_sha256": model_sha256, "round": int(round_index)}
        return self._outcome(record)

    def failed(self, request_ids: Sequence[str], reason: str, round_index: int = 0) -> bool:
        """Record that the run failed after these requests were accepted (``reason``: the error's sentence).

        Returns False (and writes nothing) when the ledger already says they failed for the same reason.
        """
        ids = self._accepted_request_ids(request_ids)
        return self._outcome({"type": "failed", "request_ids": ids, "reason": str(reason), "round": int(round_index)})

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
            [
                {
                    "type": "twin",
                    "request_id": request_id,
                    "twin_id": int(twin_id),
                    "twin_hash": twin_hash,
                    "score": None if score is None else float(score),
                    "time": utc_now(),
                }
            ]
        )
        self._twins[request_id] = (int(twin_id), twin_hash)
        return True

    def append_round(self, record: dict) -> bool:
        """Write a round summary (needs a ``round`` key); False if that round is already there."""
        round_index = int(record["round"])
        if round_index in self._rounds:
            return False
        full = {"type": "round", **record, "round": round_index, "time": utc_now()}
        self._append([full])
        self._rounds[round_index] = full
        return True

    # ----------------------------------------------------------------- read
    def __contains__(self, request_id: str) -> bool:
        return request_id in self._request_ids

    def __len__(self) -> int:
        """Number of request records."""
        return len(self._request_ids)

    @property
    def lines(self) -> int:
        """Number of lines in the file."""
        return self._lines

    @property
    def head(self) -> str:
        """The last line's hash (:data:`GENESIS` while empty)."""
        return self._prev

    def round_record(self, round_index: int) -> dict | None:
        """The summary of a round already applied, or None."""
        return self._rounds.get(int(round_index))

    def accepted_sample_ids(self, request_ids: Sequence[str]) -> Tensor:
        """Sample ids of those requests that the ledger says were accepted, in order."""
        ids = [self._accepted_by_request[r] for r in request_ids if r in self._accepted_by_request]
        return torch.tensor(ids, dtype=torch.long)

    def accepted_request_ids(self, request_ids: Sequence[str]) -> list[str]:
        """Those of ``request_ids`` that the ledger says were accepted, in order."""
        return [r for r in request_ids if r in self._accepted_by_request]

    def request_id_for_sample(self, sample_id: int) -> str:
        """The id of the accepted request that unlearned ``sample_id`` (to attach its twin)."""
        try:
            return self._accepted_by_sample[int(sample_id)]
        except KeyError:
            raise ValueError(f"No accepted request in the ledger unlearned sample {sample_id}.") from None

    @staticmethod
    def replay(path: str | os.PathLike) -> LedgerState:
        """Read a ledger file (or run folder) back into a :class:`LedgerState`; ValueError if it is broken."""
        path = _ledger_path(path)
        if not path.exists():
            raise ValueError(f"There is no ledger at {path}.")
        state, line, reason = _scan(path.read_bytes(), check_head=_read_head(path), key=ledger_key())
        if reason is not None:
            where = f"Line {line} of {path}" if line is not None else str(path)
            raise ValueError(f"{where} is broken: {reason}.")
        return state


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one sentence on stderr (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'.\n")


def ledger_main(argv: Sequence[str] | None = None) -> int:
    """``healing-pl ledger verify RUN_DIR_OR_FILE``: 0 when intact, 1 when broken, 2 when there is no ledger."""
    parser = _OneLineParser(prog="healing-pl ledger", description="Check a run's unlearn-request ledger.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    check = commands.add_parser(
        "verify", help="walk the hash chain and name the first broken line", prog="healing-pl ledger verify"
    )
    check.add_argument("path", help="a run folder or a ledger .jsonl file")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as stop:  # --help or a usage error
        return int(stop.code or 0)
    try:
        report = verify(args.path)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        print(f"healing-pl ledger: error: {err}", file=sys.stderr)
        return 2
    print(report.message)
    return 0 if report.ok else 1
