"""The method families on the command line: each registry and the CLI offer the same classes, a knob of another
class stops with one sentence, the help stays short, a new method is one class, and old grid keys name the new ones.

Everything here parses (or asks for help); nothing trains.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re

import pytest
import torch
import yaml

from healing_pl.cli import FAMILIES, run_cli
from healing_pl.data.datamodule import HealingDataModule
from healing_pl.experiments.check import CommandChecker
from healing_pl.experiments.spec import load_spec
from healing_pl.models.classifier import Classifier, evaluate
from healing_pl.unlearning import UNLEARNERS, Unlearner, copy_model, unlearn_with_repeats
from healing_pl.unlearning.base import RUN_KNOBS


@pytest.fixture(scope="module")
def checker():
    """The parser of HealingCLI, built without running anything."""
    return CommandChecker()


def _heal(configs_dir, *options: str) -> list[str]:
    return ["heal", "--config", f"{configs_dir}/mnist5k.yaml", "--ckpt_path", "x", *options]


def _help(capsys, argv: list[str], columns: int) -> str:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", str(columns))  # argparse wraps the help to the terminal's width
        assert run_cli(argv) == 0
    return capsys.readouterr().out


def _option_block(text: str, option: str) -> str:
    """The help of ``--<option> <METAVAR>``: its line up to the next option's."""
    match = re.search(rf"^  --{re.escape(option)} [A-Z_]+.*?(?=^  --)", text, flags=re.M | re.S)
    assert match, f"--{option} is not in the help"
    return match.group(0)


def _import(class_path: str) -> type:
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


# --------------------------------------------------------------------------- (1) registry = CLI choices
@pytest.mark.parametrize("option", list(FAMILIES))
def test_every_registered_class_is_a_cli_choice(checker, configs_dir, option):
    registry = FAMILIES[option]
    assert len(registry) > 0
    for cls in registry.classes():  # parsed only (ClassSelector, e.g., is built with a target_class)
        config = checker.parser.parse_args(_heal(configs_dir, f"--{option}", cls.__name__))["heal"]
        assert _import(str(config[option]["class_path"])) is cls, (option, cls)


def _defaults(cls: type) -> dict:
    """The default of every constructor argument of ``cls`` and of the bases it forwards ``**kwargs`` to."""
    defaults: dict = {}
    for klass in cls.__mro__:
        if "__init__" in klass.__dict__ and klass is not object:
            for p in inspect.signature(klass.__dict__["__init__"]).parameters.values():
                if p.default is not p.empty:
                    defaults.setdefault(p.name, p.default)
    return defaults


@pytest.mark.parametrize("option", list(FAMILIES))
def test_a_chosen_class_starts_from_its_own_defaults(checker, configs_dir, option):
    """``--unlearn SSD`` runs SSD at SSD's defaults, not with the values the default class (Fisher) gives the knobs
    of the same name (``alpha``, ``lam``)."""
    wrong = {}  # class -> knob -> (parsed, its default)
    for cls in FAMILIES[option].classes():
        config = checker.parser.parse_args(_heal(configs_dir, f"--{option}", cls.__name__))["heal"]
        init_args = config[option].get("init_args")
        defaults = _defaults(cls)
        for knob, value in (init_args.as_dict() if init_args is not None else {}).items():
            if knob in defaults and value != defaults[knob]:
                wrong.setdefault(cls.__name__, {})[knob] = (value, defaults[knob])
    assert not wrong, f"--{option}: (parsed, default) {wrong}"


def test_a_seed_before_the_class_keeps_the_class_defaults(checker, configs_dir):
    """A grid with seeds puts ``--unlearn.seed`` before ``--unlearn <Class>``: the seed reaches the class, which
    otherwise keeps its own defaults."""
    wrong = {}
    for cls in UNLEARNERS.classes():
        config = checker.parse(_heal(configs_dir, "--unlearn.seed=3", f"--unlearn={cls.__name__}"))
        assert _import(str(config["unlearn"]["class_path"])) is cls
        expected = {**_defaults(cls), "seed": 3}
        got = config["unlearn"]["init_args"].as_dict()
        if got != expected:
            wrong[cls.__name__] = {k: (v, expected.get(k)) for k, v in got.items() if v != expected.get(k)}
    assert not wrong, f"(parsed, expected) {wrong}"


def test_twins_metric_null_chooses_no_metric(checker, configs_dir):
    assert checker.parser.parse_args(_heal(configs_dir, "--twins.metric", "null"))["heal"]["twins.metric"] is None


CONFIG_CHOICES = {
    "no class": {},
    "the default class, a knob": {"unlearn": {"class_path": "Fisher", "init_args": {"alpha": 1e-5}}},
    "other classes": {"unlearn": {"class_path": "SSD"}, "adversary": {"class_path": "ClassSelector"}},
    "a knob, no class": {"unlearn": {"init_args": {"alpha": 2e-5}}, "twins": {"metric": None}},
}


@pytest.mark.parametrize("choice", list(CONFIG_CHOICES))
@pytest.mark.parametrize(
    "options", [[], ["--unlearn.alpha=1e-6"], ["--adversary=ClassSelector", "--unlearn.alpha=3e-6"]]
)
def test_one_parse_gives_what_parsing_again_with_the_default_classes_gives(
    checker, configs_dir, tmp_path, monkeypatch, choice, options
):
    """A command whose config file chooses no other class is parsed once, with the default classes in front; the
    result (or the error) equals the two-step parse: the command first, then again with the default classes of
    the families nothing chose."""
    import healing_pl.cli as cli

    config = tmp_path / "choice.yaml"
    config.write_text(yaml.safe_dump(CONFIG_CHOICES[choice]))
    argv = ["heal", "--config", f"{configs_dir}/digits.yaml", "--config", str(config), *options]
    results = []
    for guessing in (True, False):
        if not guessing:
            monkeypatch.setattr(cli, "_guessed_defaults", lambda *args: [])
        try:
            results.append(cli.parse_families(checker.parser, argv, cli.HealingCLI.subcommands()))
        except Exception as err:  # the same error either way
            results.append((type(err), str(err)))
    assert results[0] == results[1]


def test_every_cli_choice_is_a_registered_class(capsys):
    """The subclasses jsonargparse offers (``known subclasses:`` of ``--help``) are the registry's classes.

    Test modules define unregistered subclasses of the bases at module level (they are offered too once
    collected, and refused when built): the package's own offers must equal the registry."""
    text = _help(capsys, ["heal", "--help"], columns=100_000)  # no wrapping inside a class path
    for option, registry in FAMILIES.items():
        known = re.search(r"known subclasses: ([^)]*)\)", _option_block(text, option))
        assert known, f"--{option} lists no subclasses"
        paths = [p.strip() for p in known.group(1).split(",")]
        offered = {_import(p) for p in paths if p.startswith("healing_pl.")}
        assert offered == set(registry.classes()), option
        assert len(offered) == len([p for p in paths if p.startswith("healing_pl.")]), f"{option}: a class twice"


# --------------------------------------------------------------------------- (2) a knob of another class
def _tree(folder) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), folder) for d, dirs, files in os.walk(folder) for f in dirs + files
    )


@pytest.mark.parametrize("knob_first", [False, True], ids=["class-first", "knob-first"])
def test_a_knob_of_another_class_stops_with_one_sentence_and_writes_nothing(in_tmp, configs_dir, capsys, knob_first):
    chosen, knob = ["--unlearn", "Influence"], ["--unlearn.alpha", "5"]
    before = _tree(in_tmp)
    argv = ["heal", "--config", f"{configs_dir}/mnist5k.yaml", *(knob + chosen if knob_first else chosen + knob)]
    assert run_cli(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "unlearn.alpha" in lines[0] and "Influence" in lines[0], lines[0]
    assert _tree(in_tmp) == before


# --------------------------------------------------------------------------- (3) the help
def test_the_unlearning_part_of_the_help_is_short(capsys):
    lines = _help(capsys, ["heal", "--help"], columns=80).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  --unlearn.help"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("  --adversary"))
    assert end - start <= 40, "\n".join(lines[start:end])


def test_the_help_of_a_method_lists_its_knobs_only(capsys):
    text = _help(capsys, ["heal", "--unlearn.help", "Fisher"], columns=80)
    listed = set(re.findall(r"^  --unlearn\.(\w+)", text, flags=re.M))
    fisher = UNLEARNERS["fisher"]
    assert listed == set(fisher.knob_names())
    others = {k for cls in UNLEARNERS.classes() for k in cls.knob_names()} - set(fisher.knob_names())
    assert "damping" in others and "epochs" in others
    assert not re.search(rf"--unlearn\.({'|'.join(others)})\b", text)


# --------------------------------------------------------------------------- (4) a new method is one class
class Identity(Unlearner):
    """A test method that forgets nothing: the unlearned model is a copy of the input."""

    name = "identity"
    label = "Identity"

    def run(self, model, datamodule, forget_ids, context, seed):
        return copy_model(model), {"copied": True}


@pytest.fixture
def identity():
    UNLEARNERS.register(Identity)
    try:
        yield Identity
    finally:
        UNLEARNERS.unregister(Identity.name)
    assert "identity" not in UNLEARNERS


def test_a_new_method_runs_through_the_repeats(identity):
    dm = HealingDataModule("digits", primary=0.6, backup=0.15, val=0.1, seed=0)
    torch.manual_seed(0)
    model = Classifier(backbone="small_cnn", num_classes=10, in_chans=1, image_size=8, lr=3e-3).eval()
    forget = dm.primary_ids[:5]
    method = UNLEARNERS["identity"](cache_dir=None)
    assert not method.stochastic and method.knob_names() == ["seed", *RUN_KNOBS]
    assert method.hyperparameters() == {"method": "identity", "seed": 0}
    result = unlearn_with_repeats(model, dm, forget, method)
    assert result.model is not model and result.info == {"copied": True} and result.representative == 0
    assert all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(), model.state_dict().values()))
    assert result.accs == [evaluate(model, dm.test_dataloader())["acc"]]


def test_a_new_method_is_a_cli_choice(identity, checker, configs_dir):
    config = checker.parse(_heal(configs_dir, "--unlearn", "Identity", "--unlearn.seed", "3"))
    assert _import(str(config["unlearn"]["class_path"])) is identity
    assert config["unlearn"]["init_args"]["seed"] == 3
    with pytest.raises(ValueError, match="unlearn.alpha is not a knob of Identity"):
        checker.parse(_heal(configs_dir, "--unlearn", "Identity", "--unlearn.alpha", "5"))


# --------------------------------------------------------------------------- (5) old grid keys
def _spec(configs_dir, **changes) -> dict:
    spec = {
        "config": f"{configs_dir}/digits.yaml",
        "heal": {"adversary": "ClassSelector", "adversary.budget": 5},
        "axes": {"unlearn": [{"unlearn": "Fisher", "unlearn.alpha": 1e-6}], "twins": [{"twins.metric": "RawL2"}]},
    }
    for key, value in changes.items():
        spec[key] = {**spec[key], **value}
    return spec


OLD = {
    "unlearn.method": (
        {"axes": {"unlearn": [{"unlearn.method": "fisher", "unlearn.alpha": 1e-6}]}},
        "'unlearn.method' in 'axes.unlearn'",
        "use unlearn: <Method>",
    ),
    "twins.metric-raw_l2": (
        {"axes": {"twins": [{"twins.metric": "raw_l2"}]}},
        "twins.metric: raw_l2 in 'axes.twins'",
        "use twins.metric: RawL2",
    ),
    "twins.metric-none": (
        {"axes": {"twins": [{"twins.metric": "none"}]}},
        "twins.metric: none in 'axes.twins'",
        "use twins.metric: null",
    ),
    "adversary.selector": ({"heal": {"adversary.selector": "class"}}, "'adversary.selector' in 'heal'", "adversary:"),
    "prefixed-knob": (
        {"axes": {"unlearn": [{"unlearn": "SCRUB", "unlearn.scrub_epochs": 2}]}},
        "'unlearn.scrub_epochs'",
        "use unlearn.epochs (with --unlearn SCRUB)",
    ),
}


@pytest.mark.parametrize("case", list(OLD))
def test_a_grid_with_an_old_key_stops_naming_the_new_one(tmp_path, configs_dir, case):
    changes, where, new = OLD[case]
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_spec(configs_dir, **changes), sort_keys=False))
    with pytest.raises(ValueError) as err:
        load_spec(str(path))
    message = str(err.value)
    assert where in message and new in message, message
    assert len(message.splitlines()) == 1 and message.endswith(".")
