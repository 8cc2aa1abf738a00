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
them into ``results.json`` and the W&B run. No callback writes into another's
state: a later phase reads an earlier one's typed result.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import lightning as L

from healing_pl import records as rk
from healing_pl.adversary import Selector
from healing_pl.adversary.requests import RequestsFile
from healing_pl.models.classifier import Classifier, evaluate
from healing_pl.phases.baseline import Baseline
from healing_pl.phases.config import HealConfig, StreamConfig, TwinsConfig
from healing_pl.phases.distributed import cpu_state, inner_trainer, rank_zero_run
from healing_pl.phases.evaluate import Evaluation, evaluate_sets
from healing_pl.phases.forget import ForgetSet, request_forget_set
from healing_pl.phases.gold import Gold, gold_phase
from healing_pl.phases.heal import HealCurve
from healing_pl.phases.mia import MiaResult, draw_heldout, mia_phase, mia_twins_phase
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
        # rank zero only: the baseline copy (embeddings for twins), the unlearned model, the ledger
        self.baseline_model = self.unlearned_model = self.ledger = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self.outcome = rank_zero_run(trainer, lambda: self._compute(trainer, pl_module))
        if self.outcome.weights is not None:
            pl_module.load_state_dict(self.outcome.weights)

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
        return UnlearnOutcome(forget, before, gold, unlearned, attack, weights, tuple(m for m in mias if m))

    def mia(self, model, dm, forget_ids, prefix: str) -> MiaResult | None:
        """The loss-based MIA of ``model`` on the forget set (rank zero, on its device, seeded by unlearn.seed;
        every model is attacked with the same held-out samples); None when ``unlearn.mia`` is off."""
        if not self.unlearn.mia:
            return None
        heldout = draw_heldout(dm, len(forget_ids), self.unlearn.seed)
        return mia_phase(model, dm, forget_ids, prefix, self.unlearn.seed, heldout)

    def mia_healed(self, model, dm, twin_ids) -> list[MiaResult | None]:
        """The healed model's MIA on the forget set, and on the forget set against the twins (when any)."""
        if not self.unlearn.mia:
            return []
        forget_ids = self.outcome.forget.ids
        twins = mia_twins_phase(model, dm, forget_ids, twin_ids, rk.HEALED, self.unlearn.seed)
        return [self.mia(model, dm, forget_ids, rk.HEALED), twins]

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
        return [self.baseline, o.forget, o.baseline, o.gold, o.unlearned, o.attack, *o.mia, saved]


@dataclass(frozen=True)
class _Checkpoint:
    path: str

    def record(self) -> dict:
        return {rk.CHECKPOINT: self.path}


# --------------------------------------------------------------------------- twins and healing
class TwinSearch(Phase):
    """Twins for the forget set (rank zero, with the baseline's embeddings); every rank trains on R plus the twins."""

    def __init__(self, unlearned: UnlearnPhase, twins: TwinsConfig):
        self.unlearned, self.twins = unlearned, twins
        self.twin_set: TwinSet | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        forget = self.unlearned.outcome.forget.ids
        dm = trainer.datamodule

        def search() -> TwinSet:
            found = twin_phase(self.twins, self.unlearned.baseline_model, dm, forget)
            if found.pairs:
                ledger_twins(self.unlearned.ledger, dm, found.pairs)
            return found

        self.twin_set = rank_zero_run(trainer, search)
        dm.set_train_ids(dm.heal_ids(forget, self.twin_set.twin_ids))
        if trainer.is_global_zero:
            from healing_pl.tracking import log_twins, wandb_run

            log_twins(wandb_run(trainer.logger), self.twin_set.pairs, dm.pool.train, dm.pool.classes)

    def results(self) -> list:
        return [self.twin_set]


class HealEvaluation(Phase):
    """Test and validation accuracy of the healing model (full sets) after every epoch (rank zero); epoch 0 is
    the unlearned start. Each point goes to the W&B history against ``heal/epoch`` with the baseline's and the
    gold standard's test accuracy as reference series. At the end of training, the healed model's test, remain
    and forget accuracy, its MIA (forget set vs held-out, and vs the ``twins``' twins when given), and the whole
    curve as one W&B chart with BL and GS drawn as flat lines."""

    def __init__(self, unlearned: UnlearnPhase, epochs: int, lr: float, twins: TwinSearch | None = None):
        self.unlearned, self.twins = unlearned, twins
        self.curve = HealCurve(epochs, lr)
        self.healed: Evaluation | None = None
        self.mia: list[MiaResult | None] = []
        self._start = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.curve.accs[0] = self.unlearned.outcome.unlearned.evaluation.test
        if trainer.is_global_zero:  # every rank holds the unlearned weights now
            self._measure(trainer, pl_module, 0, test=self.curve.accs[0])
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self._measure(trainer, pl_module, trainer.current_epoch + 1)

    def _measure(self, trainer, pl_module, epoch: int, test: float | None = None) -> None:
        from healing_pl.tracking import log_heal_epoch, wandb_run

        dm = trainer.datamodule
        if test is None:
            test = evaluate(pl_module, dm.test_dataloader())["acc"]
        self.curve.accs[epoch] = test
        if dm.splits["val"].numel():
            self.curve.val_accs[epoch] = evaluate(pl_module, dm.val_dataloader())["acc"]
        baseline, gold = _references(self.unlearned.outcome)
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

            self.healed = evaluate_sets(pl_module, trainer.datamodule, self.unlearned.outcome.forget.ids, rk.HEALED)
            twin_ids = self.twins.twin_set.twin_ids if self.twins is not None else []
            self.mia = self.unlearned.mia_healed(pl_module, trainer.datamodule, twin_ids)
            if not trainer.interrupted:
                baseline, gold = _references(self.unlearned.outcome)
                log_heal_chart(wandb_run(trainer.logger), self.curve.accs, self.curve.val_accs, baseline, gold)

    def results(self) -> list:
        return [self.curve, self.healed, *self.mia]


class ShardHealing(Phase):
    """Heals an ensemble method's model (SISA): each affected shard is fine-tuned on its remain set plus the twins
    of the requests it held (rank zero, on the ensemble's device); test accuracy after every epoch."""

    def __init__(self, unlearned: UnlearnPhase, twins: TwinSearch, epochs: int, lr: float | None):
        self.unlearned, self.twins = unlearned, twins
        self.epochs, self.lr = epochs, lr
        self.curve: HealCurve | None = None
        self.healed: Evaluation | None = None
        self.mia: list[MiaResult | None] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        from healing_pl.unlearning.sisa import heal_sisa

        def heal() -> tuple[HealCurve, Evaluation, list]:
            ensemble, dm = self.unlearned.unlearned_model, trainer.datamodule
            forget = self.unlearned.outcome.forget.ids
            curve = HealCurve(self.epochs, self.lr if self.lr is not None else pl_module.hparams.lr)
            curve.accs[0] = self.unlearned.outcome.unlearned.evaluation.test
            test = dm.test_dataloader()

            def on_epoch(epoch: int, healed) -> None:
                curve.accs[epoch] = evaluate(healed, test)["acc"]

            start = time.perf_counter()
            state = heal_sisa(
                ensemble.state,
                forget,
                self.twins.twin_set.pairs,
                dm,
                epochs=self.epochs,
                lr=self.lr,
                seed=self.unlearned.baseline.seed,
                on_epoch=on_epoch,
                progress=_progress(trainer),
            )
            curve.time_s = time.perf_counter() - start
            mias = self.unlearned.mia_healed(state.ensemble, dm, self.twins.twin_set.twin_ids)
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
                epochs_per_slice=cfg.epochs_per_slice,
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
            logger = trainer.logger
            log = (lambda metrics, step: logger.log_metrics(metrics, step=step)) if logger is not None else None
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
        )
        results = [r for phase in self.phases for r in phase.results()]
        record = run_record(self.subcommand, header, self.config, results)
        self.path = write_record(self.run_dir, record, trainer.logger)
        if trainer.world_size > 1:  # a spawned rank zero ends with its process: close its W&B run here
            from healing_pl.tracking import finish_wandb

            finish_wandb()


# --------------------------------------------------------------------------- W&B helpers of the phases above
def _references(outcome: UnlearnOutcome) -> tuple[float, float | None]:
    """The healed curve's reference values: the baseline's (BL) and the gold standard's (GS) test accuracy."""
    return outcome.baseline.test, (outcome.gold.evaluation.test if outcome.gold is not None else None)


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
