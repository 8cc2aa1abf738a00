"""``healing-pl calibrate``: the unlearning strength that reaches a target validation-accuracy drop.

    healing-pl calibrate --config configs/digits.yaml --ckpt_path runs/bl/checkpoints/last.ckpt --unlearn Fisher \\
        --adversary WorstLogitsSelector --adversary.system_knowledge output_aware --adversary.budget 25 \\
        --target_drop 0.13 --output fisher-alpha.yaml

It reads the same YAML and flags as ``healing-pl unlearn`` (the LightningCLI parser of
:class:`healing_pl.cli.HealingCLI`, with ``--config``, ``--trainer.*``, ``--model.*``, ``--data.*``,
``--unlearn.*``, ``--adversary.*`` and ``--requests``), loads the baseline with
:func:`healing_pl.phases.baseline.load_baseline`, picks the forget set once with
:func:`healing_pl.phases.forget.request_forget_set` (no ledger is written), and then bisects the strength
in log space: each step runs :func:`healing_pl.unlearning.base.unlearn_with_repeats` (the method's
``repeats``, seeds ``seed``, ``seed + 1``...) and measures

    drop = baseline validation accuracy - mean validation accuracy of the unlearned repeats.

Strengths (``--param``; default the first of the method's; a method's ``strengths`` class attribute):

===============  =========  ===========================  =================
``--unlearn``    param      stronger when it is          default range
===============  =========  ===========================  =================
Fisher           alpha      larger                       [1e-10, 1e-2]
Influence        scale      smaller (a longer step)      [1, 1e6]
Influence        damping    smaller                      [1e-6, 1e2]
SSD              alpha      smaller                      [1, 100]
SCRUB            lr         larger                       [1e-4, 1e-1]
SalUn            lr         larger                       [1e-4, 1e-1]
NegGradPlus      alpha      smaller                      [0.5, 0.9999]
Finetune         lr         larger                       [1e-4, 1e-1]
===============  =========  ===========================  =================

Every step measures on the validation split only: the test set is never evaluated, so a choice made
here cannot leak the reported numbers (tests/test_calibrate.py scrambles the test labels and gets the
same value). A strength whose model diverges (:func:`~healing_pl.unlearning.base.check_divergence`)
counts as too strong. The search stops early once a drop is within ``--tol`` of the target; otherwise it
reports the closest value it tried. Candidate values are rounded to 4 significant digits before they are
measured, so the value written is exactly the value measured.

**Tuning against the gold standard** (``--against_gold``, no ``--target_drop``): the methods without a drop to
aim at (SSD, SCRUB, SalUn, NegGrad+, Finetune; :doc:`docs/methods.md`) are tuned by how close they come to the
gold standard (GS, retraining on the remain set with the baseline's recipe; cached like the run's) on a
*validation* forget set: the forget set the config picks here, which must be another request than the one the
reported runs forget (e.g. another class, or another adversary seed); it is named in the snippet. Every one of
``--steps`` values spread over [lo, hi] (log-spaced; values in (0, 1) near 1, as NegGrad+'s alpha, are spaced in
log(1 - value)) is run with the method's repeats and measured on the forget set alone:

    gap      = |forget accuracy of the unlearned model - forget accuracy of the GS|
    kl       = mean over the forget samples of KL(GS output || unlearned output)
    distance = gap + kl

and the value with the smallest distance is chosen (ties: the earlier). Diverged values are skipped. The test set
is never read; the validation accuracy of each value is reported beside it. The snippet is labelled "tuned on
validation".

The result is printed and, with ``--output``, written (by rank zero) as a YAML config snippet,
``unlearn: {class_path: <Method>, init_args: {<param>: ..., <the method's other knobs>}}``, which loads back as a second
``--config`` of ``healing-pl unlearn``/``heal``. Bad input (no or a missing checkpoint, a parameter the
method does not have, a target outside (0, 1), a range that is not positive and increasing, an output
folder that does not exist) stops with one sentence and exit status 2 before anything is computed or
written.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from dataclasses import dataclass, field

import yaml
from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from healing_pl.adversary import Selector
from healing_pl.cli import USER_ERRORS, HealingCLI, parser_sentence
from healing_pl.console import quiet_console
from healing_pl.files import write_atomic
from healing_pl.models.classifier import Classifier, evaluate, read_checkpoint
from healing_pl.phases.baseline import Baseline, load_baseline
from healing_pl.phases.distributed import inner_trainer
from healing_pl.phases.forget import request_forget_set
from healing_pl.trainer import DEFAULT_CLASSES
from healing_pl.unlearning import UNLEARNERS, Context, Unlearner, unlearn_with_repeats


def _strength_names() -> str:
    """Each method with strengths to calibrate (its class's ``strengths``), and those strengths."""
    return "; ".join(f"{c.__name__}: {', '.join(c.strengths)}" for c in UNLEARNERS.classes() if c.strengths)


class CalibrateCLI(HealingCLI):
    """The ``unlearn`` subcommand's parser (same YAML and flags) plus the search options; runs nothing.

    The model, data module and a trainer (for its device and precision; no logger, no callbacks, no run
    folder) are instantiated; the checkpoint's model hyperparameters are adopted as ``unlearn`` does.
    """

    def __init__(self, args=None):
        super().__init__(args=args, run=False)

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        kwargs["description"] = (
            "healing-pl calibrate: the unlearning strength whose mean validation-accuracy drop is closest to "
            "--target_drop (bisection in log space; the test set is never read)."
        )
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument(
            "--ckpt_path", type=str | None, default=None, help="The baseline checkpoint (healing-pl fit)."
        )
        parser.add_argument(
            "--unlearn", type=Unlearner | None, default=None, help="The unlearning method and its knobs (Fisher)."
        )
        parser.add_argument(
            "--adversary", type=Selector | None, default=None, help="Who picks the forget set (RandomSelector)."
        )
        parser.add_argument(
            "--requests",
            type=str | None,
            default=None,
            help="A requests file that replaces the adversary (as unlearn).",
        )
        parser.add_argument("--gold", type=bool, default=False, help="Accepted so an unlearn config loads; unused.")
        parser.add_argument(
            "--attack_strength", type=bool, default=False, help="Accepted so an unlearn config loads; unused."
        )
        parser.add_argument(
            "--target_drop",
            type=float | None,
            default=None,
            help="The validation-accuracy drop to reach (baseline minus unlearned), in (0, 1).",
        )
        parser.add_argument(
            "--param",
            type=str | None,
            default=None,
            help=f"The strength to calibrate ({_strength_names()}); default the method's first.",
        )
        parser.add_argument("--lo", type=float | None, default=None, help="Low end of the search (default per param).")
        parser.add_argument("--hi", type=float | None, default=None, help="High end of the search (default per param).")
        parser.add_argument("--steps", type=int, default=8, help="Bisection steps (one unlearning with repeats each).")
        parser.add_argument("--tol", type=float, default=0.01, help="Stop once a drop is this close to the target.")
        parser.add_argument("--output", type=str | None, default=None, help="Write the YAML snippet to this file.")
        parser.add_argument(
            "--against_gold",
            type=bool,
            default=False,
            help="Tune the strength by its distance to the gold standard on this (validation) forget set "
            "(forget-accuracy gap + output KL) instead of a target drop.",
        )

    def _parse_ckpt_path(self) -> None:
        # what `unlearn` does with --ckpt_path: one sentence for a missing or broken file, then the
        # checkpoint's model hyperparameters replace the configured ones
        path = self.config.get("ckpt_path")
        if not path:
            raise ValueError("pass the baseline checkpoint with --ckpt_path (written by healing-pl fit).")
        hparams = dict(read_checkpoint(path).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if hparams:
            self.config = self.parser.parse_object({"model": hparams}, self.config)

    def before_instantiate_classes(self) -> None:
        self.search = search_options(self.config)

    def instantiate_trainer(self, **kwargs):
        kwargs.update(logger=False, callbacks=[], enable_checkpointing=False, enable_progress_bar=False)
        trainer = LightningCLI.instantiate_trainer(self, **kwargs)
        trainer.run_dir = None
        return trainer


@dataclass(frozen=True)
class Search:
    """The checked search options."""

    param: str
    target: float
    lo: float
    hi: float
    steps: int
    tol: float
    output: str | None
    increasing: bool  # a larger value unlearns harder
    against_gold: bool = False  # choose by the distance to the gold standard (target unused)


def search_options(config) -> Search:
    """Check the calibrate options against the unlearn config; one sentence for the first problem."""
    unlearn = config.unlearn  # not built yet: the chosen class and its knobs
    cls = UNLEARNERS.by_class_name(str(unlearn["class_path"] if unlearn is not None else DEFAULT_CLASSES["unlearn"]))
    strengths, method = cls.strengths, cls.__name__
    against_gold = bool(config.get("against_gold", False))
    target = config.target_drop
    if against_gold:
        if target is not None:
            raise ValueError("--against_gold chooses by the distance to the gold standard; drop --target_drop.")
        target = 0.0
    elif target is None:
        raise ValueError("pass --target_drop, the validation-accuracy drop to reach, in (0, 1).")
    elif not 0.0 < target < 1.0:
        raise ValueError(f"--target_drop must lie in (0, 1), got {target}.")
    if not strengths:
        raise ValueError(f"calibrate tunes a strength of a method that has one, not of {method} ({_strength_names()}).")
    param = config.param or next(iter(strengths))
    if param not in strengths:
        raise ValueError(f"--param {param} is not a strength of {method}; choose one of {', '.join(strengths)}.")
    increasing, lo, hi = strengths[param]
    lo = lo if config.lo is None else config.lo
    hi = hi if config.hi is None else config.hi
    if not (lo > 0 and hi > lo and math.isfinite(hi)):
        raise ValueError(f"the search range needs 0 < --lo < --hi, got lo={lo:g}, hi={hi:g}.")
    if config.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {config.steps}.")
    if not config.tol >= 0:
        raise ValueError(f"--tol must be non-negative, got {config.tol}.")
    output = config.output
    if output is not None:
        folder = os.path.dirname(os.path.abspath(output))
        if os.path.isdir(output) or not os.path.isdir(folder):
            raise ValueError(f"--output '{output}' cannot be written: its folder does not exist or it is a folder.")
    return Search(
        param,
        float(target),
        float(lo),
        float(hi),
        int(config.steps),
        float(config.tol),
        output,
        increasing,
        against_gold,
    )


@dataclass
class Setup:
    """Everything a calibration needs, parsed and loaded (the baseline's weights and splits are in place)."""

    model: Classifier
    datamodule: object
    baseline: Baseline
    unlearn: Unlearner
    adversary: Selector
    requests: str | None
    search: Search
    context: Context


def load_setup(args) -> Setup:
    """Parse ``args`` (calibrate's options, without the subcommand) and load the baseline."""
    quiet_console()  # as the CLI: no Lightning tips, no known harmless warnings
    cli = CalibrateCLI(args)
    cfg = cli.config_init  # the dataclasses instantiated (and checked)
    model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    baseline = load_baseline(cfg.ckpt_path, model, datamodule)
    model = trainer.precision_plugin.convert_module(model).to(trainer.strategy.root_device).eval()
    if datamodule.splits["val"].numel() == 0:
        raise ValueError("calibrate measures the validation accuracy, but data.val is 0; set --data.val above 0.")
    context = Context(epochs=baseline.epochs, seed=baseline.seed, trainer=inner_trainer(trainer), progress=False)
    return Setup(model, datamodule, baseline, cfg.unlearn, cfg.adversary, cfg.requests, cli.search, context)


@dataclass
class Calibration:
    """The search's steps and the value it chose."""

    param: str
    target: float
    baseline_val: float
    forget_count: int
    steps: list[dict] = field(default_factory=list)  # {"value", "drop" (None: diverged), "val_accs"}

    @property
    def best(self) -> dict | None:
        """The step whose drop is closest to the target (ties: the earlier), or None when all diverged."""
        done = [s for s in self.steps if s["drop"] is not None]
        return min(done, key=lambda s: abs(s["drop"] - self.target)) if done else None


def _round(value: float) -> float:
    return float(f"{value:.4g}")


def _forget_ids(setup: Setup, progress: bool):
    """The forget set the setup names: its requests file's, else its adversary's (budget checked first)."""
    from healing_pl.adversary.requests import read_requests

    dm = setup.datamodule
    if setup.requests is None:
        setup.adversary.validate(len(dm.primary_ids), dm.num_classes)
        requests = None
    else:
        requests = read_requests(setup.requests, dm.pool.train)
    return request_forget_set(
        setup.adversary, setup.model, dm, None, progress, requests, unlearn=setup.unlearn, context=setup.context
    ).ids


def run_calibration(setup: Setup, progress: bool = True) -> Calibration:
    """Pick the forget set, then bisect the strength in log space (validation split only)."""

    s, dm, model = setup.search, setup.datamodule, setup.model
    forget = _forget_ids(setup, progress)
    val_loader = dm.val_dataloader()
    result = Calibration(s.param, s.target, evaluate(model, val_loader)["acc"], len(forget))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=s.steps, desc="calibrate", file=sys.stderr)
    lo, hi = math.log(s.lo), math.log(s.hi)
    try:
        for step in range(1, s.steps + 1):
            value = _round(math.exp((lo + hi) / 2))
            cfg = setup.unlearn.replace(**{s.param: value})
            try:
                out = unlearn_with_repeats(model, dm, forget, cfg, setup.context, test_loader=val_loader)
                accs = list(out.accs)  # validation accuracies: the test loader here is the validation split
                drop = result.baseline_val - statistics.fmean(accs)
            except FloatingPointError:  # diverged: too strong
                accs, drop = [], None
            result.steps.append({"value": value, "drop": drop, "val_accs": accs})
            if bar is not None:
                shown = "diverged" if drop is None else f"{drop:.4f}"
                bar.set_description(f"step {step}/{s.steps} {s.param}={value:.4g} drop={shown}")
                bar.update(1)
            if drop is not None and abs(drop - s.target) <= s.tol:
                break
            too_weak = drop is not None and drop < s.target
            if too_weak == s.increasing:
                lo = math.log(value)
            else:
                hi = math.log(value)
    finally:
        if bar is not None:
            bar.close()
    if result.best is None:
        raise ValueError(
            f"every {s.param} tried in [{s.lo:g}, {s.hi:g}] made {type(setup.unlearn).__name__} diverge; "
            f"{'lower --hi' if s.increasing else 'raise --lo'}."
        )
    return result


def candidates(lo: float, hi: float, steps: int) -> list[float]:
    """``steps`` values from ``lo`` to ``hi`` (one: their geometric mean), log-spaced, or spaced in log(1 - value)
    when the range lies in (0, 1) and reaches above 0.9; rounded to 4 significant digits (duplicates dropped)."""
    near_one = 0.0 < lo < hi < 1.0 and hi > 0.9
    a, b = (math.log(1 - lo), math.log(1 - hi)) if near_one else (math.log(lo), math.log(hi))
    points = [(a + b) / 2] if steps == 1 else [a + (b - a) * i / (steps - 1) for i in range(steps)]
    values = [_round(1 - math.exp(t)) if near_one else _round(math.exp(t)) for t in points]
    return list(dict.fromkeys(values))


def forget_outputs(model, dm, forget_ids):
    """``(accuracy, log-probabilities)`` of ``model`` on the forget set (eval mode, float64 log-probabilities)."""
    import torch

    param = next(model.parameters())
    was_training = model.training
    model.eval()
    logps, correct = [], 0
    with torch.no_grad():
        for x, y in dm.loader(forget_ids):
            logits = model(x.to(device=param.device, dtype=param.dtype)).double()
            correct += int((logits.argmax(1).cpu() == y).sum())
            logps.append(torch.log_softmax(logits, 1).cpu())
    model.train(was_training)
    return correct / len(forget_ids), torch.cat(logps)


def gold_distance(gold: tuple, model, dm, forget_ids) -> dict:
    """``{"gap", "kl", "distance", "forget_acc"}`` of ``model`` against the gold standard's ``gold`` =
    :func:`forget_outputs` on the forget set (KL(GS || model), averaged over the samples)."""
    acc, logp = forget_outputs(model, dm, forget_ids)
    gold_acc, gold_logp = gold
    kl = float((gold_logp.exp() * (gold_logp - logp)).sum(1).mean())
    gap = abs(acc - gold_acc)
    return {"gap": gap, "kl": kl, "distance": gap + kl, "forget_acc": acc}


@dataclass
class GoldTuning:
    """The values tried against the gold standard and their distances."""

    param: str
    forget_count: int
    gold_forget_acc: float
    baseline_forget_acc: float
    baseline_val: float
    steps: list[dict] = field(default_factory=list)  # {"value", "distance", "gap", "kl", "forget_acc", "val_acc"}
    forget_ids: list[int] = field(default_factory=list)  # the validation forget set

    @property
    def best(self) -> dict | None:
        """The value with the smallest distance (ties: the earlier), or None when all diverged."""
        done = [s for s in self.steps if s["distance"] is not None]
        return min(done, key=lambda s: s["distance"]) if done else None


def tune_against_gold(setup: Setup, progress: bool = True) -> GoldTuning:
    """Pick the (validation) forget set, train or load its gold standard, run every candidate value and choose the
    one closest to the gold standard on the forget set (the test set is never read)."""
    from healing_pl.unlearning.naive import gold_standard, model_hparams

    s, dm, model = setup.search, setup.datamodule, setup.model
    forget = _forget_ids(setup, progress)
    gold, _ = gold_standard(
        model_hparams(model),
        dm,
        forget,
        epochs=setup.baseline.epochs,
        seed=setup.baseline.seed,
        cache_dir=setup.unlearn.cache_dir,
        trainer=setup.context.trainer,
    )
    gold_out = forget_outputs(gold, dm, forget)
    val_loader = dm.val_dataloader()
    result = GoldTuning(
        s.param, len(forget), gold_out[0], forget_outputs(model, dm, forget)[0], evaluate(model, val_loader)["acc"]
    )
    result.forget_ids = [int(i) for i in forget]
    for value in candidates(s.lo, s.hi, s.steps):
        cfg = setup.unlearn.replace(**{s.param: value})
        try:
            out = unlearn_with_repeats(model, dm, forget, cfg, setup.context, test_loader=val_loader)
        except FloatingPointError:  # diverged
            result.steps.append({"value": value, "distance": None, "gap": None, "kl": None})
            continue
        step = {"value": value, **gold_distance(gold_out, out.model, dm, forget)}
        step["val_acc"] = statistics.fmean(out.accs)  # validation accuracies: the test loader here is validation
        result.steps.append(step)
        if progress:
            print(f"{s.param}={value:g}: distance {step['distance']:.4f}", file=sys.stderr)
    if result.best is None:
        raise ValueError(f"every {s.param} tried in [{s.lo:g}, {s.hi:g}] made {type(setup.unlearn).__name__} diverge.")
    return result


def gold_snippet(setup: Setup, result: GoldTuning) -> str:
    """The YAML snippet of the value tuned against the gold standard, labelled "tuned on validation"."""
    best, s = result.best, setup.search
    chosen = setup.unlearn.replace(**{s.param: best["value"]})
    settings = chosen.hyperparameters()
    settings.pop("method")
    unlearn = {"class_path": type(chosen).__name__, "init_args": {s.param: settings.pop(s.param), **settings}}

    def tried(t: dict) -> str:
        return f"{t['value']:g} ({'diverged' if t['distance'] is None else format(t['distance'], '.4f')})"

    lines = [
        f"# tuned on validation: unlearn.{s.param} closest to the gold standard on a validation forget set",
        f"# distance {best['distance']:.4f} = forget-accuracy gap {best['gap']:.4f} + KL(GS || unlearned) "
        f"{best['kl']:.4f}; forget accuracy {best['forget_acc']:.4f} (GS {result.gold_forget_acc:.4f}, baseline "
        f"{result.baseline_forget_acc:.4f}); validation accuracy {best['val_acc']:.4f} "
        f"(baseline {result.baseline_val:.4f})",
        f"# validation forget set: {result.forget_count} samples, as this config requests them "
        f"({_forget_request(setup)}); baseline {setup.baseline.path}; the test set was not read",
        f"# tried: {', '.join(tried(t) for t in result.steps)}",
    ]
    return "\n".join(lines) + "\n" + yaml.safe_dump({"unlearn": unlearn}, sort_keys=False)


def _forget_request(setup: Setup) -> str:
    if setup.requests is not None:
        return f"requests {setup.requests}"
    knobs = ", ".join(f"{k}={v}" for k, v in setup.adversary.knobs().items())
    return f"{type(setup.adversary).__name__}({knobs})"


def snippet(setup: Setup, result: Calibration) -> str:
    """The YAML config snippet: the unlearn settings with the chosen strength, and a comment on how it was found."""
    best = result.best
    s = setup.search
    chosen = setup.unlearn.replace(**{s.param: best["value"]})
    settings = chosen.hyperparameters()
    settings.pop("method")
    unlearn = {"class_path": type(chosen).__name__, "init_args": {s.param: settings.pop(s.param), **settings}}
    within = abs(best["drop"] - s.target) <= s.tol
    reached = "reached" if within else f"closest to the target (not within {s.tol:g})"
    n = len(best["val_accs"])
    lines = [
        f"# healing-pl calibrate: unlearn.{s.param} for a mean validation-accuracy drop of {s.target:g}",
        f"# {reached}: drop {best['drop']:.4f} (validation accuracy {result.baseline_val:.4f} -> "
        f"{result.baseline_val - best['drop']:.4f}, mean of {n} repeat{'s' * (n != 1)}), "
        f"step {result.steps.index(best) + 1} of {len(result.steps)}",
        f"# forget set: {result.forget_count} samples; baseline {setup.baseline.path}",
        f"# tried: {', '.join(_tried(t) for t in result.steps)}",
    ]
    return "\n".join(lines) + "\n" + yaml.safe_dump({"unlearn": unlearn}, sort_keys=False)


def _tried(step: dict) -> str:
    return f"{step['value']:g} ({'diverged' if step['drop'] is None else format(step['drop'], '.4f')})"


def calibrate_main(args=None) -> int:
    """``healing-pl calibrate``: exit status 0, or 2 with one sentence for bad input (nothing written)."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        setup = load_setup(argv)
        if setup.search.against_gold:
            text = gold_snippet(setup, tune_against_gold(setup, progress=True))
        else:
            text = snippet(setup, run_calibration(setup, progress=True))
    except USER_ERRORS as err:
        if os.environ.get("HEALING_PL_DEBUG"):
            raise
        print(f"healing-pl: error: {err}", file=sys.stderr)
        return 2
    except ArgumentError as err:
        if os.environ.get("HEALING_PL_DEBUG"):
            raise
        print(f"healing-pl: error: {parser_sentence(str(err), 'calibrate')}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help, --print_config, and the parser's own exits
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    print(text, end="")
    if setup.search.output and rank_zero_only.rank == 0:
        write_atomic(setup.search.output, text)
        print(f"written to {setup.search.output}")
    return 0


__all__ = [
    "Calibration",
    "CalibrateCLI",
    "GoldTuning",
    "Search",
    "Setup",
    "calibrate_main",
    "load_setup",
    "run_calibration",
    "tune_against_gold",
]
