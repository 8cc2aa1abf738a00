"""The configuration groups of healing-pl that are not a method family.

LightningCLI reads each as a nested group (``--twins.*``, ``--heal.*``, ``--stream.*``,
``--wandb.*``); the ``Args`` section of a class docstring is its ``--help`` text. Each checks itself
on construction, so a typo stops the command with one sentence before anything runs or is written.
The method families are classes chosen on the command line: ``--unlearn <Method>``
(:mod:`healing_pl.unlearning`), ``--adversary <Selector>`` (:mod:`healing_pl.adversary`) and
``--twins.metric <Metric>`` (:mod:`healing_pl.healing`); their constructor arguments are their knobs.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

from jsonargparse import lazy_instance

from healing_pl.healing import TWIN_METRICS, Metric


@cache
def _lazy_class(cls: type) -> type:
    """jsonargparse's lazy-instance class of ``cls``, made once, in a thread of its own: ``lazy_instance`` walks the
    whole call stack (``inspect.stack()``, reading the source of every frame) to find its caller's module, which
    cost tens of milliseconds on every ``TwinsConfig()`` and 0.2 to 0.4 s at the first (the stack of an import is
    deep); a new thread's stack is a few frames, and its caller is still this module."""
    made: list[type] = []
    maker = threading.Thread(target=lambda: made.append(type(lazy_instance(cls))), name="lazy-instance")
    maker.start()
    maker.join()
    return made[0] if made else type(lazy_instance(cls))  # a failure in the thread raises here, where it is seen


def _default_metric() -> Metric:
    """A fresh default twin metric (FeatCosine), built on first use, as ``lazy_instance(FeatCosine)`` builds it (so
    ``--print_config`` names its class)."""
    cls = TWIN_METRICS["feat_cosine"]
    return _lazy_class(cls)(cls, {})


# --------------------------------------------------------------------------- keys that moved
#: old option -> its replacement (the registry change: each method, adversary and twin metric is a class whose
#: constructor arguments are its knobs); a grid file or command line that uses an old key stops naming the new one
RENAMED_KEYS: dict[str, str] = {
    "unlearn.method": "unlearn: <Method> (--unlearn Fisher, Influence, Naive, SISA, Finetune, NegGradPlus, SCRUB, "
    "SalUn or SSD)",
    "unlearn.ft_epochs": "unlearn.epochs (with --unlearn Finetune)",
    "unlearn.ng_alpha": "unlearn.alpha (with --unlearn NegGradPlus)",
    "unlearn.ng_epochs": "unlearn.epochs (with --unlearn NegGradPlus)",
    "unlearn.scrub_epochs": "unlearn.epochs (with --unlearn SCRUB)",
    "unlearn.scrub_msteps": "unlearn.msteps (with --unlearn SCRUB)",
    "unlearn.scrub_alpha": "unlearn.alpha (with --unlearn SCRUB)",
    "unlearn.scrub_gamma": "unlearn.gamma (with --unlearn SCRUB)",
    "unlearn.scrub_temperature": "unlearn.temperature (with --unlearn SCRUB)",
    "unlearn.salun_ratio": "unlearn.ratio (with --unlearn SalUn)",
    "unlearn.salun_epochs": "unlearn.epochs (with --unlearn SalUn)",
    "unlearn.ssd_lambda": "unlearn.lam (with --unlearn SSD)",
    "unlearn.ssd_alpha": "unlearn.alpha (with --unlearn SSD)",
    "unlearn.sisa_shard": "unlearn.shard (with --unlearn SISA)",
    "unlearn.sisa_epochs": "unlearn.epochs_per_slice (with --unlearn SISA)",
    "adversary.selector": "adversary: <Selector> (--adversary RandomSelector, ClassSelector, WorstLogitsSelector, "
    "GradientSelector, BlindGuessSelector or UnlearningAwareSelector)",
    "adversary.gradient_mode": "adversary.mode (with --adversary GradientSelector)",
    "adversary.gradient_engine": "adversary.engine (with --adversary GradientSelector)",
    "adversary.influence_damping": "adversary.damping (with --adversary GradientSelector)",
    "adversary.influence_scale": "adversary.scale (with --adversary GradientSelector)",
    "adversary.influence_depth": "adversary.depth (with --adversary GradientSelector)",
    "adversary.influence_repeats": "adversary.lissa_repeats (with --adversary GradientSelector)",
    "adversary.aware_pool": "adversary.pool (with --adversary UnlearningAwareSelector)",
    "adversary.aware_block": "adversary.block (with --adversary UnlearningAwareSelector)",
    "adversary.aware_ranking": "adversary.ranking (with --adversary UnlearningAwareSelector)",
}

#: old values of the options that now choose a class (record names) -> the class that replaced them
RENAMED_VALUES: dict[str, dict[str, str]] = {
    "twins.metric": {
        "none": "null",
        "raw_l2": "RawL2",
        "raw_mahalanobis": "RawMahalanobis",
        "feat_cosine": "FeatCosine",
        "feat_mahalanobis": "FeatMahalanobis",
        "random": "RandomMetric",
    }
}


# --------------------------------------------------------------------------- twins and healing
#: the suffix of a heal setup whose twins are restricted to their request's class (``twins.same_class``): the
#: random twins of the same class are the twin-regime study's second control (``T-random [same class]``)
SAME_CLASS = " [same class]"


@dataclass
class TwinsConfig:
    """How twins replace the unlearned samples.

    Args:
        metric: the twin metric, a class with its own knobs (--twins.metric.help <Metric>): RawL2,
            RawMahalanobis (pixels), FeatCosine, FeatMahalanobis (baseline embeddings) or RandomMetric (the
            control); null: no twins, heal on the remain set R alone.
        policy: general_spare_set (each request takes its nearest remaining spare of the
            backup set) or twins (k surrogates precomputed per primary sample).
        same_class: restrict each twin to its unlearned sample's class (off by default: the paper
            states no such restriction; random twins are then drawn from the whole spare set).
        group: how one round's requests share spares: sequential, greedy or optimal.
        k: surrogates kept per primary sample by the twins policy.
        seed: seed of the random metric and of the spares draw.
        spares: the spare set the search may use: None, the whole backup set; up to 1, a fraction of it;
            above 1, a count; drawn with twins.seed (the spare-set size study).
    """

    metric: Metric | None = field(default_factory=_default_metric)
    policy: Literal["general_spare_set", "twins"] = "general_spare_set"
    same_class: bool = False
    group: Literal["sequential", "greedy", "optimal"] = "sequential"
    k: int = 3
    seed: int = 0
    spares: float | None = None

    def __post_init__(self):
        if self.spares is not None and (
            isinstance(self.spares, bool)
            or not self.spares > 0
            or (self.spares > 1 and self.spares != int(self.spares))
        ):
            raise ValueError(
                f"twins.spares must be a fraction in (0, 1] of the backup set or a whole count above 1, "
                f"got {self.spares}."
            )
        if isinstance(self.metric, str):  # in code (tests, scripts): a record name, or "none"
            self.metric = None if self.metric == "none" else TWIN_METRICS[self.metric]()
        if self.metric is not None:
            TWIN_METRICS.check(self.metric)
        if self.k < 1:
            raise ValueError(f"twins.k must be at least 1, got {self.k}.")

    @property
    def metric_name(self) -> str:
        """The metric's record name (``twins/metric``), or none."""
        return "none" if self.metric is None else self.metric.name

    @property
    def setup(self) -> str:
        """The heal-set label used in tables: R, or the metric's label (T-<metric>), followed by
        :data:`SAME_CLASS` when the twins are restricted to their request's class."""
        if self.metric is None:
            return "R"
        return self.metric.label + (SAME_CLASS if self.same_class else "")


@dataclass
class HealConfig:
    """The healing fine-tune.

    Args:
        epochs: fine-tuning epochs (at least 1); None: the paper's N/2 of the baseline's N epochs,
            rounded up (ceil(N/2): N = 10, 5, 3 give 5, 3, 2).
        lr: Adam learning rate of the fine-tune; None: the baseline's.
        gold: also train (or load from the cache) the gold standard, to report Best-GS.
        remain_fraction: the share of the remain set R that joins the twins in the heal set, drawn with the
            baseline's seed: 1 heals on R plus the twins (the paper); 0.1 on the twins plus a 10% subset of R,
            where a twin weighs ten times more (the twin-regime study). heal subcommand only.
    """

    epochs: int | None = None
    lr: float | None = None
    gold: bool = True
    remain_fraction: float = 1.0

    def __post_init__(self):
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"heal.epochs must be at least 1, got {self.epochs}.")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"heal.lr must be positive, got {self.lr}.")
        if isinstance(self.remain_fraction, bool) or not 0.0 < self.remain_fraction <= 1.0:
            raise ValueError(f"heal.remain_fraction must lie in (0, 1], got {self.remain_fraction}.")

    def epochs_for(self, baseline_epochs: int) -> int:
        """The fine-tune's epochs: ``epochs``, or ceil(N/2) of the baseline's N (at least 1)."""
        return self.epochs or max(1, math.ceil(baseline_epochs / 2))


@dataclass
class StreamConfig:
    """A stream of benign and adversarial unlearn requests, applied in rounds.

    Args:
        benign_ratio: share of benign requests (random members, from regular users) in the stream, in [0, 1).
        order: arrival order: interleaved, adversary_first, benign_first or shuffled.
        round_size: requests per round; each round is unlearned (and healed) before the next.
        n_users: regular users sending the benign requests.
        name_by: requests name samples by pool id or by content hash.
        heal: heal after every round: twins (twins.*) plus a fine-tune of heal_epochs on the heal set,
            at heal.lr.
        heal_epochs: fine-tuning epochs after each round when heal is on.
        seed: seed of the benign draws, the users and the shuffled order.
    """

    benign_ratio: float = 0.5
    order: Literal["interleaved", "adversary_first", "benign_first", "shuffled"] = "interleaved"
    round_size: int = 10
    n_users: int = 100
    name_by: Literal["id", "hash"] = "id"
    heal: bool = False
    heal_epochs: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.heal_epochs < 1:
            raise ValueError(f"stream.heal_epochs must be at least 1, got {self.heal_epochs}.")
        if not 0.0 <= self.benign_ratio < 1.0:
            raise ValueError(f"stream.benign_ratio must lie in [0, 1), got {self.benign_ratio}.")
        for name in ("round_size", "n_users"):
            if getattr(self, name) < 1:
                raise ValueError(f"stream.{name} must be at least 1, got {getattr(self, name)}.")


# --------------------------------------------------------------------------- tracking
@dataclass
class Tracking:
    """Weights & Biases settings (offline unless WANDB_MODE=online is set).

    Args:
        enabled: log to W&B (False: no logger, the results record is still written).
        project: W&B project.
        entity: W&B entity (team or user); None uses the default.
        group: W&B group, e.g. one group per experiment grid.
        job_type: W&B job type; None uses the subcommand (fit, unlearn, heal).
        tags: W&B tags.
        name: W&B run name; None uses the run folder's name.
    """

    enabled: bool = True
    project: str = "healing-pl"
    entity: str | None = None
    group: str | None = None
    job_type: str | None = None
    tags: list[str] = field(default_factory=list)
    name: str | None = None
