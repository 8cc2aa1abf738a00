"""The Trainer of healing-pl: Lightning's Trainer plus the ``unlearn`` and ``heal`` subcommands.

LightningCLI turns every public method listed in :meth:`extra_subcommands`
into a subcommand whose typed arguments (the config dataclasses) become
``--unlearn.*``, ``--adversary.*``, ``--twins.*`` and ``--heal.*`` options.
"""

from __future__ import annotations

import os
import time

import lightning as L

from healing_pl.adversary.config import AdversaryConfig
from healing_pl.pipeline import HealConfig, StreamConfig, TwinsConfig
from healing_pl.unlearning.methods import UnlearnConfig


class HealingTrainer(L.Trainer):
    """A Lightning Trainer that times ``fit`` and runs the unlearning and healing phases."""

    fit_seconds: float = 0.0
    #: what the last unlearn/heal measured (read by the CLI to write results.json)
    record: dict | None = None

    @staticmethod
    def extra_subcommands() -> dict[str, set[str]]:
        """Subcommands beyond fit/validate/test/predict and the arguments the CLI fills in."""
        return {"unlearn": {"model", "datamodule"}, "heal": {"model", "datamodule"}, "stream": {"model", "datamodule"}}

    def fit(self, *args, **kwargs):
        """Train the model (a baseline on the primary set), then test it."""
        start = time.perf_counter()
        try:
            return super().fit(*args, **kwargs)
        finally:
            self.fit_seconds = time.perf_counter() - start

    def unlearn(self, model, datamodule, ckpt_path: str | None = None, unlearn: UnlearnConfig = UnlearnConfig(),
                adversary: AdversaryConfig = AdversaryConfig(), gold: bool = False, attack_strength: bool = False):
        """Unlearn an adversary's forget set from a baseline checkpoint and evaluate the result.

        Args:
            ckpt_path: the baseline checkpoint (written by healing-pl fit).
            unlearn: the unlearning method and its hyperparameters.
            adversary: who picks the forget set, with which knowledge and budget.
            gold: also train (or load from the cache) the gold standard for comparison.
            attack_strength: also unlearn a random forget set of the same size and report
                the accuracy drop of the adversary's set relative to it.
        """
        from healing_pl import pipeline as P

        baseline, recipe = P.load_baseline(ckpt_path, model, datamodule)
        progress = self.progress_bar_callback is not None
        forget, requests, _ = P.request_forget_set(adversary, baseline, datamodule, self.default_root_dir, progress)
        record = {**P.forget_set_record(adversary, datamodule, forget), **requests}
        record.update({f"unlearn/{k}": v for k, v in unlearn.hyperparameters().items()})
        record.update(P.evaluate_sets(baseline, datamodule, forget, "baseline"))
        if unlearn.method == "sisa":
            record.update(P.sisa_phase(baseline, recipe, datamodule, forget, unlearn, progress))
            unlearned = None
        else:
            unlearned, summary = P.unlearned_model(baseline, recipe, datamodule, forget, unlearn, progress)
            record.update(P.unlearn_record(summary))
            record.update(P.evaluate_sets(unlearned, datamodule, forget, "unlearned"))
        if gold:
            record.update(P.gold_record(baseline, recipe, datamodule, forget, unlearn, progress)[1])
        if attack_strength and unlearn.method != "sisa":
            record.update(P.attack_strength(baseline, recipe, datamodule, forget, unlearn, record, progress))
        if unlearned is not None:
            path = os.path.join(self.default_root_dir, "checkpoints", "unlearned.ckpt")
            P.save_model(unlearned, datamodule, path, recipe=recipe, forget_ids=forget)
            record["checkpoint"] = path
        self.record = record
        return record

    def heal(self, model, datamodule, ckpt_path: str | None = None, unlearn: UnlearnConfig = UnlearnConfig(),
             adversary: AdversaryConfig = AdversaryConfig(), twins: TwinsConfig = TwinsConfig(),
             heal: HealConfig = HealConfig()):
        """Unlearn a forget set from a baseline, find twins, and heal by fine-tuning on R plus twins.

        Args:
            ckpt_path: the baseline checkpoint (written by healing-pl fit).
            unlearn: the unlearning method (naive, fisher or influence) and its hyperparameters.
            adversary: who picks the forget set, with which knowledge and budget.
            twins: the twin metric (none: heal on R alone) and spare policy.
            heal: the fine-tune: epochs (default N/2), learning rate, gold standard.
        """
        from healing_pl import pipeline as P
        from healing_pl.callbacks.phases import HealEvaluation, TwinSearch, UnlearnPhase

        if unlearn.method == "sisa":
            raise ValueError("heal supports the naive, fisher and influence methods; SISA is exact and keeps its own shards.")
        baseline, recipe = P.load_baseline(ckpt_path, model, datamodule)
        progress = self.progress_bar_callback is not None
        forget, requests, ledger = P.request_forget_set(adversary, baseline, datamodule, self.default_root_dir, progress)
        epochs = heal.epochs or max(1, recipe["epochs"] // 2)
        record = {**P.forget_set_record(adversary, datamodule, forget), **requests}
        record.update({f"unlearn/{k}": v for k, v in unlearn.hyperparameters().items()})
        record.update({"twins/metric": twins.metric, "twins/policy": twins.policy, "heal/setup": twins.setup,
                       "heal/epochs": epochs, "baseline/epochs": recipe["epochs"]})
        record.update(P.evaluate_sets(baseline, datamodule, forget, "baseline"))
        if heal.gold:
            record.update(P.gold_record(baseline, recipe, datamodule, forget, unlearn, progress)[1])
        model.load_state_dict(baseline.state_dict())
        if heal.lr is not None:
            model.hparams.lr = heal.lr
        record["heal/lr"] = model.hparams.lr
        model.log_prefix = "healed/"
        self.callbacks[:0] = [UnlearnPhase(baseline, recipe, forget, unlearn, record, progress),
                              TwinSearch(baseline, forget, twins, record, P.ledger_twins(ledger, datamodule)),
                              HealEvaluation(record)]
        self.fit_loop.max_epochs = epochs
        start = time.perf_counter()
        self.fit(model, datamodule=datamodule)
        record["heal/time_s"] = time.perf_counter() - start
        record.update(P.evaluate_sets(model, datamodule, forget, "healed"))
        self.record = record
        return record

    def stream(self, model, datamodule, ckpt_path: str | None = None, unlearn: UnlearnConfig = UnlearnConfig(),
               adversary: AdversaryConfig = AdversaryConfig(), stream: StreamConfig = StreamConfig(),
               twins: TwinsConfig = TwinsConfig()):
        """Apply a stream of benign and adversarial unlearn requests in rounds, evaluating after each.

        Args:
            ckpt_path: the baseline checkpoint (written by healing-pl fit).
            unlearn: the unlearning method applied to each round's accepted requests.
            adversary: who picks the adversarial requests, with which knowledge and budget.
            stream: the mix of benign requests, the arrival order, the round size and healing.
            twins: the twin metric and policy when the stream heals after each round.
        """
        from healing_pl import pipeline as P

        baseline, recipe = P.load_baseline(ckpt_path, model, datamodule)
        self.record = P.run_stream(baseline, recipe, datamodule, unlearn, adversary, stream, twins,
                                   self.default_root_dir, self.logger, self.progress_bar_callback is not None)
        return self.record
