"""The adversary's knobs (constructor arguments): defaults, validation and reading from the command line."""

import pytest

from healing_pl.adversary import SELECTORS, Selector
from healing_pl.adversary.selectors import (
    BlindGuessSelector,
    ClassSelector,
    GradientSelector,
    RandomSelector,
    UnlearningAwareSelector,
    WorstLogitsSelector,
)


def test_defaults_are_a_valid_blind_random_adversary():
    selector = RandomSelector()
    assert selector.name == "random"
    assert selector.system_knowledge == "blind"
    assert selector.data_knowledge == "known"
    assert (selector.budget, selector.seed, selector.batch_size) == (25, 0, 256)
    assert selector.validate(n_train=100, num_classes=10) == 25


@pytest.mark.parametrize(
    "cls, system, data",
    [
        (RandomSelector, "blind", "known"),
        (WorstLogitsSelector, "output_aware", "known"),
        (GradientSelector, "parameter_aware", "known"),
        (BlindGuessSelector, "blind", "blind"),
        (UnlearningAwareSelector, "parameter_aware", "known"),
    ],
)
def test_default_knowledge_is_the_least_the_selector_needs(cls, system, data):
    selector = cls()
    assert (selector.system_knowledge, selector.data_knowledge) == (system, data)
    assert selector.system_knowledge == cls.needs_system


@pytest.mark.parametrize(
    "budget, n_train, expected",
    [(25, 100, 25), (100, 100, 100), (0.1, 1000, 100), (1.0, 37, 37), (0.5, 3, 2), (0.01, 50, 1)],
)
def test_budget_as_count_or_fraction(budget, n_train, expected):
    assert RandomSelector(budget=budget).resolve_budget(n_train) == expected


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("random", {"budget": 0}, "at least 1 sample"),
        ("random", {"budget": -3}, "at least 1 sample"),
        ("random", {"budget": 0.0}, r"\(0, 1\]"),
        ("random", {"budget": 1.5}, r"\(0, 1\]"),
        ("random", {"budget": True}, "count or a fraction"),
        ("random", {"system_knowledge": "omniscient"}, "Unknown system_knowledge"),
        ("random", {"data_knowledge": "psychic"}, "Unknown data_knowledge"),
        ("random", {"batch_size": 0}, "batch_size must be at least 1"),
        ("worst_logits", {"system_knowledge": "blind"}, "needs system_knowledge 'output_aware'"),
        ("gradient", {"system_knowledge": "output_aware"}, "parameter_aware"),
        ("class", {"data_knowledge": "blind", "target_class": 1}, "data_knowledge 'known'"),
        ("class", {}, "needs a target_class"),
        ("blind_guess", {"member_fraction": 1.5}, "member_fraction"),
        ("worst_logits", {"score": "entropy"}, "Unknown score"),
        ("gradient", {"mode": "hessian"}, "Unknown mode"),
        ("gradient", {"engine": "jax"}, "Unknown engine"),
        ("gradient", {"damping": -1.0}, "damping must be a finite number"),
        ("gradient", {"depth": -1}, "depth must be a whole number"),
        ("unlearning_aware", {"ranking": "random"}, "Unknown ranking"),
        ("unlearning_aware", {"pool": 0}, "pool must be a whole number"),
        ("unlearning_aware", {"block": 0}, "block must be a whole number"),
        ("unlearning_aware", {"system_knowledge": "output_aware"}, "needs system_knowledge 'parameter_aware'"),
    ],
)
def test_bad_knobs_raise_one_clear_sentence(name, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        SELECTORS[name](**kwargs)
    text = str(info.value)
    assert text.endswith(".") and "\n" not in text


def test_unknown_selector_raises_one_clear_sentence():
    with pytest.raises(ValueError, match="unknown adversary 'nope'") as info:
        SELECTORS["nope"]
    text = str(info.value)
    assert text.endswith(".") and "\n" not in text and "RandomSelector" in text


def test_blind_guess_is_always_blind_to_the_training_set():
    assert BlindGuessSelector().data_knowledge == "blind"
    with pytest.raises(TypeError, match="data_knowledge"):  # not a knob of its own
        BlindGuessSelector(data_knowledge="known")


def test_more_knowledge_than_needed_is_fine():
    selector = RandomSelector(system_knowledge="parameter_aware", data_knowledge="chosen")
    assert (selector.system_knowledge, selector.data_knowledge) == ("parameter_aware", "chosen")
    assert WorstLogitsSelector(system_knowledge="parameter_aware").system_knowledge == "parameter_aware"


def test_budget_above_the_training_set_raises():
    with pytest.raises(ValueError, match="exceeds the training set"):
        RandomSelector(budget=101).validate(n_train=100, num_classes=10)


def test_fraction_below_one_sample_raises():
    with pytest.raises(ValueError, match="less than 1 sample"):
        RandomSelector(budget=0.001).validate(n_train=100, num_classes=10)


@pytest.mark.parametrize("target", [-1, 10, 11])
def test_target_class_outside_the_classes_raises(target):
    selector = ClassSelector(target_class=target)
    with pytest.raises(ValueError, match=r"outside \[0, 10\)"):
        selector.validate(n_train=100, num_classes=10)


def test_pool_below_the_budget_raises_on_validate():
    selector = UnlearningAwareSelector(budget=5, pool=3)
    with pytest.raises(ValueError, match=r"adversary.pool \(3\) must be at least the budget \(5\)"):
        selector.validate(n_train=100, num_classes=10)
    assert UnlearningAwareSelector(budget=0.05, pool=5).validate(n_train=100, num_classes=10) == 5


def test_knobs_and_record():
    selector = ClassSelector(target_class=7, budget=0.1, seed=3)
    assert ClassSelector.knob_names() == [
        "target_class",
        "class_fraction",
        "budget",
        "system_knowledge",
        "data_knowledge",
        "seed",
        "batch_size",
    ]
    assert selector.knobs()["target_class"] == 7 and selector.knobs()["system_knowledge"] == "blind"
    assert selector.record() == {
        "adversary/selector": "class",
        "adversary/budget": 0.1,
        "adversary/system_knowledge": "blind",
        "adversary/data_knowledge": "known",
        "adversary/target_class": 7,
    }
    assert RandomSelector().record()["adversary/target_class"] is None
    assert repr(selector).startswith("ClassSelector(target_class=7, class_fraction=None, budget=0.1")


def test_the_unlearning_aware_ranking_gets_its_knobs():
    aware = UnlearningAwareSelector(ranking="gradient", mode="influence", damping=0.5, seed=4, batch_size=64)
    ranker = aware.ranker
    assert isinstance(ranker, GradientSelector)
    assert (ranker.mode, ranker.damping, ranker.seed, ranker.batch_size) == ("influence", 0.5, 4, 64)
    assert ranker.system_knowledge == "parameter_aware"
    margin = UnlearningAwareSelector(score="logit").ranker
    assert isinstance(margin, WorstLogitsSelector) and margin.score == "logit"
    assert aware.simulates_unlearning and not ranker.simulates_unlearning


def parser():
    jsonargparse = pytest.importorskip("jsonargparse")
    p = jsonargparse.ArgumentParser(exit_on_error=False)
    p.add_argument("--adversary", type=Selector, default=jsonargparse.lazy_instance(SELECTORS["random"]))
    return p


def test_jsonargparse_reads_the_selector_classes():
    p = parser()
    args = p.parse_args(
        [
            "--adversary=WorstLogitsSelector",
            "--adversary.system_knowledge=output_aware",
            "--adversary.budget=0.05",
            "--adversary.score=logit",
        ]
    )
    selector = p.instantiate(args).adversary
    assert isinstance(selector, WorstLogitsSelector)
    assert (selector.name, selector.budget, selector.score) == ("worst_logits", 0.05, "logit")
    count = p.instantiate(p.parse_args(["--adversary.budget=30"])).adversary.budget
    assert count == 30 and isinstance(count, int)
    default = p.instantiate(p.parse_args([])).adversary
    assert isinstance(default, RandomSelector) and default.system_knowledge == "blind"
    # the default's data_knowledge (known) is not carried over to the adversary that is blind to the data
    guess = p.instantiate(p.parse_args(["--adversary=BlindGuessSelector"])).adversary
    assert guess.data_knowledge == "blind"
    target = p.instantiate(p.parse_args(["--adversary=ClassSelector", "--adversary.target_class=7"])).adversary
    assert target.target_class == 7


def test_jsonargparse_refuses_a_knob_of_another_selector():
    p = parser()
    with pytest.raises(Exception, match="score"):
        p.parse_args(["--adversary=ClassSelector", "--adversary.target_class=7", "--adversary.score=logit"])


def test_jsonargparse_help_lists_the_selector_and_base_knobs(capsys):
    p = parser()
    with pytest.raises(SystemExit):
        p.parse_args(["--adversary.help=GradientSelector"])
    help_text = capsys.readouterr().out
    assert "fraction of the training set" in help_text
    for knob in ("mode", "engine", "lissa_repeats", "budget", "system_knowledge", "seed", "batch_size"):
        assert f"--adversary.{knob}" in help_text
