"""Claims: which runner runs which run of a grid, so several runners on one folder split the work.

A run is claimed by creating ``<run_dir>.claim`` with ``O_CREAT | O_EXCL`` (the file holds the
claiming processes' pids and host); a run is done when its ``results.json`` exists. A claim whose
processes are all gone on this host is stale and is claimed again; a claim from another host stays
until its runner removes it. Claiming and releasing hold an ``flock`` on ``<out>/.grid.lock`` (two
runners cannot both take over one stale claim) and append a line to ``<out>/claims.jsonl``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time

from healing_pl.files import write_json

HOST = socket.gethostname()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def done(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, "results.json"))


class Claims:
    """The claims of one grid folder ``out`` (which exists)."""

    def __init__(self, out: str):
        self.out = out
        self.lock_path = os.path.join(out, ".grid.lock")
        self.log_path = os.path.join(out, "claims.jsonl")

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
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # torn by a crash (claims are written under the lock): no live process
            return {"host": HOST, "pids": [], "torn": True}

    @staticmethod
    def live(claim: dict) -> bool:
        if claim.get("host") != HOST:
            return True  # another host's processes cannot be checked from here
        return any(pid_alive(pid) for pid in claim.get("pids", []))

    def claim(self, run_dir: str) -> bool:
        """Claim ``run_dir`` for this process: False when it is done or another live process holds it."""
        os.makedirs(os.path.dirname(os.path.normpath(run_dir)) or ".", exist_ok=True)
        with self._locked():
            if done(run_dir):
                return False
            held = self.read(run_dir)
            if held is not None:
                if self.live(held):
                    return False
                os.unlink(self.path(run_dir))  # stale: its processes died on this host
                self._log("stale", run_dir, held=held)
            fd = os.open(self.path(run_dir), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as f:
                json.dump({"pids": [os.getpid()], "host": HOST}, f)
            self._log("claim", run_dir)
            return True

    def add_pid(self, run_dir: str, pid: int) -> None:
        """Record the worker process that runs a claimed run (the claim stays live while either lives)."""
        with self._locked():
            held = self.read(run_dir) or {"pids": [], "host": HOST}
            write_json(self.path(run_dir), {"pids": [*held.get("pids", []), pid], "host": HOST})

    def release(self, run_dir: str, code: int) -> None:
        with self._locked():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(run_dir))
            self._log("done" if code == 0 and done(run_dir) else "failed", run_dir, code=code)
