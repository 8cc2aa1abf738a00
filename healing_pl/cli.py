"""The LightningCLI of healing-pl: per-run folders, W&B tracking, clear errors, DDP-safe.

    healing-pl fit      --config configs/mnist5k.yaml     train a baseline, then test it
    healing-pl validate --config ... --ckpt_path ...      validate a checkpoint
    healing-pl test     --config ... --ckpt_path ...      test a checkpoint
    healing-pl unlearn  --config ... --ckpt_path ...      unlearn an adversary's forget set
    healing-pl heal     --config ... --ckpt_path ...      unlearn, find twins, heal by fine-tuning
    healing-pl stream   --config ... --ckpt_path ...      benign + adversarial requests in rounds

(``grid`` and ``report`` are dispatched by :mod:`healing_pl.main` before this CLI.)
Every run writes to its own folder (``--run_dir``, default
``runs/<dataset>-<subcommand>-<time>``): ``config.yaml``, ``splits.json``,
``checkpoints/``, ``results.json``, ``ledger.jsonl`` and the W&B run under ``wandb/``.
Only global rank zero writes them; the subcommands print their summary from
``results.json``, so a run under ``ddp_spawn`` reports what its rank zero measured.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import sys

from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, _get_short_description

from healing_pl import records as rk
from healing_pl.adversary import SELECTORS
from healing_pl.console import quiet_console
from healing_pl.data.datamodule import HealingDataModule
from healing_pl.healing import TWIN_METRICS
from healing_pl.lock import RunLock
from healing_pl.models.classifier import Classifier, check_compatible, read_checkpoint
from healing_pl.phases.config import RENAMED_KEYS, RENAMED_VALUES, Tracking
from healing_pl.phases.identity import experiment_identity
from healing_pl.phases.record import read_record
from healing_pl.tracking import build_logger, finish_wandb, make_run_dir
from healing_pl.trainer import HealingTrainer
from healing_pl.unlearning import UNLEARNERS

#: import paths a value (config, command line, grid spec) may name: healing-pl's registries and Lightning's and
#: torch's own callbacks, loggers, optimizers and schedulers; everything else is denied before it is imported
IMPORT_ALLOWLIST = (
    "healing_pl.unlearning",
    "healing_pl.adversary",
    "healing_pl.healing",
    "lightning.pytorch.callbacks",
    "lightning.pytorch.loggers",
    "lightning.pytorch.profilers",
    "torch.optim",
)
#: allowed modules' members that take callables as arguments (a config could make them call anything)
IMPORT_DENYLIST = (
    "*",
    "lightning.pytorch.callbacks.LambdaCallback",
    "lightning.pytorch.callbacks.lambda_function",
    "torch.optim.lr_scheduler.LambdaLR",
    "torch.optim.lr_scheduler.MultiplicativeLR",
)
#: the environment variable through which whoever runs healing-pl (never a config file) trusts more import paths,
#: comma-separated: their own callbacks or loggers, e.g. ``mylab.callbacks.Probe``
ALLOW_IMPORTS_ENV = "HEALING_PL_ALLOW_IMPORTS"
#: the short names of the denied classes above (jsonargparse resolves a bare class name among the subclasses)
DENIED_CLASS_NAMES = ("LambdaCallback", "LambdaLR", "MultiplicativeLR")
#: options whose value is a class (a name or ``{class_path, init_args}``)
CLASS_OPTIONS = (
    "unlearn",
    "adversary",
    "twins.metric",
    "trainer.callbacks",
    "trainer.logger",
    "trainer.plugins",
    "trainer.profiler",
    "trainer.strategy",
    "trainer.accelerator",
    "optimizer",
    "lr_scheduler",
)


def _registered_paths() -> list[str]:
    """The import path of every class registered in a method family (also one registered outside healing_pl,
    e.g. a user's own method): what a registry offers is importable by name."""
    paths = []
    for registry in FAMILIES.values():
        for cls in registry.classes():
            path = f"{cls.__module__}.{cls.__qualname__}"
            if all(part.isidentifier() for part in path.split(".")):
                paths.append(path)
    return paths


def enforce_import_policy() -> None:
    """Make jsonargparse refuse (not only warn about) every import path outside :data:`IMPORT_ALLOWLIST` and
    the registered classes."""
    from jsonargparse import set_parsing_settings

    trusted = [p.strip() for p in os.environ.get(ALLOW_IMPORTS_ENV, "").split(",") if p.strip()]
    bad = [p for p in trusted if not all(part.isidentifier() for part in p.split("."))]
    if bad:
        raise ValueError(f"{ALLOW_IMPORTS_ENV} holds '{bad[0]}', which is not a dotted import path.")
    set_parsing_settings(
        import_path_denylist=list(IMPORT_DENYLIST),
        import_path_allowlist=[*IMPORT_ALLOWLIST, *_registered_paths(), *trusted],
    )


def _looks_importable(text: str) -> bool:
    """A dotted name whose first part is an importable top-level module (found, not imported)."""
    import importlib.util

    parts = text.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        return False
    try:
        return importlib.util.find_spec(parts[0]) is not None
    except (ImportError, ValueError):
        return False


def denied_import_path(value, key: str = "") -> str | None:
    """The first import path in an option's ``value`` that the policy refuses (None when there is none).

    Looked at: class paths (``{class_path: ...}`` and the values of :data:`CLASS_OPTIONS`) and any dotted name
    of an importable module inside ``init_args`` (a callable given as an argument)."""
    from jsonargparse._common import denying_import_path_entry

    def walk(node, where: str, is_class: bool, in_args: bool):
        if isinstance(node, str):
            if is_class and node.rsplit(".", 1)[-1] in DENIED_CLASS_NAMES:
                return node
            dotted = "." in node and all(p.isidentifier() for p in node.split("."))
            if (is_class and dotted) or (in_args and _looks_importable(node)):
                if denying_import_path_entry(node) is not None:
                    return node
            return None
        if isinstance(node, dict):
            for k, v in node.items():
                found = walk(v, f"{where}.{k}", k == "class_path", in_args or k in ("init_args", "dict_kwargs"))
                if found:
                    return found
        if isinstance(node, (list, tuple)):
            for v in node:
                found = walk(v, where, is_class, in_args)
                if found:
                    return found
        return None

    enforce_import_policy()
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    return walk(value, key, key in CLASS_OPTIONS, False)


def import_sentence(path: str, where: str) -> str:
    """One sentence for an import path the policy refuses."""
    return (
        f"{where} names '{path}', which healing-pl does not import from a configuration (allowed: its registered "
        "classes and Lightning's and torch's own callbacks, loggers, profilers and optimizers, without callable "
        "arguments)."
    )


#: the method families the subcommands choose by class: option -> registry
FAMILIES = {"unlearn": UNLEARNERS, "adversary": SELECTORS, "twins.metric": TWIN_METRICS}

#: exceptions that mean "bad input": printed as one sentence, exit status 2
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)
#: --ckpt_path values Lightning resolves itself (fit, validate, test)
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")
#: model arguments set from the datamodule when the classes are instantiated (not parsed)
LINKED_FROM_DATA = ("num_classes", "in_chans", "image_size")
#: the environment variable through which rank zero tells launched ranks the run folder
RUN_DIR_ENV = "HEALING_PL_RUN_DIR"


#: subcommand parsers built in this process (see HealingCLI._prepare_subcommand_parser)
_SUBCOMMAND_PARSERS: dict[tuple, tuple] = {}


class HealingCLI(LightningCLI):
    """LightningCLI of healing-pl (see the module docstring)."""

    def __init__(self, args=None, run: bool = True):
        enforce_import_policy()
        self._argv = sys.argv[1:] if args is None else list(args)
        super().__init__(
            Classifier,
            HealingDataModule,
            trainer_class=HealingTrainer,
            save_config_callback=None,  # the run's writer saves config.yaml on rank zero
            seed_everything_default=0,
            auto_configure_optimizers=False,
            args=args,
            run=run,
            parser_kwargs={"description": "healing-pl: adversarial unlearning and model healing experiments."},
        )

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        # a parser error raises (run_cli prints it as one sentence) instead of printing a page of usage
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), **HealingTrainer.extra_subcommands()}

    def parse_arguments(self, parser, args) -> None:
        argv = sys.argv[1:] if args is None else list(args)
        check_argv_imports(argv)
        self.config = parse_families(parser, argv, self.subcommands())

    def _parse_ckpt_path(self) -> None:
        # Lightning adopts the model hyperparameters saved in --ckpt_path; a broken file must stop cleanly
        self._checkpoint = None
        path = self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
        if path and path not in LIGHTNING_CKPT_NAMES:
            self._checkpoint = read_checkpoint(path)  # missing, empty, truncated or foreign: one sentence
            if _model_config_holds(self.config[self.config.subcommand], self._checkpoint):
                return  # Lightning would parse the whole command again (about 0.07 s) to set the same values
        try:
            super()._parse_ckpt_path()
        except Exception as err:  # torch raises several types for a file that is not a checkpoint
            raise ValueError(f"checkpoint '{path}' is corrupt or not a checkpoint ({type(err).__name__}).") from None

    def _dump_config(self) -> None:
        # Lightning's (the configuration its model and datamodule hyperparameters are taken from), without a second
        # validation of a configuration that parsing validated, and through JSON instead of a YAML round trip: the
        # same values (tests/test_cli.py compares them), about a third of a command's instantiation time
        if hasattr(self, "config_dump"):
            return
        dumped = self.parser.dump(
            self.config, skip_link_targets=False, skip_none=False, skip_validation=True, format="json"
        )
        self.config_dump = json.loads(dumped)
        if "subcommand" in self.config:
            self.config_dump = self.config_dump[self.config.subcommand]

    def _add_subcommands(self, parser, **kwargs) -> None:
        # A command that names its subcommand first gets that subcommand's parser alone: building all seven
        # costs about seven times as much (0.25 s against 0.04 s per command, which a grid's checks and the
        # tests pay hundreds of times). Anything else (`--help`, a misspelt subcommand) gets every parser.
        named = self._argv[0] if self._argv and str(self._argv[0]) in self.subcommands() else None
        if named is None:
            return super()._add_subcommands(parser, **kwargs)
        self._subcommand_parsers = {}
        description = _get_short_description(getattr(self.trainer_class, named))
        sub_kwargs = {"description": description, **kwargs.get(named, {})}
        self._subcommand_parsers[named] = self._prepare_subcommand_parser(self.trainer_class, named, **sub_kwargs)
        parser.add_subcommands().add_subcommand(named, self._subcommand_parsers[named], help=description)

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        # Built once per process and reused by later commands (a parser only reads its arguments): building one
        # costs about 0.1 s, which a grid's checks and the tests pay hundreds of times. The key holds everything
        # the build reads, the registered classes included, so a class registered later gets a fresh parser.
        registered = tuple(cls for registry in FAMILIES.values() for cls in registry.classes())
        key = (type(self), klass, subcommand, repr(sorted(kwargs.items())), registered)
        if key not in _SUBCOMMAND_PARSERS:
            # as_group=False: the `unlearn` subcommand has an `unlearn` argument group of its own
            parser = self.init_parser(**kwargs)
            self._add_arguments(parser)
            skip = set(self.subcommands()[subcommand])
            arguments = parser.add_method_arguments(klass, subcommand, skip=skip, as_group=False)
            _SUBCOMMAND_PARSERS[key] = (parser, arguments)
        parser, self._subcommand_method_arguments[subcommand] = _SUBCOMMAND_PARSERS[key]
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="Folder of this run (default: runs/<dataset>-<subcommand>-<time>).",
        )
        parser.add_argument("--wandb", type=Tracking, default=Tracking(), help="Weights & Biases tracking.")
        for key in LINKED_FROM_DATA:
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
        # the datamodule shards each global batch across ranks itself (so N ranks train like one process),
        # and every rank evaluates the full validation set
        parser.set_defaults(
            {"trainer.max_epochs": 10, "trainer.log_every_n_steps": 10, "trainer.use_distributed_sampler": False}
        )

    # ------------------------------------------------------------------ setup
    def _cfg(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def _run_dir(self, cfg) -> str:
        """``--run_dir``, else a fresh timestamped folder chosen by rank zero (launched ranks inherit it)."""
        if cfg.run_dir:
            return cfg.run_dir
        if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(RUN_DIR_ENV):
            return os.environ[RUN_DIR_ENV]
        run_dir = make_run_dir("runs", f"{cfg.data.dataset}-{self.subcommand}")
        os.environ[RUN_DIR_ENV] = run_dir  # ranks launched by `ddp` re-run this command with this environment
        return run_dir

    def instantiate_trainer(self, **kwargs):
        cfg = self._cfg()
        self.run_dir = self._run_dir(cfg)
        check_run_dir(self.run_dir)
        preflight(self.subcommand, cfg, getattr(self, "_checkpoint", None))
        # validated by parsing already (a second validation is most of a dump's cost)
        dumped = self._parser(self.subcommand).dump(cfg, skip_none=False, skip_validation=True, format="json")
        run_config = json.loads(dumped)
        hold_run_dir(self.run_dir, self.subcommand, run_config)
        if getattr(self, "_checkpoint", None) is not None:  # every subcommand: a checkpoint of another data set
            check_compatible(self.model, self._checkpoint, cfg.ckpt_path, dataset=self.datamodule.hparams.dataset)
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        logger = trainer_cfg.get("logger")
        if logger is None or logger is True:
            logger = build_logger(cfg.wandb, self.run_dir, self.subcommand, run_config) or False
        callbacks = [ModelCheckpoint(dirpath=os.path.join(self.run_dir, "checkpoints"), save_last=True, save_top_k=0)]
        if trainer_cfg.get("enable_checkpointing") is False or self.subcommand not in ("fit", "heal"):
            callbacks = []
        user_callbacks = trainer_cfg.get("callbacks") or []
        kwargs.setdefault(
            "callbacks", (user_callbacks if isinstance(user_callbacks, list) else [user_callbacks]) + callbacks
        )
        kwargs.setdefault("default_root_dir", self.run_dir)
        kwargs.setdefault("logger", logger)
        trainer = super().instantiate_trainer(**kwargs)
        trainer.run_dir = self.run_dir
        trainer.run_config = run_config
        if self.subcommand == "fit":
            trainer.callbacks.extend(trainer.baseline_fit_callbacks())
        return trainer

    # ------------------------------------------------------------- subcommands
    def before_fit(self) -> None:
        if self.trainer.max_epochs == 0:
            raise ValueError("trainer.max_epochs must be at least 1 for fit (or -1 with max_steps).")
        self._print_data()

    def before_unlearn(self) -> None:
        self._print_data()

    before_heal = before_stream = before_unlearn

    def _print_data(self) -> None:
        if self.trainer.is_global_zero:
            print(self.datamodule.summary())

    def after_fit(self) -> None:
        record = self._record()
        if record is not None:
            print(
                f"test accuracy: {record[rk.FIT_TEST_ACC]:.4f} (after {record[rk.TRAIN_EPOCHS]} epochs, "
                f"{record[rk.TRAIN_TIME_S]:.1f} s)"
            )

    def after_unlearn(self) -> None:
        self._record()

    after_heal = after_stream = after_unlearn

    def _record(self) -> dict | None:
        """Print what rank zero recorded (read back from results.json) and return it."""
        if not self.trainer.is_global_zero or self.trainer.interrupted:
            return None
        record = read_record(self.run_dir)
        if record is None:
            raise RuntimeError(f"the run finished but wrote no results to '{self.run_dir}'.")
        if record["phase"] != "fit":
            print(phase_summary(record))
        print(f"results written to {os.path.join(self.run_dir, 'results.json')}")
        return record


def _model_config_holds(cfg, checkpoint: dict) -> bool:
    """Whether the parsed ``model`` section already holds every hyperparameter saved in ``checkpoint`` (same
    value, same type): then adopting them, as Lightning does for ``--ckpt_path``, would change nothing. The
    arguments linked from the datamodule are not parsed values: the datamodule sets them either way."""
    model = cfg.get("model")
    hparams = checkpoint.get("hyper_parameters", {})
    saved = {k: v for k, v in hparams.items() if not str(k).startswith("_") and k not in LINKED_FROM_DATA}
    if model is None or not saved or "_class_path" in hparams:
        return False
    return all(k in model and type(model[k]) is type(v) and model[k] == v for k, v in saved.items())


def check_run_dir(run_dir: str) -> None:
    """Stop (before anything is written) when ``run_dir`` cannot be a folder this process writes into."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"run_dir '{run_dir}' is an existing file, not a folder.")
    parent = os.path.dirname(os.path.normpath(run_dir)) or "."
    while not os.path.exists(parent):
        parent = os.path.dirname(parent) or "."
    if not os.path.isdir(parent):
        raise ValueError(f"run_dir '{run_dir}' cannot be created: '{parent}' is a file, not a folder.")
    existing = run_dir if os.path.isdir(run_dir) else parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"run_dir '{run_dir}' cannot be written: '{existing}' is read-only.")


def _splits_of(checkpoint) -> dict | None:
    """The datamodule's splits saved in a baseline checkpoint (id tensors by name), if any."""
    state = (checkpoint or {}).get("HealingDataModule") if isinstance(checkpoint, dict) else None
    splits = state.get("splits") if isinstance(state, dict) else None
    return splits if isinstance(splits, dict) else None


def _names_every(path: str, primary: set[int]) -> bool:
    """Whether a requests file names every sample of ``primary`` by id (lines that are not plain requests are
    left to its reader); memory follows ``primary``, not the file."""
    missing = set(primary)
    with open(path, "rb") as f:
        for line in f:
            try:
                value = json.loads(line).get("sample_id")
            except (ValueError, AttributeError):
                continue
            if isinstance(value, int) and not isinstance(value, bool):
                missing.discard(value)
                if not missing:
                    return True
    return False


def preflight(subcommand: str, cfg, checkpoint) -> None:
    """The checks that can fail before work starts, run before the first file (lock, ledger line, W&B folder).

    Against the baseline checkpoint's splits: an adversary's budget that would take the whole training set
    (``--adversary.budget 1.0``: a fraction, so all of it) and a twins policy asking for more surrogates per
    sample (``--twins.k``) than the backup set holds."""
    splits = _splits_of(checkpoint)
    if subcommand not in ("unlearn", "heal", "stream") or splits is None:
        return
    n_train = len(splits.get("primary", ()))
    adversary = cfg.get("adversary") if cfg.get("requests") is None else None
    budget = ((adversary or {}).get("init_args") or {}).get("budget") if adversary is not None else None
    if isinstance(budget, (int, float)) and not isinstance(budget, bool) and n_train:
        count = int(budget * n_train + 0.5) if isinstance(budget, float) else int(budget)
        if subcommand != "stream" and count == n_train:  # a larger one: the selector says it exceeds the set
            raise ValueError(
                f"adversary.budget {budget} asks for {count} of the {n_train} training samples; nothing would remain "
                "to train on (a float is a fraction of the training set, an int a count)."
            )
    requests = cfg.get("requests")
    if requests and os.path.isfile(requests) and n_train and subcommand != "stream":
        primary = {int(i) for i in splits.get("primary", ())}
        if primary and _names_every(requests, primary):
            raise ValueError(
                f"requests file '{requests}' names every one of the {n_train} training samples; nothing would "
                "remain to train on."
            )
    twins = cfg.get("twins") if subcommand == "heal" else None
    if twins is not None and twins.get("policy") == "twins" and twins.get("metric") is not None:
        n_backup = len(splits.get("backup", ()))
        if int(twins.get("k") or 0) > n_backup:
            raise ValueError(
                f"twins.k {twins.get('k')} asks for more surrogates per sample than the {n_backup} backup samples "
                "the twins policy can choose from."
            )


#: the run folder locks this process holds (released when the command ends, or by the OS when it dies)
_HELD: list[RunLock] = []


def _is_launched_rank() -> bool:
    """A rank other than the global zero of a multi-process run: launched by Lightning's ``ddp`` (LOCAL_RANK,
    RANK) or by SLURM's ``srun`` with several tasks (SLURM_PROCID), where Lightning sets neither variable."""
    if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("RANK", "0") != "0":
        return True
    tasks = os.environ.get("SLURM_NTASKS", "1")
    return tasks.isdigit() and int(tasks) > 1 and os.environ.get("SLURM_PROCID", "0") != "0"


def run_identity(subcommand: str, config: dict) -> dict:
    """What a run folder must keep computing: the experiment identity with its seeds and, except for ``fit``,
    the sha256 of the baseline checkpoint (see :mod:`healing_pl.phases.identity`)."""
    identity = experiment_identity(subcommand, config)
    ckpt = config.get("ckpt_path")
    sha = None
    if subcommand != "fit" and ckpt and ckpt not in LIGHTNING_CKPT_NAMES and os.path.isfile(ckpt):
        digest = hashlib.sha256()
        with open(ckpt, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        sha = digest.hexdigest()
    return {"subcommand": subcommand, "config": identity["config"], "seeds": identity["seeds"], "baseline": sha}


def _recorded_identity(run_dir: str) -> dict | None:
    """The identity of a folder finished before identity files existed (from its results.json), if any."""
    try:
        record = read_record(run_dir)
    except (OSError, ValueError):
        return None
    experiment = (record or {}).get(rk.EXPERIMENT)
    if not isinstance(experiment, dict):
        return None
    return {
        "subcommand": experiment.get("subcommand"),
        "config": experiment.get("config"),
        "seeds": experiment.get("seeds"),
        "baseline": (experiment.get("baseline") or {}).get("sha256"),
    }


def hold_run_dir(run_dir: str, subcommand: str, config: dict) -> None:
    """Lock ``run_dir`` for this command's whole life and check that it holds this experiment (or none yet).

    Launched ranks of a ``ddp`` run share rank zero's lock."""
    if _is_launched_rank():
        return
    lock = RunLock(run_dir).acquire()
    _HELD.append(lock)
    lock.check_identity(run_identity(subcommand, config), fallback=_recorded_identity(run_dir))


def release_run_dirs() -> None:
    """Release every run folder lock this process holds (the command ended)."""
    while _HELD:
        _HELD.pop().release()


def check_argv_imports(argv: list) -> None:
    """Stop (before the parser imports anything) at a command-line class path the import policy refuses.

    jsonargparse refuses them too once :func:`enforce_import_policy` ran; this names the option in one sentence.
    Config files are checked by jsonargparse itself as it reads them."""
    for group in _groups(list(argv)):
        first = str(group[0])
        if not first.startswith("--"):
            continue
        key, _, inline = first[2:].partition("=")
        value = inline if inline else (group[1] if len(group) > 1 else None)
        if value is None:
            continue
        if key == "config" and os.path.isfile(value):
            check_config_imports(value)
            continue
        denied = denied_import_path(value, key)
        if denied:
            raise ValueError(import_sentence(denied, f"--{key}"))


def check_config_imports(path: str, tree=None, prefix: str = "") -> None:
    """Stop at a class path in a config file that the import policy refuses (one sentence naming the key)."""
    if tree is None:
        import yaml

        try:
            with open(path, encoding="utf-8") as f:
                tree = yaml.safe_load(f)
        except (OSError, ValueError, yaml.YAMLError):
            return  # the parser names what is wrong with the file
    if not isinstance(tree, dict):
        return
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and "class_path" not in value and dotted not in CLASS_OPTIONS:
            check_config_imports(path, value, f"{dotted}.")
            continue
        denied = denied_import_path(value, dotted)
        if denied:
            raise ValueError(import_sentence(denied, f"{dotted} in '{path}'"))


def _choose_defaults(argv: list, options, subcommands) -> list:
    """``argv`` with ``--<option>=<default class>`` for each of ``options``, right after the subcommand (so a
    config file or a later ``--<option>`` still chooses another)."""
    from healing_pl.trainer import DEFAULT_CLASSES

    at = next((i + 1 for i, arg in enumerate(argv) if arg in subcommands), 0)
    return [*argv[:at], *(f"--{option}={DEFAULT_CLASSES[option]}" for option in options), *argv[at:]]


def _groups(argv: list) -> list[list]:
    """``argv`` as option groups: ``["--key=value"]`` or ``["--key", "value"]`` (or a lone token)."""
    groups: list[list] = []
    i = 0
    while i < len(argv):
        arg = str(argv[i])
        takes_value = arg.startswith("--") and "=" not in arg and i + 1 < len(argv)
        if takes_value and not str(argv[i + 1]).startswith("--"):
            groups.append([argv[i], argv[i + 1]])
            i += 2
        else:
            groups.append([argv[i]])
            i += 1
    return groups


def knobs_after_class(argv: list, options) -> list:
    """``argv`` with each family's knobs (``--unlearn.alpha 5``) moved behind the class chosen after them
    (``--unlearn Fisher``): knobs belong to the class the command chooses, wherever they stand."""
    groups = _groups(list(argv))
    for option in options:
        is_class = [str(g[0]) == f"--{option}" or str(g[0]).startswith(f"--{option}=") for g in groups]
        if not any(is_class):
            continue
        last = max(i for i, c in enumerate(is_class) if c)
        early = [i for i in range(last) if str(groups[i][0]).startswith(f"--{option}.")]
        moved = [groups[i] for i in early]
        groups = [g for i, g in enumerate(groups) if i not in early]
        last -= len(early)
        groups[last + 1 : last + 1] = moved
    return [token for g in groups for token in g]


def parse_families(parser, argv: list, subcommands=()):
    """Parse ``argv``; a method family that nothing chose gets its default class at that class's defaults.

    The family parameters default to None rather than to an instance: jsonargparse carries a previous class's
    knob values over to a class chosen after it, so a parsed default Fisher would hand its ``alpha`` to
    ``--unlearn SSD``. Only when no config file and no option chose a class (the value is None, or knobs were
    given with no class to belong to) is the command parsed again with the default class in front. Then every
    knob named on the command line is checked against the chosen class (:func:`check_family_knobs`).

    Most commands choose no class on the command line and none in their config file: they are parsed once, with
    the default classes in front, and the result is kept when every such family holds its default class (equal
    to the two parses above; tests/test_registries.py compares them).
    """
    from healing_pl.trainer import DEFAULT_CLASSES

    enforce_import_policy()  # again: a class registered since the parser was built is allowed too

    def sub(config):
        return config[config.subcommand] if config.get("subcommand") else config

    argv = knobs_after_class(list(argv), DEFAULT_CLASSES)

    chosen = {o for o in DEFAULT_CLASSES if any(str(a) == f"--{o}" or str(a).startswith(f"--{o}=") for a in argv)}
    # --print_config prints while parsing: probe without it first, so that it shows the default classes too
    probe = [a for a in argv if not str(a).startswith("--print_config")]
    guess = _guessed_defaults(argv, chosen, subcommands) if len(probe) == len(argv) else None
    if guess:
        try:
            config = parser.parse_args(_choose_defaults(list(argv), guess, subcommands))
        except ArgumentError:
            config = None  # the parse below gives the error as it always does
        # a config file that chose another class after the inserted default: parse as below (jsonargparse 4.53
        # replaces the default whole, but a knob the default set must never reach that class)
        if config is not None and all(_class_name(sub(config)[o]) == DEFAULT_CLASSES[o] for o in guess):
            check_family_knobs(sub(config), list(argv))
            return config
    missing: list[str] = []
    while True:
        try:
            config = parser.parse_args(_choose_defaults(probe, missing, subcommands))
            break
        except ArgumentError as err:  # knobs (or a config's init_args) with no class to belong to: the default's
            text = str(err)
            found = [o for o in DEFAULT_CLASSES if o not in chosen.union(missing) and f'Parser key "{o}"' in text]
            if not found:
                raise
            missing += found
    missing += [
        o
        for o in DEFAULT_CLASSES
        if o not in missing and o not in chosen and o in sub(config) and sub(config)[o] is None
    ]
    check_family_knobs(sub(config), list(argv))
    if missing or len(probe) != len(argv):
        config = parser.parse_args(_choose_defaults(list(argv), missing, subcommands))
    return config


def _guessed_defaults(argv: list, chosen: set, subcommands) -> list[str]:
    """The families the command's subcommand has and its command line does not choose."""
    from healing_pl.trainer import DEFAULT_CLASSES, HealingTrainer

    subcommand = next((str(a) for a in argv if str(a) in subcommands), None)
    method = getattr(HealingTrainer, subcommand, None) if subcommand else None
    if method is None:
        return []
    parameters = inspect.signature(method).parameters
    return [o for o in DEFAULT_CLASSES if o in parameters and o not in chosen]


def _class_name(value) -> str | None:
    """The short class name a parsed family value chose (None when it chose none)."""
    path = value.get("class_path") if value is not None and hasattr(value, "get") else None
    return str(path).rsplit(".", 1)[-1] if path else None


def _given_knobs(argv: list, option: str) -> list[str]:
    """The knobs of ``option`` named on the command line (``--unlearn.alpha 5``, ``--unlearn.alpha=5``)."""
    prefix = f"--{option}."
    knobs = []
    for arg in argv:
        if isinstance(arg, str) and arg.startswith(prefix):
            knob = arg[len(prefix) :].split("=", 1)[0]
            if knob != "help" and "." not in knob:
                knobs.append(knob)
    return knobs


def check_family_knobs(cfg, argv: list) -> None:
    """Stop when the command line names a knob that the chosen class does not have.

    jsonargparse rejects ``--unlearn Influence --unlearn.alpha 5``, but silently drops a knob given *before*
    the class is chosen (``--unlearn.alpha 5 --unlearn Influence``): both stop here with one sentence.
    """
    for option, registry in FAMILIES.items():
        given = _given_knobs(argv, option)
        if not given:
            continue
        chosen = cfg
        for part in option.split("."):
            chosen = chosen.get(part) if chosen is not None else None
        if chosen is None:  # twins.metric null: no metric has knobs
            raise ValueError(f"--{option}.{given[0]} is given, but {option} is null (no class chosen).")
        cls = registry.by_class_name(str(chosen["class_path"]))
        knobs = cls.knob_names()
        wrong = [k for k in given if k not in knobs]
        if wrong:
            raise ValueError(_not_a_knob(option, wrong[0], cls.__name__, knobs))


def _not_a_knob(option: str, knob: str, class_name: str, knobs: list[str]) -> str:
    """One sentence for a knob that the chosen class does not have (or an option that was renamed)."""
    renamed = RENAMED_KEYS.get(f"{option}.{knob}")
    if renamed:
        return f"--{option}.{knob} is gone; use {renamed}."
    return (
        f"{option}.{knob} is not a knob of {class_name} (its knobs: {', '.join(knobs) or 'none'}); "
        f"see --{option}.help {class_name}."
    )


def phase_summary(record: dict) -> str:
    """A few lines that sum up an unlearn, heal or stream run."""
    keys = [
        (rk.BASELINE_TEST_ACC, "baseline"),
        (rk.GOLD_TEST_ACC, "gold standard"),
        (rk.SISA_TEST_ACC, "SISA"),
        (rk.UNLEARNED_TEST_ACC, "unlearned"),
        (rk.ATTACK_RANDOM_TEST_ACC, "unlearned (random set)"),
        (rk.healed_test_acc(1), "healed, 1 epoch"),
        (rk.STREAM_FINAL_TEST_ACC, "after the whole stream"),
    ]
    epochs = record.get(rk.HEAL_EPOCHS)
    if epochs and epochs > 1:
        keys.append((rk.healed_test_acc(epochs), f"healed, {epochs} epochs"))
    who = record.get(rk.ADVERSARY_SELECTOR)
    where = record.get(rk.REQUESTS_FILE)
    source = f"requested in {where}" if who == rk.REQUESTS_SELECTOR else f"chosen by '{who}'"
    lines = [f"forget set: {record.get(rk.FORGET_COUNT)} samples {source}"]
    lines += [f"  {label:<24} test accuracy {record[k]:.4f}" for k, label in keys if record.get(k) is not None]
    return "\n".join(lines)


def _failed_rank(err: Exception) -> tuple[int, str]:
    """Exit status and sentence for a training process that raised (its traceback's last line)."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else str(err)
    match = re.match(r"^\s*(?:[\w.]+\.)?(\w+): (.*)$", last)
    if match and match.group(1) in {e.__name__ for e in USER_ERRORS}:
        return 2, match.group(2)
    return 1, f"a training process failed: {last.strip()}"


def run_cli(args=None) -> int:
    """Run the LightningCLI; bad input ends with one sentence and exit status 2, a failed rank with status 1."""
    from torch.multiprocessing.spawn import ProcessException

    quiet_console()  # Lightning's tip lines and known harmless warnings (healing_pl.tracking.KNOWN_WARNINGS)
    try:
        HealingCLI(args=args)
    except USER_ERRORS as err:
        if os.environ.get("HEALING_PL_DEBUG"):
            raise
        while isinstance(err.__cause__, USER_ERRORS):  # a class's own check, wrapped by the parser: its sentence
            err = err.__cause__
        print(f"healing-pl: error: {err}", file=sys.stderr)
        return 2
    except ProcessException as err:  # a rank of a spawned run raised or died
        if os.environ.get("HEALING_PL_DEBUG"):
            raise
        code, sentence = _failed_rank(err)
        print(f"healing-pl: error: {sentence}", file=sys.stderr)
        return code
    except ArgumentError as err:  # the parser's own errors: a config typo, a wrong type, an unknown choice
        if os.environ.get("HEALING_PL_DEBUG"):
            raise
        argv = sys.argv[1:] if args is None else list(args)
        subcommand = argv[0] if argv and argv[0] in HealingCLI.subcommands() else None
        print(f"healing-pl: error: {parser_sentence(str(err), subcommand)}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # the parser's own errors (a config typo) and --help / --print_config
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    finally:
        finish_wandb()
        release_run_dirs()
        if os.environ.get("LOCAL_RANK", "0") == "0":
            _release(os.environ.pop(RUN_DIR_ENV, None))  # the next command in this process picks its own folder
    return 0


def _release(claimed: str | None) -> None:
    """Remove a run folder this command claimed but left empty (it stopped before writing), and ``runs/``
    if that is empty too: a command that fails on bad input leaves no trace."""
    for folder in (claimed, os.path.dirname(claimed or "")):
        if folder and os.path.isdir(folder) and not os.listdir(folder):
            try:
                os.rmdir(folder)
            except OSError:
                return


def _family_sentence(text: str) -> str | None:
    """A parser error about a method family's class or knob (``--unlearn``, ``--adversary``, ``--twins.metric``)."""
    key = re.match(r'^Parser key "([\w.]+)":', text)
    option = key.group(1) if key else None
    if option not in FAMILIES:
        return None
    registry = FAMILIES[option]
    knob = re.search(r"class_path '([\w.]+)'.*?(?:Option|Key) '([\w.]+)' is not accepted", text)
    if knob:
        cls = registry.by_class_name(knob.group(1))
        knobs = cls.knob_names()
        return _not_a_knob(option, knob.group(2), cls.__name__, knobs)
    typed = re.search(
        r"class_path '[\w.]+'.*?Parser key \"(\w+)\": Expected a <class '(\w+)'>\. Got value: (\S+)", text
    )
    if typed:
        return f"{option}.{typed.group(1)} must be of type {typed.group(2)}, got '{typed.group(3)}'."
    given = re.search(r"(?:import path string|Given value|Got value|class_path): '?([^'\s]+)'?", text)
    value = given.group(1).rstrip(".") if given else "?"
    old = RENAMED_KEYS.get(f"{option}.{value}")
    if old:
        return f"--{option}.{value} is gone; use {old}."
    if value in RENAMED_VALUES.get(option, {}):
        return f"--{option} {value} names the class the old way; use --{option} {RENAMED_VALUES[option][value]}."
    return f"unknown {registry.family} '{value}' for --{option}; choose one of {', '.join(registry.class_names())}."


def parser_sentence(message: str, subcommand: str | None = None) -> str:
    """A parser error (jsonargparse's can span lines, one per type it tried) as one sentence."""
    text = " ".join(line.strip() for line in message.strip().splitlines() if line.strip())
    help_hint = f"; see 'healing-pl {subcommand or '<subcommand>'} --help'"
    family = _family_sentence(text)
    if family:
        return family
    choice = re.match(r'^Parser key "([\w.]+)": Expected a typing\.Literal\[(.*)\]\. Got value: (.*)$', text)
    if choice:
        options = ", ".join(o.strip().strip("'\"") for o in choice.group(2).split(","))
        return f"unknown {choice.group(1)} '{choice.group(3)}'; choose one of {options}."
    typed = re.match(r"^Parser key \"([\w.]+)\": Expected a <class '(\w+)'>\. Got value: (.*)$", text)
    if typed:
        return f"{typed.group(1)} must be of type {typed.group(2)}, got '{typed.group(3)}'."
    union = re.match(
        r'^Parser key "([\w.]+)": Does not validate against any of the Union subtypes Subtypes: \[(.*?)\]', text
    )
    if union:
        kinds = [k for k in re.findall(r"<class '(\w+)'>", union.group(2)) if k != "NoneType"] or ["valid"]
        given = re.search(r"Given value: (.*)$", text)
        got = f", got '{given.group(1)}'" if given else ""
        return f"{union.group(1)} must be {' or '.join(kinds)}{got}."
    missing = re.match(r'^Parser key "([\w.]+)": File does not exist: (.*)$', text)
    if missing:
        return f"{missing.group(1)} file {missing.group(2).rstrip('.')} does not exist."
    unknown = re.match(r"^unrecognized arguments: (.*)$", text)
    if unknown:
        return f"unknown option {unknown.group(1)}{help_hint} for the options."
    text = re.sub(r'^Parser key "([\w.]+)": ', r"\1: ", text)
    return text if text.endswith(".") else f"{text}."
