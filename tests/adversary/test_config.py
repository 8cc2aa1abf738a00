"""AdversaryConfig: defaults, validation and reading from the command line."""

import pytest

from healing_pl.phases.config import AdversaryConfig


def test_defaults_are_a_valid_blind_random_adversary():
    config = AdversaryConfig()
    assert config.selector == "random"
    assert config.system_knowledge == "blind"
    assert config.validate(n_train=100, num_classes=10) == 25


@pytest.mark.parametrize(
    "budget, n_train, expected",
    [(25, 100, 25), (100, 100, 100), (0.1, 1000, 100), (1.0, 37, 37), (0.5, 3, 2), (0.01, 50, 1)],
)
def test_budget_as_count_or_fraction(budget, n_train, expected):
    assert AdversaryConfig(budget=budget).resolve_budget(n_train) == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"budget": 0}, "at least 1 sample"),
        ({"budget": -3}, "at least 1 sample"),
        ({"budget": 0.0}, r"\(0, 1\]"),
        ({"budget": 1.5}, r"\(0, 1\]"),
        ({"budget": True}, "count or a fraction"),
        ({"selector": "nope"}, "Unknown selector 'nope'"),
        ({"system_knowledge": "omniscient"}, "Unknown system_knowledge"),
        ({"data_knowledge": "psychic"}, "Unknown data_knowledge"),
        ({"selector": "worst_logits"}, "needs system_knowledge 'output_aware'"),
        ({"selector": "gradient", "system_knowledge": "output_aware"}, "parameter_aware"),
        ({"selector": "class", "data_knowledge": "blind", "target_class": 1}, "data_knowledge 'known'"),
        ({"selector": "class"}, "needs a target_class"),
        ({"selector": "blind_guess"}, "data_knowledge='blind'"),
        ({"member_fraction": 1.5}, "member_fraction"),
        ({"score": "entropy"}, "Unknown score"),
    ],
)
def test_bad_config_raises_one_clear_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        AdversaryConfig(**kwargs)
    text = str(info.value)
    assert text.endswith(".") and "\n" not in text


def test_more_knowledge_than_needed_is_fine():
    AdversaryConfig(selector="random", system_knowledge="parameter_aware", data_knowledge="chosen")
    AdversaryConfig(selector="worst_logits", system_knowledge="parameter_aware")


def test_budget_above_the_training_set_raises():
    with pytest.raises(ValueError, match="exceeds the training set"):
        AdversaryConfig(budget=101).validate(n_train=100, num_classes=10)


def test_fraction_below_one_sample_raises():
    with pytest.raises(ValueError, match="less than 1 sample"):
        AdversaryConfig(budget=0.001).validate(n_train=100, num_classes=10)


@pytest.mark.parametrize("target", [-1, 10, 11])
def test_target_class_outside_the_classes_raises(target):
    config = AdversaryConfig(selector="class", target_class=target)
    with pytest.raises(ValueError, match=r"outside \[0, 10\)"):
        config.validate(n_train=100, num_classes=10)


def test_jsonargparse_reads_the_dataclass():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--adversary", type=AdversaryConfig, default=AdversaryConfig())
    args = parser.parse_args(
        [
            "--adversary.selector=worst_logits",
            "--adversary.system_knowledge=output_aware",
            "--adversary.budget=0.05",
            "--adversary.score=logit",
        ]
    )
    config = parser.instantiate(args).adversary
    assert isinstance(config, AdversaryConfig)
    assert (config.selector, config.budget, config.score) == ("worst_logits", 0.05, "logit")
    count = parser.instantiate(parser.parse_args(["--adversary.budget=30"])).adversary.budget
    assert count == 30 and isinstance(count, int)
    help_text = parser.format_help()
    assert "fraction of the training set" in help_text
