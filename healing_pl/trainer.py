"""The Trainer of healing-pl: Lightning's Trainer plus the ``unlearn``, ``heal`` and ``stream`` subcommands.

LightningCLI turns every method listed in :meth:`extra_subcommands` into a
subcommand whose typed arguments become options: the method families are chosen
as classes (``--unlearn Fisher --unlearn.alpha 3.5e-3``, ``--adversary
ClassSelector --adversary.target_class 7``, ``--twins.metric FeatCosine``; their
constructor arguments are their knobs), the other groups are the dataclasses of
:mod:`healing_pl.phases.config` (``--twins.*``, ``--heal.*``, ``--stream.*``).

Each subcommand reads top to bottom: load the baseline, check the request
against the data, then one ``fit`` whose callbacks are the phases
(:mod:`healing_pl.callbacks.phases`). Running inside the fit is what puts every
phase on the trainer's device and precision and runs it once under DDP.
"""

from __future__ import annotations

import os

import lightning as L

from healing_pl.adversary import SELECTORS, Selector
from healing_pl.adversary.requests import RequestsFile, read_requests
from healing_pl.callbacks.phases import (
    FitEvaluation,
    HealEvaluation,
    Phase,
    RunWriter,
    ShardHealing,
    SisaShardJob,
    StreamPhase,
    TwinSearch,
    UnlearnPhase,
)
from healing_pl.phases.baseline import load_baseline
from healing_pl.phases.config import HealConfig, StreamConfig, TwinsConfig
from healing_pl.unlearning import UNLEARNERS, Unlearner

#: the class each family uses when the command chooses none: Fisher forgetting of 25 random training samples.
#: The parameters default to None and the CLI fills in these classes after parsing (a parsed default would pass
#: its knob values on to another class chosen later: ``--unlearn SSD`` would inherit Fisher's ``alpha``).
DEFAULT_CLASSES = {"unlearn": "Fisher", "adversary": "RandomSelector"}


def _default(option: str, chosen):
    """``chosen``, or the family's default class at its defaults (a call from code that passed nothing)."""
    if chosen is not None:
        return chosen
    registry = UNLEARNERS if option == "unlearn" else SELECTORS
    return registry.by_class_name(DEFAULT_CLASSES[option])()


class HealingTrainer(L.Trainer):
    """A Lightning Trainer whose extra subcommands compose the phases of an experiment.

    The CLI sets :attr:`run_dir` (the run's folder) and :attr:`run_config` (the full
    configuration, as written to ``config.yaml``) before a subcommand runs.
    """

    run_dir: str = "runs/unnamed"
    run_config: dict | None = None

    @staticmethod
    def extra_subcommands() -> dict[str, set[str]]:
        """Subcommands beyond fit/validate/test/predict and the arguments the CLI fills in."""
        return {"unlearn": {"model", "datamodule"}, "heal": {"model", "datamodule"}, "stream": {"model", "datamodule"}}

    def fit(self, model, train_dataloaders=None, val_dataloaders=None, datamodule=None, ckpt_path=None, **kwargs):
        """Lightning's fit, after checking that the run's batch splits across its devices (before any file)."""
        if datamodule is not None and self.world_size > 1 and datamodule.hparams.batch_size % self.world_size:
            raise ValueError(
                f"data.batch_size={datamodule.hparams.batch_size} (the batch of the whole run) does not split "
                f"across {self.world_size} devices; use a multiple of {self.world_size}."
            )
        return super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, **kwargs)

    def fit_phases(self, subcommand: str, model, datamodule, phases: list[Phase], epochs: int) -> None:
        """One fit of ``model`` for ``epochs`` epochs with ``phases`` and the run's writer as callbacks."""
        writer = RunWriter(subcommand, self.run_dir, self.run_config or {}, phases)
        self.callbacks[:0] = [*phases, writer]
        self.fit_loop.max_epochs = epochs
        self.fit(model, datamodule=datamodule)

    def baseline_fit_callbacks(self) -> list:
        """The callbacks of ``healing-pl fit``: test on the full test set, then record (see the CLI)."""
        evaluation = FitEvaluation(os.path.join(self.run_dir, "checkpoints", "last.ckpt"))
        return [evaluation, RunWriter("fit", self.run_dir, self.run_config or {}, [evaluation])]

    @staticmethod
    def _requests(path: str | None, adversary: Selector, datamodule, root: str | None = None) -> RequestsFile | None:
        """The checked ``--requests`` file (before anything is written), or the adversary's budget checked."""
        if path is None:
            if root is not None:
                raise ValueError("--requests_root names where a requests file's images may lie; give --requests too.")
            adversary.validate(len(datamodule.primary_ids), datamodule.num_classes)
            return None
        if root is not None and not os.path.isdir(root):
            raise ValueError(f"requests_root '{root}' is not a folder.")
        return read_requests(path, datamodule.pool.train, root=root)

    def unlearn(
        self,
        model,
        datamodule,
        ckpt_path: str | None = None,
        unlearn: Unlearner | None = None,
        adversary: Selector | None = None,
        gold: bool = False,
        attack_strength: bool = False,
        requests: str | None = None,
        requests_root: str | None = None,
    ):
        """Unlearn an adversary's forget set from a baseline checkpoint and evaluate the result.

        Args:
            ckpt_path: the baseline checkpoint (written by healing-pl fit).
            unlearn: the unlearning method, a class whose arguments are its knobs (--unlearn.help <Method>);
                default Fisher.
            adversary: who picks the forget set, with which knowledge and budget (--adversary.help <Selector>);
                default RandomSelector.
            gold: also train (or load from the cache) the gold standard for comparison.
            attack_strength: also unlearn a random forget set of the same size and report
                the accuracy drop of the adversary's set relative to it.
            requests: a JSON-lines file of real unlearn requests, one a line: {"requester": "alice",
                "sample_id": 123}, {"requester": "bob", "sample_hash": "<hex>"} or {"requester": "carol",
                "image": "path/relative/to/the/file.png"}, optional "kind" (user). When given, the adversary
                is not used (--adversary.* is ignored): the requests, in file order, pass the membership
                check and go to the ledger like the adversary's.
            requests_root: the folder that the requests file's image paths must stay inside (default: the
                requests file's own folder); a path leading out of it is refused.
        """
        unlearn, adversary = _default("unlearn", unlearn), _default("adversary", adversary)
        baseline = load_baseline(ckpt_path, model, datamodule)
        if unlearn.ensemble and getattr(unlearn, "shard", None) is not None:  # one shard job of a cluster's SISA
            self.fit_phases("unlearn", model, datamodule, [SisaShardJob(baseline, unlearn)], epochs=0)
            return
        requests_file = self._requests(requests, adversary, datamodule, requests_root)
        phase = UnlearnPhase(
            baseline,
            adversary,
            unlearn,
            gold=gold,
            attack_strength=attack_strength,
            run_dir=self.run_dir,
            save_to=os.path.join(self.run_dir, "checkpoints", "unlearned.ckpt"),
            requests=requests_file,
        )
        self.fit_phases("unlearn", model, datamodule, [phase], epochs=0)

    def heal(
        self,
        model,
        datamodule,
        ckpt_path: str | None = None,
        unlearn: Unlearner | None = None,
        adversary: Selector | None = None,
        twins: TwinsConfig = TwinsConfig(),
        heal: HealConfig = HealConfig(),
        requests: str | None = None,
        requests_root: str | None = None,
    ):
        """Unlearn a forget set from a baseline, find twins, and heal by fine-tuning on R plus twins.

        Args:
            ckpt_path: the baseline checkpoint (written by healing-pl fit).
            unlearn: the unlearning method, a class whose arguments are its knobs (--unlearn.help <Method>);
                default Fisher; SISA heals each affected shard.
            adversary: who picks the forget set, with which knowledge and budget (--adversary.help <Selector>);
                default RandomSelector.
            twins: the twin metric (none: heal on R alone) and spare policy.
            heal: the fine-tune: epochs (default N/2), learning rate, gold standard.
            requests: a JSON-lines file of real unlearn requests, one a line: {"requester": "alice",
                "sample_id": 123}, {"requester": "bob", "sample_hash": "<hex>"} or {"requester": "carol",
                "image": "path/relative/to/the/file.png"}, optional "kind" (user). When given, the adversary
                is not used (--adversary.* is ignored): the requests, in file order, pass the membership
                check and go to the ledger like the adversary's.
            requests_root: the folder that the requests file's image paths must stay inside (default: the
                requests file's own folder); a path leading out of it is refused.
        """
        unlearn, adversary = _default("unlearn", unlearn), _default("adversary", adversary)
        baseline = load_baseline(ckpt_path, model, datamodule)
        requests_file = self._requests(requests, adversary, datamodule, requests_root)
        unlearned = UnlearnPhase(
            baseline, adversary, unlearn, gold=heal.gold, run_dir=self.run_dir, requests=requests_file
        )
        search = TwinSearch(unlearned.start, twins, heal.remain_fraction, baseline.seed)
        epochs = heal.epochs_for(baseline.epochs)
        if unlearn.ensemble:  # SISA: each affected shard heals on its own data plus twins
            if heal.remain_fraction < 1:
                raise ValueError("heal.remain_fraction below 1 heals one model; SISA heals each shard on all its data.")
            self.fit_phases(
                "heal",
                model,
                datamodule,
                [unlearned, search, ShardHealing(unlearned.start, search.found, epochs, heal.lr, baseline.seed)],
                epochs=0,
            )
            return
        model.train_at(heal.lr, "--heal.lr")  # before the fit builds its optimizer
        model.log_prefix = "healed/"
        phases = [unlearned, search, HealEvaluation(unlearned.start, epochs, model.fit_lr, twins=search.found)]
        self.fit_phases("heal", model, datamodule, phases, epochs=epochs)

    def stream(
        self,
        model,
        datamodule,
        ckpt_path: str | None = None,
        unlearn: Unlearner | None = None,
        adversary: Selector | None = None,
        stream: StreamConfig = StreamConfig(),
        twins: TwinsConfig = TwinsConfig(),
        heal: HealConfig = HealConfig(),
        requests: str | None = None,
        requests_root: str | None = None,
    ):
        """Apply a stream of benign and adversarial unlearn requests in rounds, evaluating after each.

        Args:
            ckpt_path: the baseline checkpoint (written by healing-pl fit).
            unlearn: the unlearning method applied to each round's accepted requests (--unlearn.help <Method>);
                default Fisher.
            adversary: who picks the adversarial requests, with which knowledge and budget
                (--adversary.help <Selector>); default RandomSelector.
            stream: the mix of benign requests, the arrival order, the round size and healing.
            twins: the twin metric and policy when the stream heals after each round.
            heal: the learning rate of each round's fine-tune (heal.lr; epochs come from stream.heal_epochs).
            requests: a JSON-lines file of real unlearn requests, one a line: {"requester": "alice",
                "sample_id": 123}, {"requester": "bob", "sample_hash": "<hex>"} or {"requester": "carol",
                "image": "path/relative/to/the/file.png"}, optional "kind" (user). When given, the adversary
                is not used (--adversary.* and stream.benign_ratio, order, n_users, name_by are ignored):
                the requests, in file order and rounds of stream.round_size, pass the membership check and go
                to the ledger like the adversary's.
            requests_root: the folder that the requests file's image paths must stay inside (default: the
                requests file's own folder); a path leading out of it is refused.
        """
        unlearn, adversary = _default("unlearn", unlearn), _default("adversary", adversary)
        if heal.remain_fraction < 1:
            raise ValueError("heal.remain_fraction is a heal setting; a stream heals on R plus the twins.")
        baseline = load_baseline(ckpt_path, model, datamodule)
        requests_file = self._requests(requests, adversary, datamodule, requests_root)
        phase = StreamPhase(
            baseline,
            unlearn=unlearn,
            adversary=adversary,
            stream=stream,
            twins=twins,
            heal=heal,
            run_dir=self.run_dir,
            requests=requests_file,
        )
        self.fit_phases("stream", model, datamodule, [phase], epochs=0)
