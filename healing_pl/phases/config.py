"""Every configuration dataclass of healing-pl, in one place.

LightningCLI reads each as a nested group (``--unlearn.*``, ``--adversary.*``,
``--twins.*``, ``--heal.*``, ``--stream.*``, ``--wandb.*``); the ``Args``
section of a class docstring is its ``--help`` text. Each checks itself on
construction (names against the registries, ranges), so a typo stops the
command with one sentence before anything runs or is written.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

from healing_pl.adversary.selectors import DATA_KNOWLEDGE, SELECTORS, SYSTEM_KNOWLEDGE
from healing_pl.healing.similarity import METRICS
from healing_pl.unlearning.methods import METHODS

TWIN_METRICS = ("none", *METRICS)


# --------------------------------------------------------------------------- unlearning
@dataclass
class UnlearnConfig:
    """How the forget set is unlearned.

    Args:
        method: naive (retrain from scratch: the gold standard), sisa, fisher, influence, finetune,
            neggrad_plus, scrub, salun or ssd.
        repeats: runs of a stochastic method (paper: 5); the representative model is the
            run whose validation accuracy is closest to the mean (ties: the first).
        seed: seed of the first repeat (repeat i uses seed + i).
        batch_r: batch size over the remain set (Fisher information, Hessian-vector products).
        batch_f: forget-set minibatch: influence removes the forget set in sequential
            minibatches of this size (the paper's batch_f).
        max_norm: clip the L2 norm of each update (None: no clip).
        alpha: Fisher noise strength; calibrate it per shaping (golatkar needs a smaller alpha
            than plain for the same drop; docs/conventions.md).
        fisher_kind: true (expectation over the model's predicted labels) or empirical Fisher.
        lam: damping of the Fisher Newton step (noise_only false): theta moves by
            (F_R + lam)^-1 (1/|R|) sum_F grad before the noise (the paper's lambda).
        noise_only: Fisher noise only (Golatkar's form for deep networks) or the diagonal Newton
            step plus noise (the form whose lam and batch_f the paper's Tables 2 and 6 list).
        shaping: Fisher noise variance: golatkar (Golatkar et al.'s published recipe: inverse
            Fisher clamped at 1e3, 1e2 for the classifier layer, averaged over each output
            row, x10 for the classifier layer and 1-D parameters) or plain
            (alpha * clamp(1/F, max=1e3), the earlier form).
        damping: LiSSA damping d (see damping_convention).
        damping_convention: additive (h <- v + h - (H + d I) h / s: inverts H + d I) or
            koh_liang (h <- v + (1 - d) h - H h / s as in Koh & Liang's code: inverts
            H + d s I, so the paper's d = 1e-6 at s = 1000 is an additive 1e-3).
        scale: LiSSA scale s: must exceed half the largest eigenvalue of the damped Hessian.
        depth: LiSSA recursion depth.
        lissa_repeats: LiSSA estimates averaged per inverse-Hessian-vector product.
        removal: how influence scales the forget gradient of each forget batch B (batch_f):
            mean (Koh & Liang: theta + (1/n) H^-1 sum_B grad, n the training set size),
            sum (theta + H^-1 sum_B grad, unscaled) or batch (theta + H^-1 mean_B grad after
            each batch, as public influence-unlearning code built on the paper's knobs does).
        shards: SISA shards.
        slices: SISA slices per shard.
        aggregation: SISA aggregation: majority vote or averaged softmax.
        sisa_shard: train only this SISA shard into the cache and stop (one job per shard on a
            cluster); a later run without it aggregates the cached shards.
        cache_dir: where gold standards, unlearned models and SISA shards are cached by
            content hash (None: no cache).
        sisa_epochs: SISA epochs per slice stage: passes (ceil(2N/(R+1)): a shard's samples get at least the
            baseline's N passes, Bourtoule et al. 2021), per_slice (round(N/R)) or a count.
        lr: Adam learning rate of finetune, neggrad_plus, scrub and salun (None: the baseline's).
        ft_epochs: finetune: epochs on the remain set.
        ng_alpha: neggrad_plus: weight alpha of the remain loss in alpha * L_R - (1 - alpha) * L_F.
        ng_epochs: neggrad_plus: epochs over the remain set.
        scrub_epochs: scrub: epochs (each a min-step pass over the remain set).
        scrub_msteps: scrub: the first epochs that also make a max-step pass over the forget set.
        scrub_alpha: scrub: weight of the KL to the teacher in the min-steps.
        scrub_gamma: scrub: weight of the cross-entropy in the min-steps.
        scrub_temperature: scrub: distillation temperature T.
        salun_ratio: salun: share of the weights (largest forget-loss gradients) that random labelling updates.
        salun_epochs: salun: epochs of random-label fine-tuning over the forget plus remain sets.
        ssd_lambda: ssd: dampening constant lambda (selected weights scale by min(lambda I_D / I_F, 1)).
        ssd_alpha: ssd: selection weighting alpha (weights with I_F > alpha I_D are dampened).
        mia: also run the loss-based membership inference on the forget set (baseline, gold standard, unlearned
            and healed models; evaluation only, seeded by unlearn.seed).
        on_collapse: stop (default: an unlearned model at chance-level validation accuracy stops the run with the
            knob to turn) or keep (record it and go on, e.g. to heal from a collapse as the paper's Table 5 does).
            Non-finite weights or logits always stop.
    """

    method: Literal["naive", "sisa", "fisher", "influence", "finetune", "neggrad_plus", "scrub", "salun", "ssd"] = (
        "fisher"
    )
    repeats: int = 1
    seed: int = 0
    batch_r: int = 512
    batch_f: int = 64
    max_norm: float | None = None
    alpha: float = 1e-6
    fisher_kind: Literal["true", "empirical"] = "true"
    lam: float = 1e-3
    noise_only: bool = True
    shaping: Literal["golatkar", "plain"] = "golatkar"
    damping: float = 0.01
    damping_convention: Literal["additive", "koh_liang"] = "additive"
    scale: float = 100.0
    depth: int = 100
    lissa_repeats: int = 1
    removal: Literal["mean", "sum", "batch"] = "mean"
    shards: int = 3
    slices: int = 5
    aggregation: Literal["vote", "softmax"] = "vote"
    sisa_shard: int | None = None
    cache_dir: str | None = "runs/cache"
    sisa_epochs: Literal["passes", "per_slice"] | int = "passes"
    lr: float | None = None
    ft_epochs: int = 2
    ng_alpha: float = 0.99
    ng_epochs: int = 2
    scrub_epochs: int = 3
    scrub_msteps: int = 2
    scrub_alpha: float = 0.001
    scrub_gamma: float = 0.99
    scrub_temperature: float = 4.0
    salun_ratio: float = 0.5
    salun_epochs: int = 2
    ssd_lambda: float = 1.0
    ssd_alpha: float = 10.0
    mia: bool = True
    on_collapse: Literal["stop", "keep"] = "stop"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown unlearning method '{self.method}'; choose one of {', '.join(METHODS)}.")
        if self.on_collapse not in ("stop", "keep"):
            raise ValueError(f"unlearn.on_collapse must be stop or keep, got '{self.on_collapse}'.")
        for name in ("repeats", "batch_r", "batch_f", "depth", "lissa_repeats", "shards", "slices"):
            if getattr(self, name) < 1:
                raise ValueError(f"unlearn.{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("alpha", "lam", "damping"):
            if getattr(self, name) < 0:
                raise ValueError(f"unlearn.{name} must be non-negative, got {getattr(self, name)}.")
        if self.scale <= 0:
            raise ValueError(f"unlearn.scale must be positive, got {self.scale}.")
        for name, choices in (
            ("shaping", ("golatkar", "plain")),
            ("damping_convention", ("additive", "koh_liang")),
            ("removal", ("mean", "sum", "batch")),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"unlearn.{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}.")
        if self.sisa_shard is not None and not 0 <= self.sisa_shard < self.shards:
            raise ValueError(f"unlearn.sisa_shard must lie in [0, {self.shards}), got {self.sisa_shard}.")
        self._check_modern()

    def _check_modern(self) -> None:
        """The knobs of finetune, neggrad_plus, scrub, salun and ssd."""
        for name in ("ft_epochs", "ng_epochs", "scrub_epochs", "salun_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"unlearn.{name} must be at least 1, got {getattr(self, name)}.")
        if not 0 <= self.scrub_msteps <= self.scrub_epochs:
            raise ValueError(
                f"unlearn.scrub_msteps must lie in [0, scrub_epochs={self.scrub_epochs}], got {self.scrub_msteps}."
            )
        for name in ("lr", "scrub_temperature", "ssd_lambda", "ssd_alpha"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"unlearn.{name} must be positive, got {value}.")
        for name in ("scrub_alpha", "scrub_gamma"):
            if getattr(self, name) < 0:
                raise ValueError(f"unlearn.{name} must be non-negative, got {getattr(self, name)}.")
        if not 0.0 <= self.ng_alpha <= 1.0:
            raise ValueError(f"unlearn.ng_alpha must lie in [0, 1], got {self.ng_alpha}.")
        if not 0.0 < self.salun_ratio <= 1.0:
            raise ValueError(f"unlearn.salun_ratio must lie in (0, 1], got {self.salun_ratio}.")

    def hyperparameters(self) -> dict:
        """The settings that matter for this method (for logs and cache keys)."""
        common = {"method", "repeats", "seed", "max_norm"}
        return {k: v for k, v in asdict(self).items() if k in common | set(METHODS[self.method].knobs)}


# --------------------------------------------------------------------------- adversary
@dataclass
class AdversaryConfig:
    """Who attacks, with what knowledge and how many unlearn requests.

    Args:
        selector: How the forget set is picked: random (blind), class
            (targeted, needs target_class), worst_logits (output-aware),
            gradient (parameter-aware), unlearning_aware (parameter-aware and
            knows the unlearn config: greedy by simulated unlearning on the
            validation split; fisher or influence) or blind_guess (blind to
            the training set).
        budget: Number of samples to unlearn: an int >= 1 is a count, a
            float in (0, 1] a fraction of the training set size (rounded to
            the nearest count).
        system_knowledge: Knowledge of the system: blind (no access),
            output_aware (can have samples classified) or parameter_aware
            (holds the model).
        data_knowledge: Knowledge of the training set: blind (does not know
            it), known, or chosen (could also add samples; selects like
            known).
        target_class: Class the 'class' selector takes its samples from.
        score: worst_logits ranking: margin (true-class logit minus the best
            other logit) or logit (the raw true-class logit); lowest first.
        gradient_mode: gradient ranking: grad_norm (per-sample loss gradient
            norm) or influence (predicted rise of the validation loss when
            the sample is removed, via LiSSA).
        member_fraction: blind_guess: fraction of its guesses that really are
            training samples; the rest are non-members.
        seed: Seed of every random choice the adversary makes.
        gradient_engine: Per-sample gradients with torch.func vmap or a
            plain loop (often faster for small CNNs on a few CPU cores).
        batch_size: Batch size for predictions and per-sample gradients.
        influence_damping: LiSSA damping d in (H + d I)^-1.
        influence_scale: LiSSA scale s; must exceed half the largest
            eigenvalue of H + d I.
        influence_depth: LiSSA recursion depth.
        influence_repeats: LiSSA repeats averaged.
        aware_pool: unlearning_aware: candidates the greedy search considers
            (the ranking's top ones); None: 3 x budget.
        aware_block: unlearning_aware: candidates added per greedy step (1:
            plain greedy); None: budget / 5 rounded up, five steps.
        aware_ranking: unlearning_aware: the ranking that fills the pool,
            worst_logits (margins) or gradient (gradient_mode scores).
    """

    selector: str = "random"
    budget: int | float = 25
    system_knowledge: Literal["blind", "output_aware", "parameter_aware"] = "blind"
    data_knowledge: Literal["blind", "known", "chosen"] = "known"
    target_class: int | None = None
    score: Literal["margin", "logit"] = "margin"
    gradient_mode: Literal["grad_norm", "influence"] = "grad_norm"
    member_fraction: float = 0.5
    seed: int = 0
    gradient_engine: Literal["vmap", "loop"] = "vmap"
    batch_size: int = 256
    influence_damping: float = 0.01
    influence_scale: float = 25.0
    influence_depth: int = 200
    influence_repeats: int = 1
    aware_pool: int | None = None
    aware_block: int | None = None
    aware_ranking: Literal["worst_logits", "gradient"] = "worst_logits"

    def __post_init__(self) -> None:
        self._check_choice("selector", self.selector, tuple(SELECTORS))
        self._check_choice("system_knowledge", self.system_knowledge, SYSTEM_KNOWLEDGE)
        self._check_choice("data_knowledge", self.data_knowledge, DATA_KNOWLEDGE)
        self._check_choice("score", self.score, ("margin", "logit"))
        self._check_choice("gradient_mode", self.gradient_mode, ("grad_norm", "influence"))
        self._check_choice("gradient_engine", self.gradient_engine, ("vmap", "loop"))
        self._check_choice("aware_ranking", self.aware_ranking, ("worst_logits", "gradient"))
        for name in ("aware_pool", "aware_block"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"adversary.{name} must be a whole number of samples >= 1 (or None), got {value!r}.")

        budget = self.budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise ValueError(f"The budget must be a count or a fraction, got {budget!r}.")
        if isinstance(budget, int) and budget < 1:
            raise ValueError(f"The budget must be at least 1 sample, got {budget}.")
        if isinstance(budget, float) and not 0.0 < budget <= 1.0:
            raise ValueError(f"A fractional budget must lie in (0, 1], got {budget}; use an int for a count.")
        if not 0.0 <= self.member_fraction <= 1.0:
            raise ValueError(f"member_fraction must lie in [0, 1], got {self.member_fraction}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}.")

        needs = SELECTORS[self.selector]
        if SYSTEM_KNOWLEDGE.index(self.system_knowledge) < SYSTEM_KNOWLEDGE.index(needs.system_knowledge):
            raise ValueError(
                f"Selector {self.selector!r} needs system_knowledge {needs.system_knowledge!r} "
                f"or more, but {self.system_knowledge!r} was granted."
            )
        if DATA_KNOWLEDGE.index(self.data_knowledge) < DATA_KNOWLEDGE.index(needs.data_knowledge):
            raise ValueError(
                f"Selector {self.selector!r} needs data_knowledge {needs.data_knowledge!r} "
                f"or more, but {self.data_knowledge!r} was granted."
            )
        if self.selector == "blind_guess" and self.data_knowledge != "blind":
            raise ValueError(
                "Selector 'blind_guess' models an adversary that does not know the training "
                "set, so it needs data_knowledge='blind'."
            )
        if self.selector == "class" and self.target_class is None:
            raise ValueError("Selector 'class' needs a target_class.")

    @staticmethod
    def _check_choice(field: str, value, choices) -> None:
        if value not in choices:
            raise ValueError(f"Unknown {field} {value!r}; expected one of {', '.join(choices)}.")

    def resolve_budget(self, n_train: int) -> int:
        """The budget as a count of samples for a training set of ``n_train``."""
        if isinstance(self.budget, float):
            count = int(math.floor(self.budget * n_train + 0.5))
            if count < 1:
                raise ValueError(f"A budget of {self.budget} of {n_train} training samples is less than 1 sample.")
        else:
            count = int(self.budget)
        if count > n_train:
            raise ValueError(f"The budget ({count} samples) exceeds the training set ({n_train} samples).")
        return count

    def validate(self, n_train: int, num_classes: int) -> int:
        """Check the config against the data; return the budget as a count."""
        if self.target_class is not None and not 0 <= self.target_class < num_classes:
            raise ValueError(f"target_class {self.target_class} is outside [0, {num_classes}), the task's classes.")
        budget = self.resolve_budget(n_train)
        if self.selector == "unlearning_aware" and self.aware_pool is not None and self.aware_pool < budget:
            raise ValueError(f"adversary.aware_pool ({self.aware_pool}) must be at least the budget ({budget}).")
        return budget


# --------------------------------------------------------------------------- twins and healing
@dataclass
class TwinsConfig:
    """How twins replace the unlearned samples.

    Args:
        metric: none (heal on the remain set R alone), raw_l2, raw_mahalanobis (pixels),
            feat_cosine, feat_mahalanobis (baseline embeddings) or random (the control).
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

    metric: Literal["none", "raw_l2", "raw_mahalanobis", "feat_cosine", "feat_mahalanobis", "random"] = "feat_cosine"
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
        if self.metric not in TWIN_METRICS:
            raise ValueError(f"unknown twin metric '{self.metric}'; choose one of {', '.join(TWIN_METRICS)}.")
        if self.k < 1:
            raise ValueError(f"twins.k must be at least 1, got {self.k}.")

    @property
    def setup(self) -> str:
        """The heal-set label used in tables: R, or T-<metric>."""
        return "R" if self.metric == "none" else f"T-{self.metric}"


@dataclass
class HealConfig:
    """The healing fine-tune.

    Args:
        epochs: fine-tuning epochs (at least 1); None: the paper's N/2 of the baseline's N epochs,
            rounded up (ceil(N/2): N = 10, 5, 3 give 5, 3, 2).
        lr: Adam learning rate of the fine-tune; None: the baseline's.
        gold: also train (or load from the cache) the gold standard, to report Best-GS.
    """

    epochs: int | None = None
    lr: float | None = None
    gold: bool = True

    def __post_init__(self):
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"heal.epochs must be at least 1, got {self.epochs}.")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"heal.lr must be positive, got {self.lr}.")

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
