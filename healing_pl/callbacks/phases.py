"""The Lightning callbacks through which the phases act around a fit, shared by every subcommand.

Every subcommand is a ``fit`` of the model with some of these callbacks:

==========  =====================================================  ==============
subcommand  callbacks                                              epochs
==========  =====================================================  ==============
fit         FitEvaluation, RunWriter                               N
unlearn     UnlearnPhase, RunWriter                                0
heal        UnlearnPhase, TwinSearch, HealEvaluation, RunWriter    N/2 (heal.epochs)
stream      StreamPhase, RunWriter                                 0
==========  =====================================================  ==============

At the start of fit the strategy has put the model on its device, in its
precision, and (under DDP) started every rank. :class:`UnlearnPhase` then runs
the forget set, the baseline evaluation, the gold standard and the unlearning
once, on global rank zero, on that device, and hands the unlearned weights to
every rank; :class:`TwinSearch` finds the twins (rank zero) and points every
rank's training loader at R plus the twins; the fine-tune is the fit itself;
:class:`HealEvaluation` measures the full test set after every epoch (rank
zero). Each phase keeps its typed result; :class:`RunWriter` (rank zero) turns
them into ``results.json`` and the W&B run. No callback reads another's
attributes: what a later phase needs from an earlier one travels through a
:class:`Handoff` (one typed value, written once by its producer, read by its
consumers), and a consumer that runs before its producer stops with a
sentence naming both. The one shared state is the datamodule's training ids,
which :class:`TwinSearch` points at R plus the twins for the fit to train on.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

import lightning as L
import torch

from healing_pl import records as rk
from healing_pl.adversary import Selector
from healing_pl.adversary.requests import RequestsFile
from healing_pl.models.classifier import Classifier, evaluate
from healing_pl.phases.baseline import Baseline
from healing_pl.phases.config import HealConfig, StreamConfig, TwinsConfig
from healing_pl.phases.distributed import cpu_state, inner_trainer, rank_zero_run
from healing_pl.phases.evaluate import Evaluation, evaluate_sets, save_correctness
from healing_pl.phases.forget import ForgetSet, request_forget_set
from healing_pl.phases.gold import Gold, GoldDistance, distance_to_gold, gold_phase
from healing_pl.phases.heal import HealCurve, check_healed
from healing_pl.phases.mia import MiaResult, mia_phase, mia_twins_phase
from healing_pl.phases.record import run_record, save_config, save_model, write_record
from healing_pl.phases.twins import TwinSet, ledger_twins, twin_phase
from healing_pl.phases.unlearn import AttackStrength, Unlearned, attack_strength, unlearn_phase
from healing_pl.unlearning import Context, Unlearner


def detached_copy(model: Classifier, hparams: dict) -> Classifier:
    """A stand-alone copy of a Classifier's weights (no trainer attached) on its device and dtype, in eval mode.

    ``hparams``: the hyperparameters the copy keeps (the baseline's recipe, which the gold standard repeats).
    """
    clone = Classifier(**{**hparams, "pretrained": False, "weights": None})  # the weights come from the state dict
    clone.load_state_dict(model.state_dict())
    clone.hparams.update({k: hparams[k] for k in ("pretrained", "weights") if k in hparams})
    param = next(model.parameters())
    return clone.to(device=param.device, dtype=param.dtype).eval()


def _progress(trainer) -> bool:
    return trainer.progress_bar_callback is not None and trainer.is_global_zero


def _ledger(run_dir: str):
    from healing_pl.adversary.ledger import Ledger

    return Ledger(run_dir)


T = TypeVar("T")


class Handoff(Generic[T]):
    """One typed value that a phase hands to the phases after it (e.g. the unlearned start to the twin search).

    The producer :meth:`put` writes it once in its ``on_fit_start``; consumers :meth:`get` it in theirs or later.
    Reading it before it was written (a consumer listed before its producer) stops with a sentence naming both.
    """

    def __init__(self, what: str, producer: str):
        self.what, self.producer = what, producer
        self._value: T | None = None
        self._set = False

    def put(self, value: T) -> T:
        self._value, self._set = value, True
        return value

    def get(self, consumer: str = "a phase") -> T:
        if not self._set:
            raise RuntimeError(
                f"{consumer} needs the {self.what} before {self.producer} produced it: list {self.producer} first."
            )
        return self._value


class Phase(L.Callback):
    """A phase callback: it keeps typed results that :class:`RunWriter` records."""

    def results(self) -> list:
        return []


# --------------------------------------------------------------------------- fit
@dataclass(frozen=True)
class Trained:
    """A baseline trained by ``healing-pl fit``, tested on the full test set."""

    test: dict
    epochs: int
    time_s: float
    checkpoint: str

    def record(self) -> dict:
        return {
            rk.FIT_TEST_ACC: self.test["acc"],
            rk.FIT_TEST_LOSS: self.test["loss"],
            rk.FIT_TEST_ACC_CLASS: self.test["acc_class"],
            rk.TRAIN_EPOCHS: self.epochs,
            rk.TRAIN_TIME_S: self.time_s,
            rk.CHECKPOINT: self.checkpoint,
        }


class FitEvaluation(Phase):
    """Times the fit and tests the trained model over the whole test set on global rank zero."""

    def __init__(self, checkpoint: str):
        self.checkpoint = checkpoint
        self.trained: Trained | None = None
        self.artifact: _ModelArtifact | None = None  # the checkpoint's W&B model artifact
        self._start = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.interrupted or not trainer.is_global_zero:
            return
        seconds = time.perf_counter() - self._start
        tested = evaluate(pl_module, trainer.datamodule.test_dataloader())  # on the training device, full test set
        self.trained = Trained(tested, trainer.current_epoch, seconds, self.checkpoint)

    def on_fit_end(self, trainer, pl_module) -> None:
        # after every on_train_end: the checkpoint callback may write last.ckpt in its own
        if trainer.interrupted or not trainer.is_global_zero or self.trained is None:
            return
        self.artifact = _log_baseline_artifact(trainer, pl_module, self.checkpoint, self.trained)

    def results(self) -> list:
        return [self.trained, self.artifact]


# --------------------------------------------------------------------------- unlearn
@dataclass(frozen=True)
class UnlearnOutcome:
    """What the pre-fit phases hand to every rank (plain, picklable, CPU)."""

    forget: ForgetSet
    baseline: Evaluation
    gold: Gold | None
    unlearned: Unlearned
    attack: AttackStrength | None
    weights: dict | None  # the unlearned Classifier's state dict (None when the method keeps its own model)
    mia: tuple[MiaResult, ...] = ()  # baseline, gold and unlearned MIA (unlearn.mia)
    to_gold: tuple[GoldDistance, ...] = ()  # the baseline's and the unlearned model's distance to the gold standard


@dataclass(frozen=True)
class UnlearnedStart:
    """What :class:`UnlearnPhase` hands to the twin search and the heal: the outcome (every rank) and, on rank zero
    (None elsewhere), the baseline model whose embeddings rank the twins, the unlearned model (an ensemble heals
    from it), the ledger that records the twins, and the MIA's seed (None when ``unlearn.mia`` is off)."""

    outcome: UnlearnOutcome
    baseline_model: Classifier | None
    unlearned_model: object | None
    ledger: object | None
    mia_seed: int | None

    @property
    def forget_ids(self):
        return self.outcome.forget.ids

    def references(self) -> tuple[float, float | None]:
        """The healed curve's reference values: the baseline's (BL) and the gold standard's (GS) test accuracy."""
        o = self.outcome
        return o.baseline.test, (o.gold.evaluation.test if o.gold is not None else None)

    def healed_mia(self, model, dm, twin_ids) -> list[MiaResult | None]:
        """The healed model's MIA on the forget set, and on the forget set against the twins (when any)."""
        if self.mia_seed is None:
            return []
        twins = mia_twins_phase(model, dm, self.forget_ids, twin_ids, rk.HEALED, self.mia_seed)
        return [forget_mia(model, dm, self.forget_ids, rk.HEALED, self.mia_seed), twins]


def forget_mia(model, dm, forget_ids, prefix: str, seed: int) -> MiaResult:
    """The loss-based MIA of ``model`` on the forget set (rank zero, on its device); every model of a run is
    attacked with the same held-out samples (drawn with ``seed``: the forget set's class histogram, or for a
    mislabelled forget set its true classes under its wrong labels, :func:`~healing_pl.phases.mia.mia`)."""
    return mia_phase(model, dm, forget_ids, prefix, seed)


class UnlearnPhase(Phase):
    """Forget set, baseline evaluation, gold standard and unlearning, once on rank zero; every rank starts
    from the unlearned weights.

    Args:
        baseline: the loaded baseline checkpoint (its weights are in the fitted model).
        adversary, unlearn: who picks the forget set; how it is unlearned.
        gold: also train (or load) the gold standard.
        attack_strength: also unlearn a random set of the same size and report the extra drop.
        run_dir: the run folder (the ledger lives there).
        save_to: save the unlearned model to this checkpoint path (the ``unlearn`` subcommand).
        requests: a checked requests file (``--requests``): its requests replace the adversary's.
    """

    def __init__(
        self,
        baseline: Baseline,
        adversary: Selector,
        unlearn: Unlearner,
        *,
        gold: bool,
        run_dir: str,
        attack_strength: bool = False,
        save_to: str | None = None,
        requests: RequestsFile | None = None,
    ):
        self.baseline, self.adversary, self.unlearn, self.requests = baseline, adversary, unlearn, requests
        self.gold, self.attack_strength, self.run_dir, self.save_to = gold, attack_strength, run_dir, save_to
        self.outcome: UnlearnOutcome | None = None
        self.checkpoint: str | None = None
        #: what the twin search and the heal read (:class:`UnlearnedStart`)
        self.start: Handoff[UnlearnedStart] = Handoff("unlearned start", "UnlearnPhase")
        # rank zero only: the baseline copy (embeddings for twins), the unlearned model, the ledger
        self.baseline_model = self.unlearned_model = self.ledger = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self.outcome = rank_zero_run(trainer, lambda: self._compute(trainer, pl_module))
        if self.outcome.weights is not None:
            pl_module.load_state_dict(self.outcome.weights)
        mia_seed = self.unlearn.seed if self.unlearn.mia else None
        self.start.put(UnlearnedStart(self.outcome, self.baseline_model, self.unlearned_model, self.ledger, mia_seed))

    def _compute(self, trainer, pl_module) -> UnlearnOutcome:
        dm, progress = trainer.datamodule, _progress(trainer)
        context = Context(
            epochs=self.baseline.epochs, seed=self.baseline.seed, trainer=inner_trainer(trainer), progress=progress
        )
        self.baseline_model = model = detached_copy(pl_module, self.baseline.hparams)
        self.ledger = _ledger(self.run_dir)
        forget = request_forget_set(
            self.adversary, model, dm, self.ledger, progress, self.requests, unlearn=self.unlearn, context=context
        )
        try:
            outcome = self._unlearn(forget, model, dm, context, progress)
            if forget.request_ids:  # the unlearning succeeded: the requests were applied to this model
                from healing_pl.adversary.ledger import weights_sha256

                self.ledger.applied(forget.request_ids, weights_sha256(self.unlearned_model))
        except Exception as err:
            if forget.request_ids:
                self.ledger.failed(forget.request_ids, str(err) or type(err).__name__)
            raise
        return outcome

    def _unlearn(self, forget: ForgetSet, model, dm, context: Context, progress: bool) -> UnlearnOutcome:
        """Baseline evaluation, gold standard, unlearning (and attack strength) for an accepted forget set."""
        before = evaluate_sets(model, dm, forget.ids, rk.BASELINE)
        mias = [self.mia(model, dm, forget.ids, rk.BASELINE)]
        gold = None
        if self.gold:
            gold_model, gold = gold_phase(
                model,
                self.baseline,
                dm,
                forget.ids,
                cache_dir=self.unlearn.cache_dir,
                trainer=context.trainer,
                progress=progress,
            )
            mias.append(self.mia(gold_model, dm, forget.ids, rk.GOLD))
        self.unlearned_model, unlearned = unlearn_phase(model, self.baseline, dm, forget.ids, self.unlearn, context)
        mias.append(self.mia(self.unlearned_model, dm, forget.ids, rk.UNLEARNED))
        s = unlearned.summary
        print(
            f"unlearned ({self.unlearn.method}): test accuracy {unlearned.evaluation.test:.4f} "
            f"(mean {s['acc_mean']:.4f} ± {s['acc_std']:.4f} over {len(s['acc_repeats'])} runs)"
        )
        attack = None
        if self.attack_strength:
            attack = attack_strength(
                model, self.baseline, dm, forget.ids, self.unlearn, context, before.test, unlearned.evaluation.test
            )
        weights = cpu_state(self.unlearned_model) if isinstance(self.unlearned_model, Classifier) else None
        to_gold = (
            _to_gold(model, dm, forget.ids, gold, before),
            _to_gold(self.unlearned_model, dm, forget.ids, gold, unlearned.evaluation),
        )
        mias = tuple(m for m in mias if m)
        return UnlearnOutcome(forget, before, gold, unlearned, attack, weights, mias, tuple(d for d in to_gold if d))

    def mia(self, model, dm, forget_ids, prefix: str) -> MiaResult | None:
        """The loss-based MIA of ``model`` on the forget set (rank zero, on its device, seeded by unlearn.seed;
        every model is attacked with the same held-out samples); None when ``unlearn.mia`` is off."""
        return forget_mia(model, dm, forget_ids, prefix, self.unlearn.seed) if self.unlearn.mia else None

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.save_to and trainer.is_global_zero and isinstance(self.unlearned_model, Classifier):
            save_model(
                self.unlearned_model,
                trainer.datamodule,
                self.save_to,
                recipe={"epochs": self.baseline.epochs, "seed": self.baseline.seed},
                forget_ids=self.outcome.forget.ids,
            )
            self.checkpoint = self.save_to

    def results(self) -> list:
        o = self.outcome
        saved = _Checkpoint(self.checkpoint) if self.checkpoint else None
        return [self.baseline, o.forget, o.baseline, o.gold, o.unlearned, o.attack, *o.mia, *o.to_gold, saved]


@dataclass(frozen=True)
class _Checkpoint:
    path: str

    def record(self) -> dict:
        return {rk.CHECKPOINT: self.path}


# --------------------------------------------------------------------------- twins and healing
class TwinSearch(Phase):
    """Twins for the forget set (rank zero, with the baseline's embeddings); every rank trains on R plus the twins."""

    def __init__(self, start: Handoff[UnlearnedStart], twins: TwinsConfig, remain_fraction: float = 1.0, seed: int = 0):
        self.start, self.twins = start, twins
        self.heal_set = HealSet(remain_fraction, seed)
        self.twin_set: TwinSet | None = None
        #: what the heal reads (the twins, their pairs and scores)
        self.found: Handoff[TwinSet] = Handoff("twins", "TwinSearch")

    def on_fit_start(self, trainer, pl_module) -> None:
        start = self.start.get("TwinSearch")
        dm = trainer.datamodule

        def search() -> TwinSet:
            found = twin_phase(self.twins, start.baseline_model, dm, start.forget_ids)
            if found.pairs:
                ledger_twins(start.ledger, dm, found.pairs)
            return found

        self.twin_set = rank_zero_run(trainer, search)
        hs = self.heal_set
        dm.set_train_ids(dm.heal_ids(start.forget_ids, self.twin_set.twin_ids, hs.remain_fraction, hs.seed))
        self.twin_set = dataclasses.replace(self.twin_set, train_size=int(dm.train_ids.numel()))
        self.found.put(self.twin_set)
        if trainer.is_global_zero:
            from healing_pl.tracking import log_twins, wandb_run

            log_twins(wandb_run(trainer.logger), self.twin_set.pairs, dm.pool.train, dm.pool.classes)

    def results(self) -> list:
        return [self.twin_set, self.heal_set]


@dataclass
class HealSet:
    """The heal set's make-up: the share of R in it, drawn with ``seed`` (its size is the twin set's record)."""

    remain_fraction: float
    seed: int

    def record(self) -> dict:
        return {rk.HEAL_REMAIN_FRACTION: self.remain_fraction}


class HealEvaluation(Phase):
    """Test and validation accuracy of the healing model (full sets) after every epoch (rank zero); epoch 0 is
    the unlearned start. Each point goes to the W&B history against ``heal/epoch`` with the baseline's and the
    gold standard's test accuracy as reference series. At the end of training, the healed model's test, remain
    and forget accuracy, its MIA (forget set vs held-out, and vs the ``twins``' twins when given), and the whole
    curve as one W&B chart with BL and GS drawn as flat lines."""

    def __init__(self, start: Handoff[UnlearnedStart], epochs: int, lr: float, twins: Handoff[TwinSet] | None = None):
        self.start, self.twins = start, twins
        self.curve = HealCurve(epochs, lr)
        self.healed: Evaluation | None = None
        self.to_gold: GoldDistance | None = None
        self.mia: list[MiaResult | None] = []
        self._start = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.log_validation = False  # validation is measured here, on heal/epoch: Lightning's loop logs none
        self.curve.accs[0] = self.start.get("HealEvaluation").outcome.unlearned.evaluation.test
        if trainer.is_global_zero:  # every rank holds the unlearned weights now
            self._measure(trainer, pl_module, 0, test=self.curve.accs[0])
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            epoch = trainer.current_epoch + 1
            self._measure(trainer, pl_module, epoch)
            try:  # before the checkpoint callback saves this epoch (Lightning runs it after the other callbacks)
                check_healed(pl_module, trainer.datamodule, self.curve.val_accs.get(0), self.curve.val_accs.get(epoch))
            except FloatingPointError:
                _remove_checkpoints(trainer)  # an earlier epoch's last.ckpt is not the heal's result either
                raise

    def _measure(self, trainer, pl_module, epoch: int, test: float | None = None) -> None:
        from healing_pl.tracking import log_heal_epoch, wandb_run

        dm = trainer.datamodule
        if test is None:
            test = evaluate(pl_module, dm.test_dataloader())["acc"]
        self.curve.accs[epoch] = test
        if dm.splits["val"].numel():
            self.curve.val_accs[epoch] = evaluate(pl_module, dm.val_dataloader())["acc"]
        baseline, gold = self.start.get().references()
        log_heal_epoch(
            wandb_run(trainer.logger),
            epoch,
            test=test,
            val=self.curve.val_accs.get(epoch),
            baseline=baseline,
            gold=gold,
        )

    def on_train_end(self, trainer, pl_module) -> None:
        self.curve.time_s = time.perf_counter() - self._start
        if trainer.is_global_zero:  # still on the training device (the strategy's teardown comes later)
            from healing_pl.tracking import log_heal_chart, wandb_run

            start = self.start.get()
            self.healed = evaluate_sets(pl_module, trainer.datamodule, start.forget_ids, rk.HEALED)
            self.to_gold = _to_gold(pl_module, trainer.datamodule, start.forget_ids, start.outcome.gold, self.healed)
            twin_ids = self.twins.get("HealEvaluation").twin_ids if self.twins is not None else []
            self.mia = start.healed_mia(pl_module, trainer.datamodule, twin_ids)
            if not trainer.interrupted:
                baseline, gold = start.references()
                log_heal_chart(wandb_run(trainer.logger), self.curve.accs, self.curve.val_accs, baseline, gold)

    def results(self) -> list:
        return [self.curve, self.healed, *self.mia, self.to_gold]


def _to_gold(model, dm, forget_ids, gold: Gold | None, evaluation: Evaluation) -> GoldDistance | None:
    """A Classifier's distance to the gold standard on the forget set (None without a gold standard; an ensemble's
    aggregated output is not a distribution, so it gets none)."""
    if not isinstance(model, Classifier):
        return None
    return distance_to_gold(model, dm, forget_ids, gold, evaluation.forget, evaluation.prefix)


class ShardHealing(Phase):
    """Heals an ensemble method's model (SISA): each affected shard is fine-tuned on its remain set plus the twins
    of the requests it held (rank zero, on the ensemble's device); test accuracy after every epoch."""

    def __init__(
        self, start: Handoff[UnlearnedStart], twins: Handoff[TwinSet], epochs: int, lr: float | None, seed: int
    ):
        self.start, self.twins, self.seed = start, twins, seed
        self.epochs, self.lr = epochs, lr
        self.curve: HealCurve | None = None
        self.healed: Evaluation | None = None
        self.mia: list[MiaResult | None] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        from healing_pl.unlearning.sisa import heal_sisa

        start, twins = self.start.get("ShardHealing"), self.twins.get("ShardHealing")

        def heal() -> tuple[HealCurve, Evaluation, list]:
            ensemble, dm = start.unlearned_model, trainer.datamodule
            forget = start.forget_ids
            curve = HealCurve(self.epochs, self.lr if self.lr is not None else pl_module.fit_lr)
            curve.accs[0] = start.outcome.unlearned.evaluation.test
            test = dm.test_dataloader()

            def on_epoch(epoch: int, healed) -> None:
                curve.accs[epoch] = evaluate(healed, test)["acc"]

            began = time.perf_counter()
            state = heal_sisa(
                ensemble.state,
                forget,
                twins.pairs,
                dm,
                epochs=self.epochs,
                lr=self.lr,
                seed=self.seed,
                on_epoch=on_epoch,
                progress=_progress(trainer),
            )
            curve.time_s = time.perf_counter() - began
            mias = start.healed_mia(state.ensemble, dm, twins.twin_ids)
            return curve, evaluate_sets(state.ensemble, dm, forget, rk.HEALED), mias

        self.curve, self.healed, self.mia = rank_zero_run(trainer, heal)

    def results(self) -> list:
        return [self.curve, self.healed, *self.mia]


class SisaShardJob(Phase):
    """Trains one SISA shard into the cache (``--unlearn SISA --unlearn.shard i``): one job per shard on a cluster;
    a later ``unlearn`` or ``heal`` run aggregates the cached shards."""

    def __init__(self, baseline: Baseline, unlearn: Unlearner):
        self.baseline, self.unlearn = baseline, unlearn
        self.job: _ShardJob | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        from healing_pl.unlearning.sisa import train_sisa_shard

        def train() -> _ShardJob:
            cfg, dm = self.unlearn, trainer.datamodule
            if not cfg.cache_dir:
                raise ValueError("training one SISA shard needs --unlearn.cache_dir, where the shards meet.")
            context = Context(epochs=self.baseline.epochs, seed=self.baseline.seed)
            param = next(pl_module.parameters())
            directory = cfg.directory(detached_copy(pl_module, self.baseline.hparams), dm, context)
            start = time.perf_counter()
            path = train_sisa_shard(
                self.baseline.hparams,
                dm,
                cfg.shard,
                shards=cfg.shards,
                slices=cfg.slices,
                epochs=self.baseline.epochs,
                epochs_per_slice=cfg.epochs_per_slice_for(self.baseline.epochs),
                protocol=cfg.protocol,
                seed=self.baseline.seed,
                device=param.device,
                dtype=param.dtype,
                directory=directory,
                progress=_progress(trainer),
            )
            print(f"SISA shard {cfg.shard} of {cfg.shards} written to {path}")
            return _ShardJob(cfg.shard, cfg.shards, path, time.perf_counter() - start)

        self.job = rank_zero_run(trainer, train)

    def results(self) -> list:
        return [self.baseline, self.job]


@dataclass(frozen=True)
class _ShardJob:
    shard: int
    shards: int
    path: str
    time_s: float

    def record(self) -> dict:
        return {
            rk.SISA_SHARD: self.shard,
            rk.SISA_SHARDS: self.shards,
            rk.SISA_SHARD_FILE: self.path,
            rk.SISA_SHARD_TIME_S: self.time_s,
        }


# --------------------------------------------------------------------------- streams
class StreamPhase(Phase):
    """A stream of requests in rounds, applied on rank zero on the model's device (:mod:`healing_pl.phases.stream`).

    The state after each round is kept under ``<run_dir>/stream/``, so a rerun into the same folder resumes after
    the last round the ledger holds.
    """

    def __init__(
        self,
        baseline: Baseline,
        *,
        unlearn: Unlearner,
        adversary: Selector,
        stream: StreamConfig,
        twins: TwinsConfig,
        heal: HealConfig,
        run_dir: str,
        requests: RequestsFile | None = None,
    ):
        self.baseline, self.run_dir = baseline, run_dir
        self.configs = {"unlearn": unlearn, "adversary": adversary, "stream": stream, "twins": twins, "heal": heal}
        self.requests = requests
        self.result = None

    def on_fit_start(self, trainer, pl_module) -> None:
        from healing_pl.phases.stream import run_stream

        def run():
            context = Context(
                epochs=self.baseline.epochs,
                seed=self.baseline.seed,
                trainer=inner_trainer(trainer),
                progress=_progress(trainer),
            )
            from healing_pl.tracking import stream_log

            logger = trainer.logger
            log = stream_log(logger) or ((lambda m, step: logger.log_metrics(m, step=step)) if logger else None)
            ledger = _ledger(self.run_dir)
            return run_stream(
                detached_copy(pl_module, self.baseline.hparams),
                self.baseline,
                trainer.datamodule,
                ledger=ledger,
                context=context,
                log=log,
                checkpoint_dir=os.path.join(self.run_dir, "stream"),
                requests=self.requests,
                **self.configs,
            )

        self.result = rank_zero_run(trainer, run)

    def results(self) -> list:
        return [self.baseline, self.result]


# --------------------------------------------------------------------------- the writer
class RunWriter(L.Callback):
    """Writes the run's files on global rank zero: ``config.yaml`` and ``splits.json`` once the phases before
    the fit succeeded, then ``results.json`` and the W&B summary from every phase's typed results."""

    def __init__(self, subcommand: str, run_dir: str, config: dict, phases: list[Phase]):
        self.subcommand, self.run_dir, self.config, self.phases = subcommand, run_dir, config, list(phases)
        self.path: str | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            save_config(self.run_dir, self.config, trainer.logger)
            trainer.datamodule.save_splits(os.path.join(self.run_dir, "splits.json"))

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.interrupted or not trainer.is_global_zero:
            return
        header = rk.header(
            dataset=trainer.datamodule.hparams.dataset,
            backbone=pl_module.hparams.backbone,
            run_dir=self.run_dir,
            world_size=trainer.world_size,
            device=str(trainer.strategy.root_device),
            precision=str(trainer.precision),
            threads=torch.get_num_threads(),
        )
        results = [r for phase in self.phases for r in phase.results()]
        record = run_record(self.subcommand, header, self.config, results)
        self.path = write_record(self.run_dir, record, trainer.logger)
        save_correctness(self.run_dir, results)  # per-image test correctness, for the report's McNemar tests
        if trainer.world_size > 1:  # a spawned rank zero ends with its process: close its W&B run here
            from healing_pl.tracking import finish_wandb

            finish_wandb()


def _remove_checkpoints(trainer) -> None:
    """Remove the checkpoints this fit's checkpoint callback wrote (a diverged heal leaves no model behind)."""
    callback = trainer.checkpoint_callback
    for path in {getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")}:
        if path and os.path.isfile(path):
            os.remove(path)


# --------------------------------------------------------------------------- W&B helpers of the phases above
@dataclass(frozen=True)
class _ModelArtifact:
    name: str

    def record(self) -> dict:
        return {rk.CHECKPOINT_ARTIFACT: self.name}


def _log_baseline_artifact(trainer, pl_module, checkpoint: str, trained: Trained) -> _ModelArtifact | None:
    """Log the fit's checkpoint as the W&B ``model`` artifact that heal, unlearn and stream runs use (rank zero)."""
    from healing_pl.tracking import log_model_artifact, wandb_run

    name = log_model_artifact(
        wandb_run(trainer.logger),
        checkpoint,
        dataset=trainer.datamodule.hparams.dataset,
        backbone=pl_module.hparams.backbone,
        metadata={"epochs": trained.epochs, rk.FIT_TEST_ACC.name: trained.test["acc"]},
    )
    return _ModelArtifact(name) if name else None
