"""The one way healing-pl writes a file: atomically.

Every file a run, a cache or a report writes goes through :func:`write_atomic`: the bytes go to a
unique temporary file in the destination's folder, are flushed to disk, and the temporary file is then
renamed over the destination. A reader (or a crashed run's rerun) sees the old file or the new one,
never a torn one; a failed write leaves no temporary file behind. The file gets the permissions
``open(path, "w")`` would give a new file (0o666 less the umask), not ``tempfile.mkstemp``'s 0o600.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable
from typing import IO, Any


def write_atomic(
    path: str | os.PathLike, content: str | bytes | Callable[[IO[bytes]], None], *, fsync: bool = True
) -> str:
    """Write ``content`` to ``path`` atomically and return the path.

    ``content``: text (UTF-8), bytes, or a function that writes to the binary file it is given (e.g.
    ``lambda f: torch.save(payload, f)``). ``fsync=False`` skips the flush to disk, for a file that may
    lag behind after a crash (a ledger's head) but must never be torn.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _create_temporary(folder, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return path


def _create_temporary(folder: str, name: str) -> tuple[int, str]:
    """Create ``<folder>/.<name>.<random>.tmp`` exclusively, with the mode ``open()`` gives a new file."""
    while True:
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def save_torch(payload: Any, path: str | os.PathLike) -> str:
    """``torch.save(payload)`` to ``path`` atomically (read it back with ``torch.load(weights_only=True)``)."""
    import torch

    return write_atomic(path, lambda f: torch.save(payload, f))


def write_json(path: str | os.PathLike, value: Any, *, default: Callable | None = None, **dump_kwargs) -> str:
    """``json.dump(value)`` to ``path`` atomically (``dump_kwargs``: indent, sort_keys, ...)."""
    return write_atomic(path, json.dumps(value, default=default, **dump_kwargs))
