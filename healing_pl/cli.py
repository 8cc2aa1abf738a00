"""The ``healing-pl`` command: a LightningCLI with per-run folders, W&B tracking and clear errors.

    healing-pl fit      --config configs/mnist5k.yaml     train a baseline, then test it
    healing-pl validate --config ... --ckpt_path ...      validate a checkpoint
    healing-pl test     --config ... --ckpt_path ...      test a checkpoint
    healing-pl unlearn  --config ... --ckpt_path ...      unlearn an adversary's forget set
    healing-pl heal     --config ... --ckpt_path ...      unlearn, find twins, heal by fine-tuning
    healing-pl stream   --config ... --ckpt_path ...      benign + adversarial requests in rounds
    healing-pl grid     configs/grids/<grid>.yaml         baseline + grid of heal runs + table
    healing-pl report   runs/<folder>                     comparison tables from results.json

Every run writes to its own folder (``--run_dir``, default
``runs/<dataset>-<subcommand>-<time>``): ``config.yaml``, ``splits.json``,
``checkpoints/last.ckpt``, ``results.json`` and the W&B run under ``wandb/``.
"""

from __future__ import annotations

import os
import sys

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from healing_pl.data.datamodule import HealingDataModule
from healing_pl.models.classifier import Classifier
from healing_pl.trainer import HealingTrainer
from healing_pl.tracking import Tracking, build_logger, finish_wandb, log_summary, make_run_dir, write_results

#: exceptions that mean "bad input": printed as one sentence, exit status 2
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


class _SaveConfig(SaveConfigCallback):
    """Writes config.yaml into the run folder (overwriting is allowed: one folder per run)."""

    def save_config(self, trainer, pl_module, stage) -> None:
        if trainer.logger is not None and hasattr(trainer.logger, "experiment"):
            flat = self.parser.dump(self.config, skip_none=False, format="json")
            import json

            trainer.logger.experiment.config.update({"cli": json.loads(flat)}, allow_val_change=True)


class HealingCLI(LightningCLI):
    """LightningCLI of healing-pl (see the module docstring)."""

    def __init__(self, args=None, run: bool = True):
        super().__init__(
            Classifier,
            HealingDataModule,
            trainer_class=HealingTrainer,
            save_config_callback=_SaveConfig,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            auto_configure_optimizers=False,
            args=args,
            run=run,
            parser_kwargs={"description": "healing-pl: adversarial unlearning and model healing experiments."},
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), **HealingTrainer.extra_subcommands()}

    def _parse_ckpt_path(self) -> None:
        # Lightning adopts the model hyperparameters saved in --ckpt_path; a broken file must stop cleanly
        try:
            super()._parse_ckpt_path()
        except Exception as err:  # torch raises several types for a file that is not a checkpoint
            path = self.config[self.config.subcommand].get("ckpt_path")
            raise ValueError(f"checkpoint '{path}' is corrupt or not a checkpoint ({type(err).__name__}).") from None

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        # as_group=False: the `unlearn` subcommand has an `unlearn` argument group of its own
        parser = self.init_parser(**kwargs)
        self._add_arguments(parser)
        skip = set(self.subcommands()[subcommand])
        self._subcommand_method_arguments[subcommand] = parser.add_method_arguments(
            klass, subcommand, skip=skip, as_group=False)
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_dir", type=str | None, default=None,
                            help="Folder of this run (default: runs/<dataset>-<subcommand>-<time>).")
        parser.add_argument("--wandb", type=Tracking, default=Tracking(), help="Weights & Biases tracking.")
        for key in ("num_classes", "in_chans", "image_size"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
        parser.set_defaults({"trainer.max_epochs": 10, "trainer.log_every_n_steps": 10})

    # ------------------------------------------------------------------ setup
    def _cfg(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def instantiate_trainer(self, **kwargs):
        cfg = self._cfg()
        self.run_dir = cfg.run_dir or make_run_dir("runs", f"{cfg.data.dataset}-{self.subcommand}")
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        logger = trainer_cfg.get("logger")
        if logger is None or logger is True:
            logger = build_logger(cfg.wandb, self.run_dir, self.subcommand) or False
        callbacks = [ModelCheckpoint(dirpath=os.path.join(self.run_dir, "checkpoints"), save_last=True, save_top_k=0)]
        if trainer_cfg.get("enable_checkpointing") is False or self.subcommand not in ("fit", "heal"):
            callbacks = []
        user_callbacks = trainer_cfg.get("callbacks") or []
        kwargs.setdefault("callbacks", (user_callbacks if isinstance(user_callbacks, list) else [user_callbacks]) + callbacks)
        kwargs.setdefault("default_root_dir", self.run_dir)
        kwargs.setdefault("logger", logger)
        return super().instantiate_trainer(**kwargs)

    # ------------------------------------------------------------- subcommands
    def before_fit(self) -> None:
        print(self.datamodule.summary())
        self.datamodule.save_splits(os.path.join(self.run_dir, "splits.json"))

    def after_fit(self) -> None:
        if self.trainer.interrupted:
            return
        fit_seconds = self.trainer.fit_seconds
        tested = self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)[0]
        metrics = {"test/acc": tested["test/acc"], "train/time_s": fit_seconds,
                   "checkpoint": os.path.join(self.run_dir, "checkpoints", "last.ckpt")}
        print(f"test accuracy: {metrics['test/acc']:.4f} (after {self.trainer.current_epoch} epochs, "
              f"{metrics['train/time_s']:.1f} s)")
        self._finish_phase("fit", metrics)


    def _save_config(self) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        self._parser(self.subcommand).save(self._cfg(), os.path.join(self.run_dir, "config.yaml"),
                                           skip_none=False, overwrite=True)

    def _finish_phase(self, phase: str, metrics: dict | None = None) -> None:
        """Log the phase's scalars to W&B (history and summary), write results.json, print a summary."""
        record = {"phase": phase, "dataset": self.datamodule.hparams.dataset, "backbone": self.model.hparams.backbone,
                  "run_dir": self.run_dir, **(metrics if metrics is not None else self.trainer.record or {})}
        logger = self.trainer.logger
        if logger is not None:
            scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            logger.log_metrics(scalars)
            log_summary(logger, scalars)
        path = write_results(self.run_dir, record)
        if phase != "fit":
            print(phase_summary(record))
        print(f"results written to {path}")

    def before_unlearn(self) -> None:
        print(self.datamodule.summary())

    def after_unlearn(self) -> None:
        self._save_config()
        if self.trainer.logger is not None:
            import json

            self.trainer.logger.log_hyperparams(json.loads(self._parser(self.subcommand).dump(
                self._cfg(), skip_none=False, format="json")))
        self._finish_phase("unlearn")

    def before_stream(self) -> None:
        print(self.datamodule.summary())

    def after_stream(self) -> None:
        self._save_config()
        self._finish_phase("stream")

    def before_heal(self) -> None:
        print(self.datamodule.summary())

    def after_heal(self) -> None:
        self._finish_phase("heal")


def phase_summary(record: dict) -> str:
    """A few lines that sum up an unlearn or heal run."""
    keys = [("baseline/test/acc", "baseline"), ("gold/test/acc", "gold standard"), ("sisa/test/acc", "SISA"),
            ("unlearned/test/acc", "unlearned"), ("attack/random_forget/test/acc", "unlearned (random set)"),
            ("healed/test/acc_epoch_1", "healed, 1 epoch"), ("stream/final/test/acc", "after the whole stream")]
    epochs = record.get("heal/epochs")
    if epochs and epochs > 1:
        keys.append((f"healed/test/acc_epoch_{epochs}", f"healed, {epochs} epochs"))
    lines = [f"forget set: {record.get('forget/count')} samples chosen by '{record.get('adversary/selector')}'"]
    lines += [f"  {label:<24} test accuracy {record[k]:.4f}" for k, label in keys if record.get(k) is not None]
    return "\n".join(lines)


def main(args=None) -> int:
    """Entry point of ``healing-pl``; bad input ends with one sentence and exit status 2."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in ("report", "grid"):
        from healing_pl.report.cli import grid_main, report_main

        return (report_main if argv[0] == "report" else grid_main)(argv[1:])
    import warnings

    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
    try:
        HealingCLI(args=args)
    except USER_ERRORS as err:
        if os.environ.get("HEALING_PL_DEBUG"):
            raise
        print(f"healing-pl: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # the parser's own errors (a config typo) and --help / --print_config
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    finally:
        finish_wandb()
    return 0


if __name__ == "__main__":
    sys.exit(main())
