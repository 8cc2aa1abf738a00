"""The adversary family's registry: every selector registered once, only registered ones run, and adding an
adversary is one new class."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from healing_pl.adversary import SELECTORS, Selector, select_forget_set
from healing_pl.adversary.selectors import (
    BlindGuessSelector,
    ClassSelector,
    GradientSelector,
    MislabelledSelector,
    RandomSelector,
    UnlearningAwareSelector,
    WorstLogitsSelector,
)

CLASSES = (
    RandomSelector,
    ClassSelector,
    WorstLogitsSelector,
    GradientSelector,
    BlindGuessSelector,
    UnlearningAwareSelector,
    MislabelledSelector,
)


class Pool(Dataset):
    """40 samples of 4 classes; the primary set is the even ids."""

    def __init__(self):
        self.data = torch.arange(40, dtype=torch.float32).reshape(40, 1)
        self.targets = torch.arange(40) % 4

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.data[i], int(self.targets[i])


PRIMARY = torch.arange(0, 40, 2)


def test_every_selector_is_registered_under_a_unique_name_and_label():
    assert SELECTORS.classes() == list(CLASSES)
    names = ["random", "class", "worst_logits", "gradient", "blind_guess", "unlearning_aware", "mislabelled"]
    assert SELECTORS.names() == names
    labels = [cls.label for cls in SELECTORS.classes()]
    assert labels == ["random", "class", "worst logits", "gradient", "blind guess", "unlearning-aware", "mislabelled"]
    assert len(set(labels)) == len(labels)
    for name in SELECTORS:
        cls = SELECTORS[name]
        assert issubclass(cls, Selector) and cls.name == name
        assert SELECTORS.by_class_name(cls.__name__) is cls
        assert SELECTORS.by_class_name(f"{cls.__module__}.{cls.__name__}") is cls
    assert [cls.simulates_unlearning for cls in CLASSES] == [False] * 5 + [True, False]


def test_cli_names_are_the_class_names():
    assert SELECTORS.class_names() == [cls.__name__ for cls in CLASSES]
    with pytest.raises(ValueError, match="unknown adversary 'Oracle'.*--adversary"):
        SELECTORS.by_class_name("Oracle")


def test_every_selector_shares_the_base_knobs():
    base = ["budget", "system_knowledge", "data_knowledge", "seed", "batch_size"]
    for cls in CLASSES:
        names = cls.knob_names()
        shared = [k for k in base if cls is not BlindGuessSelector or k != "data_knowledge"]
        assert names[len(names) - len(shared) :] == shared, cls
    assert GradientSelector.knob_names()[:6] == ["mode", "engine", "damping", "scale", "depth", "lissa_repeats"]
    assert UnlearningAwareSelector.knob_names()[:3] == ["ranking", "pool", "block"]


def test_the_knobs_are_what_the_command_line_accepts():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--adversary", type=Selector, default=jsonargparse.lazy_instance(SELECTORS["random"]))
    for cls in CLASSES:
        args = parser.parse_args([f"--adversary={cls.__name__}"])
        assert sorted(vars(args.adversary.init_args)) == sorted(cls.knob_names()), cls
    assert "data_knowledge" not in BlindGuessSelector.knob_names()  # always blind: not a knob


def test_an_unregistered_selector_does_not_run():
    class Rogue(RandomSelector):
        name = "rogue"

    with pytest.raises(ValueError, match="is not a registered adversary; choose one of RandomSelector"):
        Rogue()


def test_the_default_lazy_instance_is_accepted():
    jsonargparse = pytest.importorskip("jsonargparse")
    default = jsonargparse.lazy_instance(SELECTORS["random"], budget=7)
    assert default.name == "random" and not default.simulates_unlearning  # class attributes: before it is built
    assert default.validate(n_train=100, num_classes=10) == 7  # the first method call builds it (and checks it)
    assert default.budget == 7 and default.system_knowledge == "blind"
    ids = select_forget_set(
        jsonargparse.lazy_instance(SELECTORS["random"], budget=3), dataset=Pool(), primary_ids=PRIMARY
    )
    assert len(ids) == 3


class FirstIds(Selector):
    """A trivial adversary: the lowest ``budget`` candidate ids."""

    name = "first_ids"
    label = "first ids"

    def __init__(self, skip: int = 0, **kwargs):
        """
        Args:
            skip: candidates passed over first.
        """
        super().__init__(**kwargs)
        self.skip = skip

    def _choose(self, surface, budget):
        return torch.sort(surface.candidate_ids).values[self.skip : self.skip + budget]


@pytest.fixture
def first_ids():
    SELECTORS.register(FirstIds)
    try:
        yield FirstIds
    finally:
        SELECTORS.unregister(FirstIds.name)


def test_a_new_adversary_is_one_class(first_ids):
    assert "first_ids" in SELECTORS and SELECTORS["first_ids"] is first_ids
    assert SELECTORS.class_names()[-1] == "FirstIds"
    selector = SELECTORS["first_ids"](budget=3, skip=1)
    assert selector.system_knowledge == "blind" and selector.data_knowledge == "known"
    ids = select_forget_set(selector, dataset=Pool(), primary_ids=PRIMARY)
    assert ids.tolist() == [2, 4, 6]
    assert selector.record()["adversary/selector"] == "first_ids"
    fraction = select_forget_set(first_ids(budget=0.25), dataset=Pool(), primary_ids=PRIMARY)  # 5 of 20
    assert fraction.tolist() == [0, 2, 4, 6, 8]


def test_a_new_adversary_is_offered_on_the_command_line(first_ids):
    jsonargparse = pytest.importorskip("jsonargparse")
    from healing_pl.cli import enforce_import_policy

    enforce_import_policy()  # as the CLI does before parsing: a registered class is importable by name
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--adversary", type=Selector, default=jsonargparse.lazy_instance(SELECTORS["random"]))
    args = parser.parse_args([f"--adversary={__name__}.FirstIds", "--adversary.skip=2", "--adversary.budget=4"])
    selector = parser.instantiate(args).adversary
    assert isinstance(selector, FirstIds) and (selector.skip, selector.budget) == (2, 4)


def test_unregistered_again_after_the_test():
    assert "first_ids" not in SELECTORS
    with pytest.raises(ValueError, match="not a registered adversary"):
        FirstIds()
