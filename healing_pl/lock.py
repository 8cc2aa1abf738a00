"""One command per run folder: an OS-level lock held for the command's whole life.

A command that writes into a run folder first takes :class:`RunLock` on it: ``fcntl.flock`` on
``<run_dir>/.healing-pl.lock`` (exclusive, non-blocking). The operating system releases it when the
command exits or dies (SIGKILL included), so a crashed run never leaves a stale lock behind; a second
command on the same folder stops at once with one sentence (ValueError).

The folder also remembers which experiment it holds (``<run_dir>/identity.json``, written by the first
command): a rerun is allowed only for the same experiment identity (it resumes, or finds nothing to do);
another identity is refused with a sentence naming the first setting that differs
(:func:`check_identity`).

A command that stops before writing anything of its own leaves no trace: :meth:`RunLock.release`
removes the lock file, an identity file this command wrote into a folder that holds nothing else, and the
folders it created if they are empty.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os

from healing_pl.files import write_json

__all__ = ["IDENTITY_FILE", "LOCK_FILE", "UNSET", "RunLock", "check_identity", "compute_once", "first_difference"]

LOCK_FILE = ".healing-pl.lock"
IDENTITY_FILE = "identity.json"


def _missing_parents(folder: str) -> list[str]:
    """The folders ``os.makedirs(folder)`` would create, deepest first."""
    missing = []
    folder = os.path.abspath(folder)
    while not os.path.exists(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing


class RunLock:
    """The exclusive lock of one run folder (see the module docstring).

    Args:
        run_dir: the run folder; it is created (with its parents) when it does not exist.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = os.fspath(run_dir)
        self.path = os.path.join(self.run_dir, LOCK_FILE)
        self._fd: int | None = None
        self._created: list[str] = []
        self._wrote_identity = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock; ValueError (one sentence) when another command holds it or the folder cannot be made."""
        if self._fd is not None:
            return self
        created = _missing_parents(self.run_dir)
        try:
            os.makedirs(self.run_dir, exist_ok=True)
        except OSError as err:
            self._created = [c for c in created if os.path.isdir(c)]
            self._remove_created()
            raise ValueError(
                f"run_dir '{self.run_dir}' cannot be created: {os.strerror(err.errno or errno.EIO).lower()}."
            ) from None
        self._created = created
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as err:
                self._remove_created()
                raise ValueError(
                    f"run_dir '{self.run_dir}' cannot be locked: {os.strerror(err.errno or errno.EIO).lower()}."
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                who = f" (process {holder})" if holder else ""
                raise ValueError(
                    f"run_dir '{self.run_dir}' is in use by another healing-pl command{who}; "
                    "wait for it to finish or choose another --run_dir."
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file its previous holder removed between our open and our flock
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Let go of the lock; remove what this command created and left empty."""
        if self._fd is None:
            return
        if self._wrote_identity and set(_listdir(self.run_dir)) <= {LOCK_FILE, IDENTITY_FILE}:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(self.run_dir, IDENTITY_FILE))
        with contextlib.suppress(OSError):
            os.remove(self.path)  # while still held: a waiting command then finds the inode gone and retries
        os.close(self._fd)
        self._fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first
            try:
                os.rmdir(folder)
            except OSError:
                break
        self._created = []

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def check_identity(self, identity: dict, *, fallback: dict | None = None) -> None:
        """:func:`check_identity` on this folder; remembers whether it wrote the identity file."""
        self._wrote_identity = check_identity(self.run_dir, identity, fallback=fallback) or self._wrote_identity


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        return os.pread(fd, 32, 0).decode().strip()
    return ""


def _listdir(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


class _Unset:
    def __repr__(self) -> str:
        return "unset"


#: the value :func:`first_difference` gives a key one tree lacks
UNSET = _Unset()


def first_difference(old, new, path: str = "") -> tuple[str, object, object] | None:
    """The first dotted key where two JSON-like trees differ, with both values (:data:`UNSET` when missing)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                return where, old.get(key, UNSET), new.get(key, UNSET)
            found = first_difference(old[key], new[key], where)
            if found:
                return found
        return None
    if old != new:
        return path or "<root>", old, new
    return None


def check_identity(run_dir: str, identity: dict, *, fallback: dict | None = None) -> bool:
    """Stop when ``run_dir`` holds another experiment than ``identity``; record it when the folder holds none.

    ``identity`` is any JSON-able description of what the command computes (the CLI passes the experiment
    identity with its seeds and the baseline checkpoint's sha256). ``fallback``: the identity of a folder
    written before identity files existed (from its results.json), compared the same way when there is no
    identity file. Returns True when it wrote the identity file.
    """
    path = os.path.join(run_dir, IDENTITY_FILE)
    identity = json.loads(json.dumps(identity, default=str))
    stored = None
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
        except (OSError, ValueError):
            raise ValueError(
                f"run_dir '{run_dir}' has an unreadable {IDENTITY_FILE}; choose another --run_dir."
            ) from None
    elif fallback is not None:
        stored = json.loads(json.dumps(fallback, default=str))
    if stored is not None:
        diff = first_difference(stored, identity)
        if diff is not None:
            key, old, new = diff
            raise ValueError(
                f"run_dir '{run_dir}' holds another experiment: its {key} is {_short(old)}, this command's is "
                f"{_short(new)}; rerun the same command to resume it, or choose another --run_dir."
            )
        if os.path.isfile(path):
            return False
    write_json(path, identity, indent=1, sort_keys=True)
    return True


def _short(value) -> str:
    if value is UNSET:
        return "unset"
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@contextlib.contextmanager
def compute_once(path: str | None):
    """Hold ``<path>.lock`` (a blocking ``flock``) while a cache entry is looked up and, when missing, computed and
    written: two commands that need the same entry (two jobs of a grid on one seed) compute it once; the second
    waits, then finds the entry. ``path`` None holds nothing. The lock file stays beside the entry (removing it
    while another command waits on it would let a third one compute the entry again)."""
    if path is None:
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
