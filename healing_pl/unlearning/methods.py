"""The unlearning methods behind one interface, a registry by name, and repeats.

Every method is a function ``(model, datamodule, forget_ids, cfg, seed) ->
model`` that returns a new model and leaves the input untouched. A config
names the method by string (``--unlearn.method fisher``); a new method is one
module plus one line in :data:`METHODS`.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Literal

import torch.nn.functional as F

from healing_pl.models.classifier import evaluate


@dataclass
class UnlearnConfig:
    """How the forget set is unlearned.

    Args:
        method: naive (retrain from scratch: the gold standard), sisa, fisher or influence.
        repeats: runs of a stochastic method (paper: 5); the representative model is the
            run whose test accuracy is closest to the mean.
        seed: seed of the first repeat (repeat i uses seed + i).
        batch_r: batch size over the remain set (Fisher information, Hessian-vector products).
        batch_f: forget-set minibatch: influence removes the forget set in sequential
            minibatches of this size (the paper's batch_f).
        max_norm: clip the L2 norm of each update (None: no clip).
        alpha: Fisher noise strength (calibrate it: the small MNIST CNN collapses near 1e-4).
        fisher_kind: true (expectation over the model's predicted labels) or empirical Fisher.
        lam: damping of the Fisher Newton step.
        noise_only: Fisher noise only (the paper's form for deep networks) or Newton step plus noise.
        damping: LiSSA damping d: inverts (H + d I).
        scale: LiSSA scale s: must exceed half the largest eigenvalue of H + d I.
        depth: LiSSA recursion depth.
        lissa_repeats: LiSSA estimates averaged per inverse-Hessian-vector product.
        shards: SISA shards.
        slices: SISA slices per shard.
        aggregation: SISA aggregation: majority vote or averaged softmax.
        cache_dir: where gold standards are cached by content hash (None: no cache).
    """

    method: Literal["naive", "sisa", "fisher", "influence"] = "fisher"
    repeats: int = 1
    seed: int = 0
    batch_r: int = 512
    batch_f: int = 64
    max_norm: float | None = None
    alpha: float = 1e-6
    fisher_kind: Literal["true", "empirical"] = "true"
    lam: float = 1e-3
    noise_only: bool = True
    damping: float = 0.01
    scale: float = 100.0
    depth: int = 100
    lissa_repeats: int = 1
    shards: int = 3
    slices: int = 5
    aggregation: Literal["vote", "softmax"] = "vote"
    cache_dir: str | None = "runs/cache"

    def __post_init__(self):
        if self.method not in (*METHODS, "sisa"):
            raise ValueError(f"unknown unlearning method '{self.method}'; choose one of {', '.join(METHODS)}, sisa.")
        for name in ("repeats", "batch_r", "batch_f", "depth", "lissa_repeats", "shards", "slices"):
            if getattr(self, name) < 1:
                raise ValueError(f"unlearn.{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("alpha", "lam", "damping"):
            if getattr(self, name) < 0:
                raise ValueError(f"unlearn.{name} must be non-negative, got {getattr(self, name)}.")
        if self.scale <= 0:
            raise ValueError(f"unlearn.scale must be positive, got {self.scale}.")

    def hyperparameters(self) -> dict:
        """The settings that matter for this method (for logs and cache keys)."""
        common = {"method", "repeats", "seed", "max_norm"}
        own = {"fisher": {"batch_r", "alpha", "fisher_kind", "lam", "noise_only", "batch_f"},
               "influence": {"batch_r", "batch_f", "damping", "scale", "depth", "lissa_repeats"},
               "sisa": {"shards", "slices", "aggregation"}, "naive": set()}[self.method]
        return {k: v for k, v in asdict(self).items() if k in common | own}


def _loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def _fisher(model, dm, forget_ids, cfg: UnlearnConfig, seed: int, progress: bool):
    from healing_pl.unlearning.fisher import fisher_forget

    remain = dm.remain_ids(forget_ids)
    return fisher_forget(model, dm.loader(remain, batch_size=cfg.batch_r), dm.loader(forget_ids, batch_size=cfg.batch_f),
                         alpha=cfg.alpha, kind=cfg.fisher_kind, lam=cfg.lam, noise_only=cfg.noise_only,
                         max_norm=cfg.max_norm, seed=seed, progress=progress)


def _influence(model, dm, forget_ids, cfg: UnlearnConfig, seed: int, progress: bool):
    from healing_pl.unlearning.influence import influence_unlearn

    remain = dm.remain_ids(forget_ids)
    # the Hessian batches are drawn in a seeded shuffled order: repeats differ, reruns do not
    return influence_unlearn(model, _loss, dm.loader(remain, shuffle=True, batch_size=cfg.batch_r, seed=seed),
                             dm.loader(forget_ids, batch_size=cfg.batch_f), n_train=len(dm.primary_ids),
                             damping=cfg.damping, scale=cfg.scale, depth=cfg.depth, repeats=cfg.lissa_repeats,
                             max_norm=cfg.max_norm, progress=progress)


def _naive(model, dm, forget_ids, cfg: UnlearnConfig, seed: int, progress: bool, epochs: int = 10):
    from healing_pl.unlearning.naive import naive_unlearn

    return naive_unlearn(model, dm, forget_ids, epochs=epochs, seed=seed, cache_dir=cfg.cache_dir, progress=progress)


#: name -> function(model, datamodule, forget_ids, cfg, seed, progress) -> new model.
#: SISA is not among them: it unlearns its own shard ensemble (healing_pl.unlearning.sisa).
METHODS: dict[str, Callable] = {"naive": _naive, "fisher": _fisher, "influence": _influence}
STOCHASTIC = {"fisher", "influence"}


@dataclass
class UnlearnResult:
    model: object               # the representative model
    accs: list[float]           # test accuracy of every repeat
    times: list[float]          # wall time of every repeat
    representative: int         # index of the representative repeat

    @property
    def summary(self) -> dict:
        return {"acc_mean": statistics.fmean(self.accs),
                "acc_std": statistics.stdev(self.accs) if len(self.accs) > 1 else 0.0,
                "time_mean_s": statistics.fmean(self.times), "representative": self.representative,
                "acc_repeats": list(self.accs)}


def unlearn_with_repeats(model, dm, forget_ids, cfg: UnlearnConfig, *, epochs: int = 10, progress: bool = False,
                         test_loader=None) -> UnlearnResult:
    """Run ``cfg.method`` ``cfg.repeats`` times and keep the run closest to the mean test accuracy."""
    if cfg.method == "sisa":
        raise ValueError("sisa unlearns its own shard ensemble; use healing_pl.unlearning.sisa.")
    forget_ids = dm.check_members(forget_ids)
    dm.remain_ids(forget_ids)  # validates: not the whole primary set
    test_loader = test_loader or dm.test_dataloader()
    fn = METHODS[cfg.method]
    repeats = cfg.repeats if cfg.method in STOCHASTIC else 1
    models, accs, times = [], [], []
    for i in range(repeats):
        start = time.perf_counter()
        kwargs = {"epochs": epochs} if cfg.method == "naive" else {}
        out = fn(copy.deepcopy(model) if cfg.method == "naive" else model, dm, forget_ids, cfg, cfg.seed + i,
                 progress, **kwargs)
        times.append(time.perf_counter() - start)
        accs.append(evaluate(out, test_loader)["acc"])
        models.append(out)
    mean = statistics.fmean(accs)
    best = min(range(repeats), key=lambda i: (abs(accs[i] - mean), i))
    return UnlearnResult(models[best], accs, times, best)
