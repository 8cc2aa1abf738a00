import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from healing_pl.data.datamodule import HealingDataModule, IdView, split_ids
from healing_pl.data.datasets import Mislabelled, TensorImages, build_pool


def test_splits_disjoint_cover_and_sized():
    s = split_ids(1000, seed=3, primary=0.7, backup=0.1, val=0.1)
    ids = torch.cat(list(s.values()))
    assert ids.numel() == 1000 and ids.unique().numel() == 1000  # disjoint and covering
    assert [len(s[k]) for k in ("primary", "backup", "val", "test")] == [700, 100, 100, 100]


def test_splits_counts_and_official_test_leave_rest_unused():
    s = split_ids(1000, seed=0, primary=600, backup=50, val=25, test=0)
    assert [len(s[k]) for k in ("primary", "backup", "val", "test")] == [600, 50, 25, 0]


def test_splits_same_seed_same_sets_other_seed_other_sets():
    a, b, c = (split_ids(500, seed, 0.6, 0.2, 0.1) for seed in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["primary"], c["primary"])


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(primary=0.8, backup=0.2, val=0.1), "do not fit"),
        (dict(primary=0.0, backup=0.1, val=0.1), "primary split is empty"),
        (dict(primary=-1, backup=0.1, val=0.1), "non-negative"),
        (dict(primary=1.5, backup=0.1, val=0.1), "whole count"),
    ],
)
def test_bad_fractions_stop_with_a_sentence(kw, words):
    with pytest.raises(ValueError, match=words):
        split_ids(100, 0, **kw)


def test_digits_datamodule_views_by_id():
    dm = HealingDataModule("digits", primary=0.6, backup=0.15, val=0.1, seed=0)
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (10, 1, 8)
    forget = dm.primary_ids[:5]
    remain = dm.remain_ids(forget)
    assert len(remain) == len(dm.primary_ids) - 5 and not torch.isin(forget, remain).any()
    heal = dm.heal_ids(forget, dm.backup_ids[:5])
    assert len(heal) == len(dm.primary_ids)
    x, y = next(iter(dm.loader(forget)))
    assert x.shape == (5, 1, 8, 8)
    assert torch.equal(y, dm.targets[forget])
    dm.set_train_ids(heal)
    assert sum(len(b[1]) for b in dm.train_dataloader()) == len(heal)


def test_views_reject_bad_ids():
    dm = HealingDataModule("digits", seed=0)
    with pytest.raises(ValueError, match="outside the primary set"):
        dm.remain_ids(dm.backup_ids[:2])
    with pytest.raises(ValueError, match="outside the primary set"):
        dm.remain_ids([10_000])
    with pytest.raises(ValueError, match="twice"):
        dm.remain_ids(dm.primary_ids[[0, 0]])
    with pytest.raises(ValueError, match="empty"):
        dm.remain_ids([])
    with pytest.raises(ValueError, match="whole primary set"):
        dm.remain_ids(dm.primary_ids)
    with pytest.raises(ValueError, match="outside the primary set"):
        dm.heal_ids(dm.primary_ids[:1], dm.primary_ids[1:2])


def test_split_state_round_trip_and_mismatch():
    a = HealingDataModule("digits", seed=1)
    b = HealingDataModule("digits", seed=2)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(a.splits[k], b.splits[k]) for k in a.splits)
    c = HealingDataModule("mnist5k", seed=1)
    with pytest.raises(ValueError, match="trained on dataset 'digits'"):
        c.load_state_dict(a.state_dict())


def test_mnist5k_is_real_mnist():
    pool = build_pool("mnist5k")
    assert len(pool) == 5000 and pool.num_classes == 10
    assert torch.bincount(pool.targets).tolist() == [500] * 10
    x, _ = pool.train[0]
    assert x.shape == (1, 28, 28)
    _each_pool_owns_its_tensors("mnist5k")


def _each_pool_owns_its_tensors(name: str) -> None:
    # the images are read once per process, but each pool owns its tensors: a change to one leaves the next as read
    pool = build_pool(name)
    image, label = pool.train.images[0].clone(), int(pool.targets[0])
    pool.train.images[0] = 0
    pool.train.targets[0] = label + 1
    again = build_pool(name)
    assert torch.equal(again.train.images[0], image) and int(again.targets[0]) == label


def test_digits_are_scikit_learns_and_each_pool_owns_its_tensors():
    from sklearn.datasets import load_digits

    pool, d = build_pool("digits"), load_digits()
    assert torch.equal(pool.train.images, torch.as_tensor(d.images / 16.0, dtype=torch.float32).view(-1, 1, 8, 8))
    assert pool.targets.tolist() == d.target.tolist()
    _each_pool_owns_its_tensors("digits")


@pytest.mark.parametrize("size", [None, 12])
def test_a_loaders_batch_fetch_equals_fetching_each_item(size):
    # the DataLoader fetches a batch with one __getitems__ call: the same tensors and labels as item by item,
    # mislabelled samples included, resized or not
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=gen)
    targets = torch.randint(0, 10, (40,), generator=gen)
    for base in (
        TensorImages(images, targets, (0.3,), (0.4,), size=size),
        TensorImages(images / 255.0, targets, (0.3,), (0.4,), size=size),
    ):
        wrong = Mislabelled(base, torch.tensor([5, 9]), (targets[[5, 9]] + 1) % 10)
        view = IdView(wrong, torch.tensor([9, 2, 5, 5, 31, 0, 7]))
        by_item = [view[i] for i in range(len(view))]
        (x, y), *_ = DataLoader(view, batch_size=len(view))
        assert torch.equal(x, torch.stack([item[0] for item in by_item]))
        assert y.tolist() == [item[1] for item in by_item]
        assert y[0] == (targets[9] + 1) % 10 and y[2] == y[3] == (targets[5] + 1) % 10  # the override holds
        assert x.shape[-1] == (size or 8)


def test_unknown_dataset_and_missing_root(in_tmp):
    with pytest.raises(ValueError, match="unknown dataset 'mnsit'"):
        build_pool("mnsit")
    with pytest.raises(FileNotFoundError, match="download true"):
        build_pool("cifar10", root=str(in_tmp / "nowhere"))
    with pytest.raises(FileNotFoundError, match="not found at"):
        build_pool("afhq", root=str(in_tmp / "nowhere"))
    assert os.listdir(in_tmp) == []  # nothing written


def _png_tree(root, classes, per_class, size=12, mode="RGB"):
    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr, "RGB").save(root / c / f"{i}.png")


def test_imagefolder_reads_a_png_tree(tmp_path):
    _png_tree(tmp_path / "train", ["cat", "dog", "wild"], 4)
    _png_tree(tmp_path / "val", ["cat", "dog", "wild"], 2)
    pool = build_pool("afhq", root=str(tmp_path), image_size=16)
    assert (len(pool), len(pool.test), pool.num_classes, pool.classes) == (12, 6, 3, ["cat", "dog", "wild"])
    x, y = pool.train[5]
    assert x.shape == (3, 16, 16) and y == 1
    gray = build_pool("imagefolder", root=str(tmp_path / "train"), image_size=8, channels=1)
    assert gray.test is None and gray.train[0][0].shape == (1, 8, 8)
    dm = HealingDataModule(
        "imagefolder", root=str(tmp_path / "train"), image_size=8, channels=1, primary=6, backup=2, val=2
    )
    assert len(dm.splits["test"]) == 2


def test_afhq_checks_its_classes(tmp_path):
    _png_tree(tmp_path, ["cat", "dog"], 2)
    with pytest.raises(ValueError, match="expected"):
        build_pool("afhq", root=str(tmp_path))
