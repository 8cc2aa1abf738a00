"""The LightningDataModule: a pool split by seed into primary / backup / val / test.

Every sample keeps its integer pool id; sets are id tensors. The training
loader serves ``train_ids`` (the primary set by default; the heal set during
healing), so one module serves baseline training, gold-standard retraining and
the healing fine-tune. The split ids travel inside every checkpoint (the
module's ``state_dict``) and are written to ``splits.json`` in the run folder,
so a later phase reloads exactly the same sets.
"""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from healing_pl.data.datasets import Pool, build_pool, fetch_items
from healing_pl.data.datasets import mislabel as mislabel_pool

SPLITS = ("primary", "backup", "val", "test")


class IdView(Dataset):
    """The samples of ``dataset`` whose pool ids are ``ids``, in that order."""

    def __init__(self, dataset: Dataset, ids: Tensor):
        self.dataset = dataset
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self.dataset[int(self.ids[index])]

    def __getitems__(self, indices: list[int]) -> list:
        """A loader's batch in one call to the dataset's own ``__getitems__`` when it has one (in-memory images)."""
        return fetch_items(self.dataset, self.ids[torch.as_tensor(indices, dtype=torch.long)].tolist())


class ShardedBatches:
    """A rank's share of every global batch of a batch sampler: positions ``rank, rank + world, ...``.

    Wrapped around the very batch sampler a single-process loader uses (a seeded shuffle in batches
    of ``batch_size``), and given the same generator, every rank sees the same global batches as one
    process would; averaging the ranks' gradients (DDP) then gives the single-process batch's
    gradient, so N ranks train like one process with the same ``batch_size`` (up to float summation
    order, and the weighting of a last batch that does not split evenly).
    """

    def __init__(self, batches: BatchSampler, world: int, rank: int):
        self.batches, self.world, self.rank = batches, world, rank

    def __iter__(self):
        for batch in self.batches:
            mine = batch[self.rank :: self.world]
            if mine:
                yield mine

    def __len__(self) -> int:
        n, size = len(self.batches.sampler), self.batches.batch_size
        full, rest = divmod(n, size)
        return full + int(rest > self.rank)


def _as_ids(ids: Iterable[int] | Tensor) -> Tensor:
    return torch.as_tensor(ids if isinstance(ids, Tensor) else list(ids), dtype=torch.long).flatten()


def _count(name: str, value: float | int, n: int) -> int:
    if isinstance(value, bool) or value is None or value < 0:
        raise ValueError(f"split '{name}' must be a non-negative fraction or count, got {value!r}.")
    if isinstance(value, float) and value <= 1.0:
        return int(round(value * n))
    if float(value) != int(value):
        raise ValueError(f"split '{name}' must be a fraction in [0, 1] or a whole count, got {value!r}.")
    return int(value)


def split_ids(n: int, seed: int, primary, backup, val, test=None) -> dict[str, Tensor]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into the named splits.

    Each size is a fraction of ``n`` (a float <= 1) or a count (an int).
    ``test=None`` gives the test split whatever is left.
    """
    sizes = {
        "primary": _count("primary", primary, n),
        "backup": _count("backup", backup, n),
        "val": _count("val", val, n),
    }
    sizes["test"] = n - sum(sizes.values()) if test is None else _count("test", test, n)
    if sizes["primary"] < 1:
        raise ValueError(f"the primary split is empty: primary={primary!r} of a pool of {n} samples.")
    if sizes["test"] < 0 or sum(sizes.values()) > n:
        asked = " + ".join(f"{k}={sizes[k]}" for k in SPLITS if k in sizes and sizes[k] >= 0)
        raise ValueError(f"the splits do not fit: {asked} samples exceed the pool of {n}.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = {}, 0
    for name in SPLITS:
        out[name] = order[start : start + sizes[name]].sort().values
        start += sizes[name]
    return out


class HealingDataModule(L.LightningDataModule):
    """Primary/backup/val/test splits of one dataset, with forget/remain/heal views by id.

    Args:
        dataset: registry name: mnist5k, digits, mnist, cifar10, imagefolder, afhq.
        root: folder of the data (torchvision files or class folders); default data/<dataset>.
        download: let torchvision download mnist / cifar10 into ``root``.
        primary: the training set D: a fraction of the pool (float <= 1) or a count.
        backup: samples never trained on, where twins come from (fraction or count).
        val: validation samples (fraction or count).
        test: test samples taken from the pool; None uses the dataset's official test
            set when it has one, else what is left of the pool.
        batch_size: training batch size.
        eval_batch_size: batch size of validation, test and inference loaders.
        num_workers: DataLoader workers.
        seed: seed of the split and of the training shuffle.
        image_size: resize images to this side (default: the dataset's own, 224 for folders).
        channels: 1 or 3 image channels (image folders only).
        mislabel: give this many primary samples (seeded) a wrong label, drawn among the other classes: a
            model trained on them memorises wrong labels, which the gold standard does not, so their
            forgetting is measurable (pick them with --adversary MislabelledSelector).
    """

    def __init__(
        self,
        dataset: str = "mnist5k",
        root: str | None = None,
        download: bool = False,
        primary: float | int = 0.7,
        backup: float | int = 0.1,
        val: float | int = 0.1,
        test: float | int | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        seed: int = 0,
        image_size: int | None = None,
        channels: int | None = None,
        mislabel: int = 0,
    ):
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(
                f"data.batch_size and data.eval_batch_size must be positive, got batch_size={batch_size}, "
                f"eval_batch_size={eval_batch_size}."
            )
        if image_size is not None and image_size < 1:
            raise ValueError(f"data.image_size must be at least 1 pixel, got {image_size}.")
        if channels is not None and channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {channels}.")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be at least 0, got {num_workers}.")
        self.pool: Pool = build_pool(dataset, root, download, image_size, channels)
        self.save_hyperparameters()
        # record the resolved image size and channels (they must agree with the model's when logged)
        resolved = {"image_size": self.pool.image_size, "channels": self.pool.in_chans}
        self.hparams.update(resolved)
        self._hparams_initial.update(resolved)
        # with an official test set, the pool gives no test samples unless asked to
        official = self.pool.test is not None and test is None
        self.splits = split_ids(len(self.pool), seed, primary, backup, val, 0 if official else test)
        if not official and self.splits["test"].numel() == 0:
            raise ValueError(
                f"dataset '{dataset}' has no test set of its own and the splits leave no test samples; "
                "lower primary/backup/val or set test."
            )
        #: the primary samples whose label was replaced (data.mislabel), sorted
        self.pool, self.mislabelled_ids = mislabel_pool(self.pool, self.splits["primary"], mislabel, seed)
        self.train_ids: Tensor = self.splits["primary"]

    # ------------------------------------------------------------------ facts
    @property
    def num_classes(self) -> int:
        return self.pool.num_classes

    @property
    def in_chans(self) -> int:
        return self.pool.in_chans

    @property
    def image_size(self) -> int:
        return self.pool.image_size

    @property
    def targets(self) -> Tensor:
        return self.pool.targets

    @property
    def true_targets(self) -> Tensor:
        """The pool's labels before ``mislabel`` replaced some (``targets`` itself when nothing was replaced)."""
        return (
            getattr(self.pool.train, "dataset", self.pool.train).targets
            if self.mislabelled_ids.numel()
            else self.targets
        )

    @property
    def primary_ids(self) -> Tensor:
        return self.splits["primary"]

    @property
    def backup_ids(self) -> Tensor:
        return self.splits["backup"]

    # ------------------------------------------------------------------ views
    def check_members(self, ids, of: str = "primary", what: str = "forget set") -> Tensor:
        """Return ``ids`` as a tensor after checking they are distinct members of split ``of``."""
        ids = _as_ids(ids)
        if ids.numel() == 0:
            raise ValueError(f"the {what} is empty.")
        uniq, counts = ids.unique(return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"the {what} names some samples twice (e.g. ids {uniq[counts > 1][:5].tolist()}).")
        outside = ids[~torch.isin(ids, self.splits[of])]
        if outside.numel():
            raise ValueError(
                f"the {what} holds {outside.numel()} id(s) outside the {of} set (e.g. {outside[:5].tolist()})."
            )
        return ids

    def remain_ids(self, forget_ids) -> Tensor:
        """The remain set R: primary minus the forget set."""
        forget = self.check_members(forget_ids)
        remain = self.primary_ids[~torch.isin(self.primary_ids, forget)]
        if remain.numel() == 0:
            raise ValueError("the forget set covers the whole primary set; nothing would remain to train on.")
        return remain

    def heal_ids(self, forget_ids, twin_ids=(), remain_fraction: float = 1.0, seed: int = 0) -> Tensor:
        """The heal set: R (or a seeded ``remain_fraction`` of it, at least one sample) plus the twins (which
        must come from outside the primary set)."""
        twins = _as_ids(twin_ids)
        if twins.numel():
            inside = twins[torch.isin(twins, self.primary_ids)]
            if inside.numel():
                raise ValueError(
                    f"twins must come from outside the primary set, but ids {inside[:5].tolist()} are in it."
                )
        remain = self.remain_ids(forget_ids)
        if remain_fraction < 1.0:
            keep = max(1, int(remain_fraction * remain.numel() + 0.5))
            order = torch.randperm(remain.numel(), generator=torch.Generator().manual_seed(seed))
            remain = remain[order[:keep].sort().values]
        return torch.cat([remain, twins])

    def matched_ids(self, forget_ids, split: str, seed: int = 0) -> Tensor:
        """Ids of ``split`` with the forget set's class histogram: for every class c with k_c forget samples,
        min(k_c, available) ids of class c drawn without replacement (seeded), in class order. Held-out images
        that look like the forget set by class (the membership attack's non-members, SCRUB+R's reference)."""
        ids = self.splits[split]
        targets = self.targets
        forget = _as_ids(forget_ids)
        classes, counts = targets[forget].unique(return_counts=True)
        generator = torch.Generator().manual_seed(seed)
        drawn = []
        for c, k in zip(classes.tolist(), counts.tolist(), strict=True):
            pool = ids[targets[ids] == c]
            drawn.append(pool[torch.randperm(pool.numel(), generator=generator)[: min(k, pool.numel())]])
        return torch.cat(drawn) if drawn else ids[:0]

    def set_train_ids(self, ids) -> None:
        """Make the training loader serve ``ids`` (e.g. the remain or heal set)."""
        ids = _as_ids(ids)
        if ids.numel() == 0:
            raise ValueError("the training set is empty.")
        if int(ids.min()) < 0 or int(ids.max()) >= len(self.pool):
            raise ValueError(f"training ids must lie in [0, {len(self.pool)}), got {int(ids.min())}..{int(ids.max())}.")
        self.train_ids = ids

    def subset(self, ids) -> Dataset:
        return IdView(self.pool.train, _as_ids(ids))

    def loader(
        self, ids, *, shuffle: bool = False, batch_size: int | None = None, seed: int | None = None
    ) -> DataLoader:
        """A loader over the pool samples ``ids`` (in order unless ``shuffle``)."""
        generator = torch.Generator().manual_seed(self.hparams.seed if seed is None else seed)
        return DataLoader(
            self.subset(ids),
            batch_size=batch_size or self.hparams.eval_batch_size,
            shuffle=shuffle,
            generator=generator if shuffle else None,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def test_dataset(self) -> Dataset:
        return self.subset(self.splits["test"]) if self.splits["test"].numel() else self.pool.test

    # ------------------------------------------------------------ lightning
    def train_dataloader(self) -> DataLoader:
        """The shuffled training loader; under DDP each rank serves its share of every global batch
        (``batch_size`` is the batch of the whole run, see :class:`ShardedBatches`)."""
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        if world == 1:
            return self.loader(self.train_ids, shuffle=True, batch_size=self.hparams.batch_size)
        if self.hparams.batch_size % world:
            raise ValueError(
                f"data.batch_size={self.hparams.batch_size} does not split across {world} devices; "
                f"use a multiple of {world}."
            )
        # the generator is drawn exactly as by the one-process loader (its base seed, then the shuffle)
        generator = torch.Generator().manual_seed(self.hparams.seed)
        dataset = self.subset(self.train_ids)
        batches = BatchSampler(RandomSampler(dataset, generator=generator), self.hparams.batch_size, drop_last=False)
        return DataLoader(
            dataset,
            batch_sampler=ShardedBatches(batches, world, trainer.global_rank),
            generator=generator,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.splits["val"])

    def test_dataloader(self) -> DataLoader:
        return DataLoader(
            self.test_dataset(), batch_size=self.hparams.eval_batch_size, num_workers=self.hparams.num_workers
        )

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def state_dict(self) -> dict:
        return {
            "dataset": self.hparams.dataset,
            "pool_size": len(self.pool),
            "seed": self.hparams.seed,
            "splits": {k: v.tolist() for k, v in self.splits.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Adopt the splits saved with a run (checked against this pool)."""
        if state.get("dataset") != self.hparams.dataset or state.get("pool_size") != len(self.pool):
            raise ValueError(
                f"the checkpoint was trained on dataset '{state.get('dataset')}' with {state.get('pool_size')} "
                "samples, "
                f"but the data config gives '{self.hparams.dataset}' with {len(self.pool)}."
            )
        self.splits = {k: torch.tensor(v, dtype=torch.long) for k, v in state["splits"].items()}
        self.train_ids = self.splits["primary"]

    def save_splits(self, path: str) -> None:
        from healing_pl.files import write_json

        write_json(path, self.state_dict())

    def summary(self) -> str:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        test = "test from the pool" if self.splits["test"].numel() else f"official test {len(self.pool.test)}"
        return f"{self.hparams.dataset}: pool {len(self.pool)} ({sizes}; {test})"
