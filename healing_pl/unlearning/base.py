"""The unlearning method family: the base class, its registry, repeats and the divergence guard.

Every method is a registered subclass of :class:`Unlearner` in a module of its own; its constructor
arguments are its knobs, which the CLI offers as ``--unlearn <Class> --unlearn.<knob> value`` (and
``--unlearn.help <Class>`` lists them). A method implements :meth:`Unlearner.run`, which returns a new
model (a :class:`~healing_pl.models.classifier.Classifier`, or for SISA its shard ensemble) and leaves
the input untouched. A new method is one new module plus its tests (``healing_pl/unlearning/__init__.py``
imports every module of the package); nothing else names it.

Knobs every method has (the base class): ``seed``, ``cache_dir``, ``mia`` and ``on_collapse``; a
stochastic method (:class:`StochasticUnlearner`) also has ``repeats``.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

import torch
from torch import nn

from healing_pl.console import announce_repeat
from healing_pl.models.classifier import evaluate
from healing_pl.registry import Knobs, Registry

#: every registered unlearning method, by record name
UNLEARNERS: Registry = Registry("unlearning method", "--unlearn")

#: knobs of the base class that do not change the unlearned model (left out of cache keys and identities)
RUN_KNOBS = ("cache_dir", "mia", "on_collapse")


@dataclass
class Context:
    """What a method may use besides its knobs: the baseline's recipe and where to compute.

    Attributes:
        epochs: the baseline's epochs N (retraining methods repeat the recipe).
        seed: the baseline's seed.
        trainer: keyword arguments of a Lightning Trainer for inner trainings (gold standard,
            fine-tunes): the outer trainer's accelerator, device and precision.
        progress: show progress bars.
    """

    epochs: int = 10
    seed: int = 0
    trainer: dict = field(default_factory=lambda: {"accelerator": "cpu", "devices": 1})
    progress: bool = False
    shared: SharedStart | None = None  # set by unlearn_with_repeats for the repeats of one start


class SharedStart:
    """What the repeats of one start compute alike, computed once: within :func:`unlearn_with_repeats` the model
    and the forget set are fixed and only the seed changes, so a method may share a seed-free part (the Fisher
    of the remain set) among its repeats. Every repeat that reuses a value is charged the seconds it took
    (``reused_seconds``), so each repeat's time stays the cost of one unlearning."""

    def __init__(self):
        self._values: dict = {}
        self.reused_seconds = 0.0

    def get(self, key, compute):
        """``compute()``, or the value a previous repeat computed under ``key``."""
        if key in self._values:
            value, seconds = self._values[key]
            self.reused_seconds += seconds
            return value
        start = time.perf_counter()
        value = compute()
        self._values[key] = (value, time.perf_counter() - start)
        return value


class Unlearner(Knobs, ABC):
    """An unlearning method (abstract: pick a registered subclass with ``--unlearn <Class>``)."""

    #: record name of the method (``unlearn/method`` in results.json, cache keys, reports)
    name: ClassVar[str]
    #: how tables and figures name the method
    label: ClassVar[str]
    #: repeated ``repeats`` times with seeds seed, seed+1, ... (see :class:`StochasticUnlearner`)
    stochastic: ClassVar[bool] = False
    #: its result can be cached as a Classifier state dict
    cacheable: ClassVar[bool] = True
    #: keeps its own shard ensemble (no single model to fine-tune; heals its shards)
    ensemble: ClassVar[bool] = False
    #: the unlearning-aware adversary can simulate it once per candidate (it does not retrain)
    simulable: ClassVar[bool] = False
    #: the knobs ``healing-pl calibrate`` can tune: knob -> (unlearns harder when larger, search low, search high)
    strengths: ClassVar[dict[str, tuple[bool, float, float]]] = {}

    def __init__(
        self,
        *,
        seed: int = 0,
        cache_dir: str | None = "runs/cache",
        mia: bool = True,
        on_collapse: Literal["stop", "keep"] = "stop",
    ):
        """
        Args:
            seed: seed of the method (of its first repeat when it is stochastic; repeat i uses seed + i);
                also seeds the membership attack.
            cache_dir: where gold standards, unlearned models and SISA shards are cached by content hash
                (None: no cache).
            mia: also run the loss-based membership inference on the forget set (baseline, gold standard,
                unlearned and healed models; evaluation only).
            on_collapse: stop (an unlearned model at chance-level validation accuracy stops the run with
                the knob to turn) or keep (record it and go on, e.g. to heal from a collapse as the paper's
                Table 5 does). Non-finite weights or logits always stop.
        """
        UNLEARNERS.check(self)
        if on_collapse not in ("stop", "keep"):
            raise ValueError(f"unlearn.on_collapse must be stop or keep, got '{on_collapse}'.")
        self.seed = seed
        self.cache_dir = cache_dir
        self.mia = mia
        self.on_collapse = on_collapse

    # ----------------------------------------------------------------- the method
    @abstractmethod
    def run(self, model: nn.Module, datamodule, forget_ids: torch.Tensor, context: Context, seed: int):
        """Unlearn ``forget_ids`` from a copy of ``model``; return ``(model, info)`` (info: what to report)."""

    def divergence_hint(self) -> str:
        """Which knobs to turn, and which way, when the method diverges (default: all of its knobs)."""
        return "turn " + ", ".join(f"--unlearn.{k}" for k in self.knobs() if k not in ("seed", *RUN_KNOBS))

    # ----------------------------------------------------------------- knobs
    @property
    def method(self) -> str:
        """The record name (``unlearn/method``)."""
        return self.name

    def replace(self, **changes) -> Unlearner:
        """A new method of the same class with ``changes`` to its knobs."""
        return type(self)(**{**self.knobs(), **changes})

    def hyperparameters(self) -> dict:
        """The settings that determine the unlearned model (for records and cache keys): ``method`` and the
        knobs, without those that only change how the run is kept (cache, MIA, collapse handling)."""
        return {"method": self.name, **{k: v for k, v in self.knobs().items() if k not in RUN_KNOBS}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.knobs().items())})"

    # ----------------------------------------------------------------- checks for subclasses
    @staticmethod
    def _at_least(values: dict, low: float) -> None:
        for name, value in values.items():
            if value < low:
                raise ValueError(f"unlearn.{name} must be at least {low:g}, got {value}.")

    @staticmethod
    def _one_of(name: str, value, choices) -> None:
        if isinstance(value, bool) or value not in choices:
            raise ValueError(f"unlearn.{name} must be one of {', '.join(map(str, choices))}, got {value!r}.")

    @staticmethod
    def _positive(values: dict) -> None:
        for name, value in values.items():
            if value is not None and not value > 0:
                raise ValueError(f"unlearn.{name} must be positive, got {value}.")

    @staticmethod
    def _non_negative(values: dict) -> None:
        for name, value in values.items():
            if value < 0:
                raise ValueError(f"unlearn.{name} must be non-negative, got {value}.")


class StochasticUnlearner(Unlearner):
    """A method whose result depends on its seed: run ``repeats`` times, keep the representative run."""

    stochastic = True

    def __init__(self, *, repeats: int = 1, **kwargs):
        """
        Args:
            repeats: runs of the method (the paper: 5); the representative model is the run whose
                validation accuracy is closest to the mean (ties: the first).
        """
        super().__init__(**kwargs)
        self._at_least({"repeats": repeats}, 1)
        self.repeats = repeats


def make_unlearner(method: str, **knobs) -> Unlearner:
    """The registered method ``method`` (its record name) with ``knobs``."""
    return UNLEARNERS[method](**knobs)


#: Validation accuracy at most this far above chance (1 / classes) counts as diverged.
CHANCE_MARGIN = 0.02


def _validation(model, dm) -> tuple[bool, float]:
    """Whether every validation logit is finite, and the validation accuracy (without a val split: over the
    primary set, the training data; the test set never decides anything)."""
    loader = dm.val_dataloader() if dm.splits["val"].numel() else dm.loader(dm.primary_ids)
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    correct, n, finite = 0, 0, True
    with torch.no_grad():
        for x, y in loader:
            logits = model(x.to(device=param.device, dtype=param.dtype))
            finite = finite and bool(torch.isfinite(logits).all())
            correct += int((logits.argmax(1) == y.to(param.device)).sum())
            n += len(y)
    model.train(was_training)
    return finite, correct / max(n, 1)


def check_divergence(out: nn.Module, model: nn.Module, dm, method: Unlearner) -> None:
    """Raise FloatingPointError, naming the knob to turn, when the method left ``out`` with non-finite weights,
    non-finite validation logits or chance-level validation accuracy (``model``, the input, above chance)."""
    why, collapsed = None, False
    if not all(bool(torch.isfinite(p).all()) for p in out.parameters()):
        why = "its weights are not finite"
    else:
        finite, acc = _validation(out, dm)
        chance = 1.0 / dm.num_classes + CHANCE_MARGIN
        if not finite:
            why = "its validation logits are not finite"
        elif acc <= chance and _validation(model, dm)[1] > chance:  # a baseline at chance is not a divergence
            why, collapsed = f"its validation accuracy {acc:.4f} is at chance level", True
    if why is None:
        return
    if collapsed and method.on_collapse == "keep":  # finite, only at chance: keep it if asked
        print(f"{method.name} unlearning collapsed ({why}); kept, as --unlearn.on_collapse keep asks.", file=sys.stderr)
        return
    raise FloatingPointError(f"{method.name} unlearning diverged ({why}): {method.divergence_hint()}.")


@dataclass
class UnlearnResult:
    model: nn.Module  # the representative model
    accs: list[float]  # test accuracy of every repeat (reported, never used to choose)
    times: list[float]  # wall time of every repeat (a part the repeats share, see SharedStart, counted in each)
    representative: int  # index of the representative repeat (chosen on validation accuracy)
    info: dict = field(default_factory=dict)  # what the method reports (e.g. SISA's retrained shards)
    val_accs: list[float] = field(default_factory=list)  # validation accuracy of every repeat

    @property
    def summary(self) -> dict:
        val = self.val_accs
        return {
            "acc_mean": statistics.fmean(self.accs),
            "acc_std": statistics.stdev(self.accs) if len(self.accs) > 1 else 0.0,
            "time_mean_s": statistics.fmean(self.times),
            "representative": self.representative,
            "acc_repeats": list(self.accs),
            "val_acc_mean": statistics.fmean(val) if val else None,
            "val_acc_std": (statistics.stdev(val) if len(val) > 1 else 0.0) if val else None,
            "val_acc_repeats": list(val),
        }


def representative_repeat(val_accs: list[float]) -> int:
    """The repeat whose validation accuracy is closest to the mean over repeats (ties: the lowest index)."""
    if not val_accs:
        raise ValueError("choosing the representative repeat needs at least one validation accuracy.")
    mean = statistics.fmean(val_accs)
    return min(range(len(val_accs)), key=lambda i: (abs(val_accs[i] - mean), i))


def unlearn_with_repeats(
    model, dm, forget_ids, method: Unlearner, context: Context | None = None, *, test_loader=None
) -> UnlearnResult:
    """Run ``method`` (``method.repeats`` times when stochastic); keep the run whose validation accuracy is
    closest to the mean validation accuracy over repeats (the paper's "closest to the mean"; ties: the first).

    Every repeat is also tested (on ``test_loader``, default the test set) for the report, but the test
    accuracy never decides which repeat is kept. Several repeats need a validation split (``--data.val``).
    """
    context = context or Context()
    forget_ids = dm.check_members(forget_ids)
    dm.remain_ids(forget_ids)  # validates: not the whole primary set
    repeats = method.repeats if method.stochastic else 1
    has_val = bool(dm.splits["val"].numel())
    if repeats > 1 and not has_val:
        raise ValueError(
            f"choosing the representative of {repeats} {method.name} repeats needs a validation split, but "
            "data.val is 0; set --data.val above 0 or --unlearn.repeats 1."
        )
    test_loader = test_loader or dm.test_dataloader()
    context = replace(context, shared=SharedStart())
    models, accs, val_accs, times, infos = [], [], [], [], []
    for i in range(repeats):
        announce_repeat(i + 1, repeats, method.name, context.progress)
        start, context.shared.reused_seconds = time.perf_counter(), 0.0
        out, info = method.run(model, dm, forget_ids, context, method.seed + i)
        times.append(time.perf_counter() - start + context.shared.reused_seconds)
        check_divergence(out, model, dm, method)  # before anything keeps or caches the model
        if has_val:
            val_accs.append(evaluate(out, dm.val_dataloader())["acc"])
        accs.append(evaluate(out, test_loader)["acc"])
        models.append(out)
        infos.append(info)
    best = representative_repeat(val_accs) if val_accs else 0
    return UnlearnResult(models[best], accs, times, best, infos[best], val_accs)


def copy_model(model: nn.Module) -> nn.Module:
    """A detached copy of ``model`` on the same device and dtype."""
    with torch.no_grad():
        return copy.deepcopy(model)


def learning_rate(lr: float | None, model) -> float:
    """``lr``, or the model's own learning rate (the baseline's) when ``lr`` is None."""
    return lr if lr is not None else float(model.hparams.lr)
