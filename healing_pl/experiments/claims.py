"""Claims: which runner runs which run of a grid, so several runners on one folder (one machine or many) split
the work, and a runner that died anywhere does not block the grid.

A run is claimed by creating ``<run_dir>.claim`` with ``O_CREAT | O_EXCL``. The file holds its holder (host,
pids, a token, the start time), the time it was last renewed and the lease: the holder renews the claim every
quarter lease while the run lives (the runner's loop, or the cluster job running it), and a claim not renewed for
longer than its lease is expired and taken over, whichever host wrote it. A claim of this host whose processes
are all gone is stale at once (no need to wait out the lease); a claim held for a cluster job (``job``) is judged
by its lease alone, since the job runs elsewhere. A claim without a renewal time (an older runner's) counts from
its file's modification time. A run is done when its ``results.json`` exists.

Claiming, renewing and releasing hold an ``flock`` on ``<out>/.grid.lock`` (two runners cannot both take over
one claim) and claims, take-overs and releases append a line to ``<out>/claims.jsonl``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid

from healing_pl.files import write_json

HOST = socket.gethostname()
#: seconds a claim stays valid without renewal (default of ``--lease``; the environment variable overrides it)
LEASE_S = 600.0
LEASE_ENV = "HEALING_PL_LEASE_S"


def lease_seconds(value: float | None = None) -> float:
    """The lease: ``value``, else ``$HEALING_PL_LEASE_S``, else :data:`LEASE_S`; ValueError when not positive."""
    if value is None:
        text = os.environ.get(LEASE_ENV)
        try:
            value = float(text) if text else LEASE_S
        except ValueError:
            raise ValueError(f"{LEASE_ENV} must be a number of seconds, got '{text}'.") from None
    if not value > 0:
        raise ValueError(f"the lease must be a positive number of seconds, got {value}.")
    return float(value)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except (OverflowError, TypeError, ValueError):
        return False
    with contextlib.suppress(OSError, IndexError):  # a zombie nobody reaped yet has finished
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def done(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, "results.json"))


class Claims:
    """The claims of one grid folder ``out`` (which exists); ``lease_s`` as :func:`lease_seconds`."""

    def __init__(self, out: str, lease_s: float | None = None):
        self.out = out
        self.lease_s = lease_seconds(lease_s)
        self.lock_path = os.path.join(out, ".grid.lock")
        self.log_path = os.path.join(out, "claims.jsonl")
        self.tokens: dict[str, str] = {}  # run_dir -> token of the claims this object holds

    @contextlib.contextmanager
    def _locked(self):
        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _log(self, event: str, run_dir: str, **extra) -> None:
        line = {"event": event, "run": os.path.relpath(run_dir, self.out), "pid": os.getpid(), "host": HOST}
        with open(self.log_path, "a") as f:
            f.write(json.dumps({**line, **extra, "time": round(time.time(), 3)}) + "\n")

    @staticmethod
    def path(run_dir: str) -> str:
        return os.path.normpath(run_dir) + ".claim"

    @staticmethod
    def read(run_dir: str) -> dict | None:
        try:
            with open(Claims.path(run_dir)) as f:
                claim = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # torn by a crash (claims are written under the lock): no live process
            return {"host": HOST, "pids": [], "torn": True}
        return claim if isinstance(claim, dict) else {"host": HOST, "pids": [], "torn": True}

    def renewed_at(self, run_dir: str, claim: dict) -> float:
        """When ``claim`` was last renewed: its ``renewed`` time, else its file's modification time."""
        renewed = claim.get("renewed")
        if isinstance(renewed, (int, float)) and not isinstance(renewed, bool):
            return float(renewed)
        try:
            return os.path.getmtime(self.path(run_dir))
        except OSError:
            return 0.0

    def expires_in(self, run_dir: str, claim: dict) -> float:
        """Seconds until ``claim`` expires (negative: expired). The holder's lease when it states one."""
        lease = claim.get("lease_s")
        lease = float(lease) if isinstance(lease, (int, float)) and not isinstance(lease, bool) else self.lease_s
        return self.renewed_at(run_dir, claim) + lease - time.time()

    def why_stale(self, run_dir: str, claim: dict) -> str | None:
        """None while ``claim`` is live; else why it may be taken over ("expired" or "dead")."""
        if self.expires_in(run_dir, claim) < 0:
            return "expired"
        if claim.get("job") is None and claim.get("host") == HOST and "pids" in claim:
            if not any(pid_alive(pid) for pid in claim.get("pids") or []):
                return "dead"  # its processes are gone on this host
        return None

    def claim(self, run_dir: str) -> str | None:
        """Claim ``run_dir`` for this process: its token, or None when it is done or a live claim holds it."""
        os.makedirs(os.path.dirname(os.path.normpath(run_dir)) or ".", exist_ok=True)
        with self._locked():
            if done(run_dir):
                return None
            held = self.read(run_dir)
            if held is not None:
                why = self.why_stale(run_dir, held)
                if why is None:
                    return None
                os.unlink(self.path(run_dir))
                self._log("stale", run_dir, held=held, why=why)
            now = time.time()
            token = uuid.uuid4().hex
            claim = {"host": HOST, "pids": [os.getpid()], "token": token, "start": now, "renewed": now}
            fd = os.open(self.path(run_dir), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as f:
                json.dump({**claim, "lease_s": self.lease_s}, f)
            self._log("claim", run_dir)
            self.tokens[run_dir] = token
            return token

    def _update(self, run_dir: str, token: str | None, **changes) -> bool:
        """Change the claim of ``run_dir`` if it is still ours (``token``); False when another holder took it."""
        token = token or self.tokens.get(run_dir)
        with self._locked():
            held = self.read(run_dir)
            if held is None or held.get("token") != token:
                return False
            write_json(self.path(run_dir), {**held, **changes})
            return True

    def add_pid(self, run_dir: str, pid: int) -> None:
        """Record the worker process that runs a claimed run (the claim stays live while either lives)."""
        held = self.read(run_dir) or {}
        self._update(run_dir, None, pids=[*held.get("pids", []), pid])

    def set_job(self, run_dir: str, job_id: str) -> None:
        """Mark a claimed run as run by a cluster job: judged by its lease alone from now on."""
        self._update(run_dir, None, job=str(job_id))

    def renew(self, run_dir: str, token: str | None = None) -> bool:
        """Renew our claim of ``run_dir`` (``token``: the claim's, when another object took it); False if lost."""
        return self._update(run_dir, token, renewed=time.time())

    def release(self, run_dir: str, code: int, token: str | None = None) -> None:
        """Let go of our claim of ``run_dir`` (not one another runner took over) and log how the run ended."""
        token = token or self.tokens.pop(run_dir, None)
        with self._locked():
            held = self.read(run_dir)
            if held is not None and (held.get("token") == token or "token" not in held):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path(run_dir))
            self._log("done" if code == 0 and done(run_dir) else "failed", run_dir, code=code)
            if code == 0 and done(run_dir):
                self._set_failure(run_dir, None)

    @property
    def failures_path(self) -> str:
        return os.path.join(self.out, "failures.json")

    def failures(self) -> dict:
        """The runs that failed and were not rerun since: run name -> exit status, last error line, log, time."""
        try:
            with open(self.failures_path) as f:
                failures = json.load(f)
        except (OSError, ValueError):
            return {}
        return failures if isinstance(failures, dict) else {}

    def _set_failure(self, run_dir: str, failure: dict | None) -> None:
        failures = self.failures()
        name = os.path.relpath(run_dir, self.out)
        if failure is None and name not in failures:
            return
        if failure is None:
            del failures[name]
        else:
            failures[name] = failure
        write_json(self.failures_path, failures, indent=2, sort_keys=True)

    def record_failure(self, run_dir: str, code: int, error: str, log: str | None) -> None:
        """Record in ``<out>/failures.json`` that ``run_dir`` failed (its exit status, last error line and log);
        a later success of the run removes the entry."""
        failure = {"code": code, "error": error, "log": log, "host": HOST, "time": round(time.time(), 3)}
        with self._locked():
            self._set_failure(run_dir, failure)
