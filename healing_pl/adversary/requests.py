"""Real unlearn requests from a file: what a model owner feeds ``--requests FILE`` instead of a simulated adversary.

The file is JSON lines (blank lines are skipped); each line is one request naming one sample in exactly one way::

    {"requester": "alice", "sample_id": 123}
    {"requester": "bob", "sample_hash": "<64 hex digits of healing_pl.adversary.membership.sample_hash>"}
    {"requester": "carol", "image": "images/carol.png", "kind": "user"}

``requester`` is required; ``kind`` is optional (``user`` by default, or ``benign`` / ``adversarial`` when the
owner knows better); no other key is allowed. ``image`` is a path relative to the requests file, decoded as the
dataset's own samples are: for an image-folder dataset (``imagefolder``, ``afhq``) with the pool's own transform, so
a copy of a training file names that sample; for a tensor-backed dataset (``digits``, ``mnist5k``, ``mnist``,
``cifar10``) the file must be the exact 8-bit encoding of a pool image (grayscale or RGB as the pool, same size):
it then names the pool sample with those pixels (:func:`image_hash`). An image that matches nothing is hashed as
decoded and is rejected as ``not_a_member`` by the membership check, like any unknown hash.

Image paths resolve inside one root (``read_requests(root=...)``, default: the requests file's folder): a path
that leaves it (``..``, an absolute path, a symbolic link pointing out) is refused with the same sentence whether
or not anything exists there, and only regular files are opened (a FIFO or a device is refused without blocking).
Fields are bounded: a line of at most 64 KiB, a requester of at most 256 characters, an image path of at most
4,096. The file is read line by line into columns (:class:`RequestColumns`, about 16 bytes a request named by
id, 48 by hash); :class:`~healing_pl.adversary.membership.Request` objects are built only as they are used, so a
million-line file takes tens of megabytes, not hundreds.

:func:`read_requests` checks the whole file before anything runs: a missing file, a line that is not a JSON
object (by line number), a line naming no sample or two at once, an unknown key or a wrong value, and an image
that cannot be read each stop with one sentence (ValueError / FileNotFoundError).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from healing_pl import records as rk
from healing_pl.adversary.membership import KINDS, Request, sample_hash

__all__ = ["KEYS", "RequestColumns", "RequestsFile", "read_requests", "image_hash"]

#: The keys a line may carry.
KEYS: tuple[str, ...] = ("requester", "sample_id", "sample_hash", "image", "kind")
_NAMES = ("sample_id", "sample_hash", "image")
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: bounds on what one line may carry
MAX_LINE_BYTES = 65_536
MAX_REQUESTER_CHARS = 256
MAX_IMAGE_PATH_CHARS = 4_096


class RequestColumns(Sequence[Request]):
    """Requests kept as columns, each :class:`Request` built when it is read (an index, a slice, iteration).

    A request costs a requester index (4 bytes), its kind and naming (2 bytes) and a slot (8 bytes): the
    sample id, or the position of its 32-byte hash. Requester names are stored once each. An id outside
    64 bits (it can only be rejected) is kept aside as written.
    """

    _KIND_CODES = {kind: i for i, kind in enumerate(KINDS)}

    def __init__(self) -> None:
        self._requester = array("I")
        self._names: list[str] = []
        self._name_index: dict[str, int] = {}
        self._kind = bytearray()
        self._by_hash = bytearray()  # 0: by id, 1: by hash, 2: by an id outside 64 bits (in _wide)
        self._slot = array("q")
        self._hashes = bytearray()
        self._wide: dict[int, int] = {}

    def append(self, requester: str, kind: str, sample_id: int | None = None, sample_hash: str | None = None) -> None:
        index = self._name_index.get(requester)
        if index is None:
            index = self._name_index[requester] = len(self._names)
            self._names.append(requester)
        row = len(self._kind)
        self._requester.append(index)
        self._kind.append(self._KIND_CODES[kind])
        if sample_hash is not None:
            self._by_hash.append(1)
            self._slot.append(len(self._hashes) // 32)
            self._hashes += bytes.fromhex(sample_hash)
        elif -(2**63) <= sample_id < 2**63:
            self._by_hash.append(0)
            self._slot.append(sample_id)
        else:
            self._by_hash.append(2)
            self._slot.append(0)
            self._wide[row] = sample_id

    def set_hash(self, row: int, sample_hash: str) -> None:
        """Give the request in ``row`` (named by hash) its hash: an image's, once the image is decoded."""
        assert self._by_hash[row] == 1, "only a request named by hash has a hash slot"
        slot = self._slot[row]
        self._hashes[32 * slot : 32 * slot + 32] = bytes.fromhex(sample_hash)

    def __len__(self) -> int:
        return len(self._kind)

    def _build(self, row: int) -> Request:
        requester, kind = self._names[self._requester[row]], KINDS[self._kind[row]]
        how, slot = self._by_hash[row], self._slot[row]
        if how == 1:
            return Request(requester, sample_hash=self._hashes[32 * slot : 32 * slot + 32].hex(), kind=kind)
        return Request(requester, sample_id=slot if how == 0 else self._wide[row], kind=kind)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._build(row) for row in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("request index out of range")
        return self._build(index)

    def __iter__(self) -> Iterator[Request]:
        return (self._build(row) for row in range(len(self)))


@dataclass(frozen=True)
class RequestsFile:
    """A checked requests file: its requests in file order (images already resolved to content hashes)."""

    path: str
    sha256: str  # of the file's bytes
    requests: Sequence[Request]  # a RequestColumns (or any sequence of Request)

    def record(self) -> dict:
        """What ``results.json`` says about the source of the requests (the adversary was not used)."""
        return {
            rk.ADVERSARY_SELECTOR: rk.REQUESTS_SELECTOR,
            rk.ADVERSARY_BUDGET: None,
            rk.ADVERSARY_SYSTEM_KNOWLEDGE: None,
            rk.ADVERSARY_DATA_KNOWLEDGE: None,
            rk.ADVERSARY_TARGET_CLASS: None,
            rk.REQUESTS_FILE: self.path,
            rk.REQUESTS_FILE_SHA256: self.sha256,
        }


def _parse_line(text: str, number: int, where: str) -> dict:
    try:
        entry = json.loads(text)
    except ValueError as err:
        raise ValueError(f"line {number} of {where} is not valid JSON ({err.msg}).") from None
    if not isinstance(entry, dict):
        raise ValueError(f"line {number} of {where} is not a JSON object.")
    unknown = [k for k in entry if k not in KEYS]
    if unknown:
        raise ValueError(f"line {number} of {where} has an unknown key '{unknown[0]}'; allowed: {', '.join(KEYS)}.")
    named = [k for k in _NAMES if k in entry]
    if len(named) != 1:
        how = "names no sample" if not named else f"names its sample {len(named)} ways ({', '.join(named)})"
        raise ValueError(f"line {number} of {where} {how}; give exactly one of sample_id, sample_hash or image.")
    requester = entry.get("requester")
    if not isinstance(requester, str) or not requester:
        raise ValueError(f"line {number} of {where} needs a non-empty string 'requester'.")
    if len(requester) > MAX_REQUESTER_CHARS:
        raise ValueError(f"line {number} of {where} has a requester longer than {MAX_REQUESTER_CHARS} characters.")
    kind = entry.get("kind", "user")
    if kind not in KINDS:
        raise ValueError(f"line {number} of {where} has kind {kind!r}; expected one of {', '.join(KINDS)}.")
    value = entry[named[0]]
    if named[0] == "sample_id" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"line {number} of {where} has sample_id {value!r}; expected an integer pool id.")
    if named[0] == "sample_hash" and not (isinstance(value, str) and _HEX64.fullmatch(value.lower())):
        raise ValueError(f"line {number} of {where} has a sample_hash that is not 64 hex digits.")
    if named[0] == "image" and (not isinstance(value, str) or not value):
        raise ValueError(f"line {number} of {where} has an image that is not a file path.")
    if named[0] == "image" and len(value) > MAX_IMAGE_PATH_CHARS:
        raise ValueError(f"line {number} of {where} has an image path longer than {MAX_IMAGE_PATH_CHARS} characters.")
    return {"requester": requester, "kind": kind, named[0]: value.lower() if named[0] == "sample_hash" else value}


def read_requests(path: str, dataset, root: str | None = None) -> RequestsFile:
    """Read and check a requests file against the pool ``dataset`` (``dataset[i] -> (x, y)``).

    The file is read line by line into :class:`RequestColumns` (a few bytes a request); every line is checked
    before any image is decoded; each image becomes a request by content hash (:func:`image_hash`).
    ``root``: the folder image paths (relative to the requests file) must stay in (default: the requests file's
    folder); a path that leaves it
    (``..``, an absolute path, a symbolic link) or names anything but a regular file is refused, with the
    same sentence whether or not something exists there. Raises FileNotFoundError or ValueError with one
    sentence.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"requests file '{path}' does not exist.")
    where = f"requests file '{path}'"
    digest = hashlib.sha256()
    columns = RequestColumns()
    images: dict[int, tuple[int, str]] = {}  # row -> (line number, image path), decoded once every line is checked
    with open(path, "rb") as f:
        for number, line in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), start=1):
            digest.update(line)
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                raise ValueError(f"line {number} of {where} is longer than {MAX_LINE_BYTES:,} bytes.")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"requests file '{path}' is not UTF-8 text.") from None
            if not text.strip():
                continue
            entry = _parse_line(text, number, where)
            if "image" in entry:
                images[len(columns)] = (number, entry.pop("image"))
                entry["sample_hash"] = "00" * 32  # replaced below
            columns.append(**entry)
    if not len(columns):
        raise ValueError(f"requests file '{path}' holds no requests.")
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.realpath(root if root is not None else folder)
    matcher = _ImageMatcher(dataset)
    for row, (number, image) in images.items():
        digest_of_image = matcher.hash_inside(base, folder, image, f"line {number} of {where}")
        columns.set_hash(row, digest_of_image)
    return RequestsFile(path, digest.hexdigest(), columns)


def _inside(base: str, folder: str, image: str, where: str) -> str:
    """The resolved path of ``image`` (relative to ``folder``, the requests file's) inside the root ``base``; one
    sentence (revealing nothing about the disk outside ``base``) when it leaves it."""
    if os.path.isabs(image) or "\x00" in image:
        raise ValueError(f"{where}: image '{image}' lies outside the requests root '{base}'.")
    resolved = os.path.realpath(os.path.join(folder, image))
    if os.path.commonpath([base, resolved]) != base:
        raise ValueError(f"{where}: image '{image}' lies outside the requests root '{base}'.")
    return resolved


def image_hash(path: str, dataset) -> str:
    """The content hash of an image file decoded as a sample of ``dataset`` (see the module docstring)."""
    return _ImageMatcher(dataset).hash(path, f"image '{path}'")


class _ImageMatcher:
    """Decodes image files as samples of one pool; the pixel index of a tensor pool is built on first use."""

    def __init__(self, dataset):
        self.dataset = dataset
        self._index: dict[bytes, int] | None = None

    def hash_inside(self, base: str, folder: str, image: str, where: str) -> str:
        """:meth:`hash` of ``image`` (relative to ``folder``) resolved inside the root ``base``."""
        return self.hash(_inside(base, folder, image, where), where, shown=image)

    def hash(self, path: str, where: str, shown: str | None = None) -> str:
        from PIL import Image

        shown = path if shown is None else shown
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            raise ValueError(f"{where}: image '{shown}' cannot be read (no such regular file).") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError(f"{where}: image '{shown}' cannot be read (no such regular file).")
        with os.fdopen(fd, "rb") as f:
            try:
                with Image.open(f) as opened:
                    opened.load()
                    image = opened.copy()
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                raise ValueError(f"{where}: image '{shown}' cannot be read ({type(err).__name__}).") from None
        folder = getattr(self.dataset, "folder", None)
        if folder is not None:  # an image-folder pool: the pool's own transform
            return sample_hash(folder.transform(image.convert("RGB")))
        images = getattr(self.dataset, "images", None)
        if images is None or not hasattr(self.dataset, "mean"):
            raise ValueError(f"{where}: image requests are not supported for a {type(self.dataset).__name__} pool.")
        return self._tensor_pool_hash(image, images)

    def _tensor_pool_hash(self, image, images: torch.Tensor) -> str:
        import numpy as np

        channels = images.shape[1]
        pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        x = torch.from_numpy(pixels.copy()).reshape(*pixels.shape[:2], -1).permute(2, 0, 1).contiguous()
        if tuple(x.shape) == tuple(images.shape[1:]):
            match = self._pixel_index(images).get(x.numpy().tobytes())
            if match is not None:
                return sample_hash(self.dataset[match][0])
        # no pool image has these pixels: the hash of the decoded image, which no member carries
        d = self.dataset
        return sample_hash((x.float() / 255.0 - d.mean) / d.std)

    def _pixel_index(self, images: torch.Tensor) -> dict[bytes, int]:
        """8-bit pixels -> lowest pool id (a float pool in [0, 1] is rounded to 8 bits)."""
        if self._index is None:
            q = images if images.dtype == torch.uint8 else (images.float() * 255.0).round().clamp(0, 255).byte()
            q = q.contiguous().numpy()
            index: dict[bytes, int] = {}
            for i in range(len(q)):
                index.setdefault(q[i].tobytes(), i)
            self._index = index
        return self._index
