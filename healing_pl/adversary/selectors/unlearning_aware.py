"""The unlearning-aware adversary: greedy by simulated unlearning."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from healing_pl.adversary.selectors.base import SELECTORS, Selector, check_choice
from healing_pl.adversary.selectors.gradient import ENGINES, MODES, GradientSelector, check_lissa
from healing_pl.adversary.selectors.surface import AttackSurface, GlassBox, _as_ids, _stack_samples
from healing_pl.adversary.selectors.worst_logits import SCORES, WorstLogitsSelector
from healing_pl.gradients.params import to_model

#: the ranking selectors that can fill the candidate pool
RANKINGS = ("worst_logits", "gradient")


@SELECTORS.register
class UnlearningAwareSelector(Selector):
    """Parameter-aware and unlearning-aware: the samples whose unlearning hurts the model most.

    The adversary holds the weights *and* knows how requests are unlearned: the method and its
    hyperparameters (:attr:`GlassBox.unlearn`, built from the deployed unlearning method). It simulates the
    unlearning on its own copy of the model and picks greedily:

    1. **Candidate pool**: the top ``pool`` candidates of a cheaper ranking selector (``worst_logits``
       margins or ``gradient`` scores), ``3 * budget`` by default.
    2. **Greedy by simulated unlearning**: starting from the empty set S, every remaining pool candidate c
       is scored by unlearning S + {c} with the real method on a copy of the model and measuring the copy on
       the proxy set; the ``block`` most damaging candidates join S, and this repeats until S holds
       ``budget`` samples (``block = 1`` is the plain greedy; a larger block trades accuracy for speed).
       Damage is ranked by proxy accuracy (lower first), then proxy cross-entropy (higher first), then the
       pool's own rank.
    3. **Never worse than its ranking**: the pool ranking's own top ``budget`` is simulated too, and
       returned instead when it is strictly more damaging than the greedy set.

    The proxy set is the **validation split** (``glass_box.val_ids``).  It is data the adversary may know:
    the project's parameter-aware adversary already gets it (the ``gradient`` selector's influence mode
    needs it), it is held out like the test set, so damage measured there is damage the owner will see,
    and it is disjoint from the test set, so the attack never looks at the number that is reported.  A
    held-out part of the primary set was the alternative; but it was trained on (its accuracy measures
    memorisation, not what the owner sees) and holding it out would shrink the set the adversary may name.

    A stochastic method (Fisher noise, LiSSA sampling) is simulated with one fixed seed for every
    candidate (common random numbers): two candidate sets differ only in what they remove, not in the
    noise draw.  Each simulation unlearns a sorted copy of the ids, so the objective is a function of the
    set alone.

    Cost: at most ``sum_{s < S} (pool - s * block) + 2`` simulated unlearnings with ``S = ceil(budget / block)``
    steps; with the defaults (``pool = 3 * budget``, ``block = ceil(budget / 5)``) that is
    about ``13 * budget + 2`` (327 for a budget of 25), each one run of the method plus one pass over the
    validation split.  Measured on mnist5k (a 3,500-sample primary set, 500 validation samples,
    ``small_cnn``, one CPU thread of a busy 2-core machine): one simulation takes 1.6 s with the
    empirical Fisher and 15 s with the true Fisher, so the default search for a budget of 25 takes about
    9 and 80 minutes; ``block = budget`` (one step: ``pool + 2`` simulations, 77) cuts that to 2 and
    19 minutes.  The selection is returned in order of addition (most damaging block first).

    The ranking selector is built from this adversary's own budget, knowledge, seed and batch size, and
    the ranking's knobs below (``score`` for worst_logits; ``mode``, ``engine`` and the LiSSA knobs for
    gradient).
    """

    name = "unlearning_aware"
    label = "unlearning-aware"
    needs_system = "parameter_aware"
    needs_data = "known"
    simulates_unlearning = True

    def __init__(
        self,
        ranking: Literal["worst_logits", "gradient"] = "worst_logits",
        pool: int | None = None,
        block: int | None = None,
        score: Literal["margin", "logit"] = "margin",
        mode: Literal["grad_norm", "influence"] = "grad_norm",
        engine: Literal["vmap", "loop"] = "vmap",
        damping: float = 0.01,
        scale: float = 25.0,
        depth: int = 200,
        lissa_repeats: int = 1,
        **kwargs,
    ):
        """
        Args:
            ranking: The ranking that fills the pool: worst_logits (margins) or gradient (mode scores).
            pool: Candidates the greedy search considers (the ranking's top ones); None: 3 x budget.
            block: Candidates added per greedy step (1: plain greedy); None: budget / 5 rounded up, five
                steps.
            score: worst_logits ranking: margin or logit (see WorstLogitsSelector).
            mode: gradient ranking: grad_norm or influence (see GradientSelector).
            engine: gradient ranking: per-sample gradients with torch.func vmap or a plain loop.
            damping: gradient ranking, influence: LiSSA damping d in (H + d I)^-1.
            scale: gradient ranking, influence: LiSSA scale s.
            depth: gradient ranking, influence: LiSSA recursion depth.
            lissa_repeats: gradient ranking, influence: LiSSA repeats averaged.
        """
        super().__init__(**kwargs)
        check_choice("ranking", ranking, RANKINGS)
        check_choice("score", score, SCORES)
        check_choice("mode", mode, MODES)
        check_choice("engine", engine, ENGINES)
        check_lissa(damping, scale, depth, lissa_repeats)
        for knob, value in (("pool", pool), ("block", block)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"adversary.{knob} must be a whole number of samples >= 1 (or None), got {value!r}.")
        self.ranking, self.pool, self.block, self.score = ranking, pool, block, score
        self.mode, self.engine, self.damping, self.scale = mode, engine, damping, scale
        self.depth, self.lissa_repeats = depth, lissa_repeats
        common = {
            "budget": self.budget,
            "system_knowledge": self.system_knowledge,
            "data_knowledge": self.data_knowledge,
            "seed": self.seed,
            "batch_size": self.batch_size,
        }
        lissa = {"damping": damping, "scale": scale, "depth": depth, "lissa_repeats": lissa_repeats}
        #: the selector that fills the candidate pool
        self.ranker: Selector = (
            WorstLogitsSelector(score=score, **common)
            if ranking == "worst_logits"
            else GradientSelector(mode=mode, engine=engine, **lissa, **common)
        )

    def validate(self, n_train: int, num_classes: int) -> int:
        budget = super().validate(n_train, num_classes)
        if self.pool is not None and self.pool < budget:
            raise ValueError(f"adversary.pool ({self.pool}) must be at least the budget ({budget}).")
        return budget

    def pool_size(self, budget: int, candidates: int) -> int:
        """The candidate pool's size for ``budget`` (at most the candidates there are)."""
        size = self.pool if self.pool is not None else 3 * budget
        if size < budget:
            raise ValueError(f"The unlearning_aware pool ({size} candidates) is smaller than the budget ({budget}).")
        return min(size, candidates)

    def block_size(self, budget: int) -> int:
        """Candidates added per greedy step: ``block``, or a fifth of the budget rounded up."""
        return min(self.block if self.block is not None else math.ceil(budget / 5), budget)

    def damage(self, surface: AttackSurface, ids) -> tuple[int, float]:
        """The simulated objective for forgetting ``ids``: (correct proxy predictions, proxy cross-entropy).

        Fewer correct predictions is more damage; among equals, a higher loss.
        """
        box = self._box(surface)
        return self._damage(box, self._proxy(box), _as_ids(ids, "ids"))

    def _box(self, surface: AttackSurface) -> GlassBox:
        box = surface.glass_box
        if box is None or box.unlearn is None:
            raise ValueError(
                "Selector 'unlearning_aware' needs the unlearning method to simulate (the unlearn config); "
                "the adversary was given none."
            )
        if box.val_ids is None or len(box.val_ids) == 0:
            raise ValueError(
                "Selector 'unlearning_aware' measures damage on the validation split, which is empty; "
                "set data.val above 0."
            )
        return box

    def _proxy(self, box: GlassBox) -> list[tuple[Tensor, Tensor]]:
        """The validation samples in batches (CPU); moved to each simulated model's device when used."""
        return [
            _stack_samples(box.dataset, box.val_ids[start : start + self.batch_size])
            for start in range(0, len(box.val_ids), self.batch_size)
        ]

    def _damage(self, box: GlassBox, proxy, ids: Tensor) -> tuple[int, float]:
        model = box.unlearn(torch.sort(ids).values)
        was_training = model.training
        model.eval()
        correct, loss = 0, 0.0
        try:
            with torch.no_grad():
                for x, y in proxy:
                    xs, ys = to_model((x, y), model)
                    logits = model(xs).float()
                    correct += int((logits.argmax(1) == ys).sum())
                    loss += float(F.cross_entropy(logits, ys, reduction="sum"))
        finally:
            model.train(was_training)
        loss = loss / len(box.val_ids)
        return correct, (loss if math.isfinite(loss) else math.inf)

    def _choose(self, surface, budget):
        box = self._box(surface)
        size = self.pool_size(budget, len(surface.candidate_ids))
        self.ranker.progress = self.progress
        ranked = self.ranker.select(surface, size)  # most promising first
        if size == budget:
            return ranked
        block = self.block_size(budget)
        steps = math.ceil(budget / block)
        total = sum(size - s * block for s in range(steps)) + 2
        proxy = self._proxy(box)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="unlearning-aware greedy (simulated unlearnings)", leave=False)

        seen: dict[tuple[int, ...], tuple[int, float]] = {}

        def key(ids: Tensor) -> tuple[int, float]:
            name = tuple(sorted(ids.tolist()))
            if name not in seen:
                correct, loss = self._damage(box, proxy, ids)
                seen[name] = (correct, -loss)
                if bar is not None:
                    bar.update(1)
            return seen[name]

        chosen: list[int] = []
        remaining = list(range(size))  # positions in ``ranked``
        try:
            while len(chosen) < budget:
                base = ranked[chosen]
                scored = sorted(
                    (key(torch.cat([base, ranked[r : r + 1]])), r) for r in remaining
                )  # ties: the pool's rank
                add = [r for _, r in scored[: min(block, budget - len(chosen))]]
                chosen += add
                remaining = [r for r in remaining if r not in add]
            greedy = ranked[chosen]
            top = ranked[:budget]
            if set(greedy.tolist()) != set(top.tolist()) and key(top) < key(greedy):
                return top
            return greedy
        finally:
            if bar is not None:
                bar.close()
