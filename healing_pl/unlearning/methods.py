"""The unlearning methods behind one interface, a registry by name, and repeats.

Every method is a :class:`Method`: a function ``run(model, datamodule,
forget_ids, cfg, context, seed) -> (model, info)`` that returns a new model
(a :class:`~healing_pl.models.classifier.Classifier`, or for SISA its shard
ensemble) and leaves the input untouched, plus the names of the config knobs
it reads. A config names the method by string (``--unlearn.method fisher``);
a new method is one module plus one line in :data:`METHODS`.

``cfg`` is the ``unlearn`` config (:class:`healing_pl.phases.config.UnlearnConfig`);
this module reads its attributes and never imports it.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from healing_pl.codehash import MODEL_CODE, code_version
from healing_pl.models.classifier import evaluate
from healing_pl.tracking import announce_repeat


@dataclass
class Context:
    """What a method may use besides its config: the baseline's recipe and where to compute.

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


@dataclass(frozen=True)
class Method:
    """One unlearning method: its function, the config knobs it reads, and how it is repeated."""

    name: str
    run: Callable
    knobs: tuple[str, ...] = ()
    stochastic: bool = False  # repeated ``cfg.repeats`` times with seeds seed, seed+1, ...
    cacheable: bool = True  # its result can be cached as a Classifier state dict
    ensemble: bool = False  # keeps its own shard ensemble (no single model to fine-tune; heals its shards)


def _loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def _fisher(model, dm, forget_ids, cfg, context: Context, seed: int):
    from healing_pl.unlearning.fisher import fisher_forget

    remain = dm.remain_ids(forget_ids)
    return fisher_forget(
        model,
        dm.loader(remain, batch_size=cfg.batch_r),
        dm.loader(forget_ids, batch_size=cfg.batch_f),
        alpha=cfg.alpha,
        kind=cfg.fisher_kind,
        lam=cfg.lam,
        noise_only=cfg.noise_only,
        shaping=cfg.shaping,
        num_classes=dm.num_classes,
        max_norm=cfg.max_norm,
        seed=seed,
        progress=context.progress,
    ), {}


def _influence(model, dm, forget_ids, cfg, context: Context, seed: int):
    from healing_pl.unlearning.influence import influence_unlearn

    remain = dm.remain_ids(forget_ids)
    # the Hessian batches are drawn in a seeded shuffled order: repeats differ, reruns do not
    return influence_unlearn(
        model,
        _loss,
        dm.loader(remain, shuffle=True, batch_size=cfg.batch_r, seed=seed),
        dm.loader(forget_ids, batch_size=cfg.batch_f),
        n_train=len(dm.primary_ids),
        damping=cfg.damping,
        scale=cfg.scale,
        depth=cfg.depth,
        repeats=cfg.lissa_repeats,
        max_norm=cfg.max_norm,
        removal=cfg.removal,
        damping_convention=cfg.damping_convention,
        progress=context.progress,
    ), {}


def _naive(model, dm, forget_ids, cfg, context: Context, seed: int):
    from healing_pl.unlearning.naive import gold_standard, model_hparams

    # the gold standard repeats the baseline's recipe (its seed), whatever the repeat seed
    gold, info = gold_standard(
        model_hparams(model),
        dm,
        forget_ids,
        epochs=context.epochs,
        seed=context.seed,
        cache_dir=cfg.cache_dir,
        trainer=context.trainer,
        progress=context.progress,
    )
    return gold, {"gold_cached": info["cached"]}


def sisa_directory(model, dm, cfg, context: Context) -> str | None:
    """The cache folder of a SISA ensemble: a content hash of everything that determines its shards."""
    if not cfg.cache_dir:
        return None
    import hashlib
    import json
    import os

    from healing_pl.unlearning.naive import model_hparams
    from healing_pl.unlearning.sisa import slice_epochs

    content = {
        "hparams": model_hparams(model),
        "primary": hashlib.sha256(dm.primary_ids.numpy().tobytes()).hexdigest(),
        "shards": cfg.shards,
        "slices": cfg.slices,
        "epochs": context.epochs,
        "epochs_per_slice": slice_epochs(context.epochs, cfg.slices, cfg.sisa_epochs),
        "seed": context.seed,
        "batch_size": dm.hparams.batch_size,
        "dtype": str(next(model.parameters()).dtype),
        "code": code_version("healing_pl.unlearning.sisa", *MODEL_CODE),
    }
    key = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return os.path.join(cfg.cache_dir, f"sisa-{key}")


def _sisa(model, dm, forget_ids, cfg, context: Context, seed: int):
    """Train (or load the cached shards of) the ensemble on the primary set, then unlearn exactly.

    The returned ensemble carries its state (``sisa_state``) so that healing can fine-tune its shards.
    """
    from healing_pl.unlearning.naive import model_hparams
    from healing_pl.unlearning.sisa import train_sisa, unlearn_sisa

    param = next(model.parameters())
    state = train_sisa(
        model_hparams(model),
        dm,
        shards=cfg.shards,
        slices=cfg.slices,
        epochs=context.epochs,
        epochs_per_slice=cfg.sisa_epochs,
        seed=context.seed,
        aggregation=cfg.aggregation,
        device=param.device,
        dtype=param.dtype,
        directory=sisa_directory(model, dm, cfg, context),
        progress=context.progress,
    )
    trained = evaluate(state.ensemble, dm.test_dataloader())["acc"]
    new_state, info = unlearn_sisa(state, forget_ids, dm, progress=context.progress)
    report = {
        "test/acc": trained,
        "train_time_s": state.train_time,
        "epochs_per_slice": state.epochs_per_slice,
        **{f"unlearn_{k}": v for k, v in info.items() if isinstance(v, (int, float, list, dict, str))},
    }
    ensemble = new_state.ensemble
    ensemble.sisa_state = new_state
    return ensemble, report


def _lr(model, cfg) -> float:
    """``cfg.lr``, or the baseline's learning rate."""
    return cfg.lr if cfg.lr is not None else float(model.hparams.lr)


def _finetune(model, dm, forget_ids, cfg, context: Context, seed: int):
    from healing_pl.unlearning.finetune import finetune

    out = finetune(
        model, dm, forget_ids, epochs=cfg.ft_epochs, lr=cfg.lr, trainer=context.trainer, progress=context.progress
    )
    return out, {}


def _neggrad_plus(model, dm, forget_ids, cfg, context: Context, seed: int):
    from healing_pl.unlearning.neggrad_plus import neggrad_plus

    out = neggrad_plus(model, dm, forget_ids, lr=_lr(model, cfg), alpha=cfg.ng_alpha, epochs=cfg.ng_epochs, seed=seed)
    return out, {}


def _scrub(model, dm, forget_ids, cfg, context: Context, seed: int):
    from healing_pl.unlearning.scrub import scrub

    out = scrub(
        model,
        dm,
        forget_ids,
        lr=_lr(model, cfg),
        epochs=cfg.scrub_epochs,
        msteps=cfg.scrub_msteps,
        alpha=cfg.scrub_alpha,
        gamma=cfg.scrub_gamma,
        temperature=cfg.scrub_temperature,
        seed=seed,
    )
    return out, {}


def _salun(model, dm, forget_ids, cfg, context: Context, seed: int):
    from healing_pl.unlearning.salun import salun

    return salun(model, dm, forget_ids, lr=_lr(model, cfg), ratio=cfg.salun_ratio, epochs=cfg.salun_epochs, seed=seed)


def _ssd(model, dm, forget_ids, cfg, context: Context, seed: int):
    from healing_pl.unlearning.ssd import ssd

    return ssd(
        model,
        dm,
        forget_ids,
        lam=cfg.ssd_lambda,
        alpha=cfg.ssd_alpha,
        batch_size=cfg.batch_r,
        progress=context.progress,
    )


#: name -> method. A new method is one module plus one line here.
METHODS: dict[str, Method] = {
    "naive": Method("naive", _naive, cacheable=False),  # the gold standard keeps its own cache
    "sisa": Method("sisa", _sisa, ("shards", "slices", "aggregation", "sisa_epochs"), cacheable=False, ensemble=True),
    "fisher": Method(
        "fisher",
        _fisher,
        ("batch_r", "alpha", "fisher_kind", "lam", "noise_only", "batch_f", "shaping"),
        stochastic=True,
    ),
    "influence": Method(
        "influence",
        _influence,
        ("batch_r", "batch_f", "damping", "scale", "depth", "lissa_repeats", "removal", "damping_convention"),
        stochastic=True,
    ),
    "finetune": Method("finetune", _finetune, ("ft_epochs", "lr")),
    "neggrad_plus": Method("neggrad_plus", _neggrad_plus, ("ng_alpha", "ng_epochs", "lr"), stochastic=True),
    "scrub": Method(
        "scrub",
        _scrub,
        ("scrub_epochs", "scrub_msteps", "scrub_alpha", "scrub_gamma", "scrub_temperature", "lr"),
        stochastic=True,
    ),
    "salun": Method("salun", _salun, ("salun_ratio", "salun_epochs", "lr"), stochastic=True),
    "ssd": Method("ssd", _ssd, ("ssd_lambda", "ssd_alpha", "batch_r")),
}


#: The knobs a diverged method's message names, and which way to turn them (default: the method's knobs).
DIVERGENCE_HINTS: dict[str, str] = {
    "fisher": "lower --unlearn.alpha (now {cfg.alpha:g})",
    "influence": "raise --unlearn.scale (now {cfg.scale:g}) or --unlearn.damping (now {cfg.damping:g})",
    "naive": "lower the baseline's --model.lr",
}
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


def check_divergence(out: nn.Module, model: nn.Module, dm, cfg) -> None:
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
    if collapsed and getattr(cfg, "on_collapse", "stop") == "keep":  # finite, only at chance: keep it if asked
        print(f"{cfg.method} unlearning collapsed ({why}); kept, as --unlearn.on_collapse keep asks.", file=sys.stderr)
        return
    hint = DIVERGENCE_HINTS.get(cfg.method, "").format(cfg=cfg)
    hint = hint or "turn " + ", ".join(f"--unlearn.{k}" for k in METHODS[cfg.method].knobs)
    raise FloatingPointError(f"{cfg.method} unlearning diverged ({why}): {hint}.")


@dataclass
class UnlearnResult:
    model: nn.Module  # the representative model
    accs: list[float]  # test accuracy of every repeat (reported, never used to choose)
    times: list[float]  # wall time of every repeat
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
    model, dm, forget_ids, cfg, context: Context | None = None, *, test_loader=None
) -> UnlearnResult:
    """Run ``cfg.method`` (``cfg.repeats`` times when stochastic); keep the run whose validation accuracy is
    closest to the mean validation accuracy over repeats (the paper's "closest to the mean"; ties: the first).

    Every repeat is also tested (on ``test_loader``, default the test set) for the report, but the test
    accuracy never decides which repeat is kept. Several repeats need a validation split (``--data.val``).
    """
    context = context or Context()
    forget_ids = dm.check_members(forget_ids)
    dm.remain_ids(forget_ids)  # validates: not the whole primary set
    method = METHODS[cfg.method]
    repeats = cfg.repeats if method.stochastic else 1
    has_val = bool(dm.splits["val"].numel())
    if repeats > 1 and not has_val:
        raise ValueError(
            f"choosing the representative of {repeats} {cfg.method} repeats needs a validation split, but "
            "data.val is 0; set --data.val above 0 or --unlearn.repeats 1."
        )
    test_loader = test_loader or dm.test_dataloader()
    models, accs, val_accs, times, infos = [], [], [], [], []
    for i in range(repeats):
        announce_repeat(i + 1, repeats, cfg.method, context.progress)
        start = time.perf_counter()
        out, info = method.run(model, dm, forget_ids, cfg, context, cfg.seed + i)
        times.append(time.perf_counter() - start)
        check_divergence(out, model, dm, cfg)  # before anything keeps or caches the model
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
