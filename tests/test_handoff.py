"""Phases pass typed values through hand-offs: a consumer that runs before its producer says which comes first."""

from types import SimpleNamespace

import pytest

from healing_pl.callbacks.phases import Handoff, HealEvaluation, TwinSearch, UnlearnPhase
from healing_pl.phases.config import TwinsConfig


def test_a_handoff_read_before_it_is_written_names_producer_and_consumer():
    start = Handoff("unlearned start", "UnlearnPhase")
    with pytest.raises(RuntimeError, match="^TwinSearch needs the unlearned start before UnlearnPhase produced it"):
        start.get("TwinSearch")
    value = object()
    assert start.put(value) is value and start.get("TwinSearch") is value


def test_the_heal_phases_read_their_inputs_only_through_handoffs():
    """No phase holds another phase: TwinSearch and HealEvaluation keep the hand-offs they were given."""
    start = Handoff("unlearned start", "UnlearnPhase")
    search = TwinSearch(start, TwinsConfig())
    heal = HealEvaluation(start, epochs=1, lr=1e-3, twins=search.found)
    for phase in (search, heal):
        held = [v for v in vars(phase).values() if isinstance(v, (UnlearnPhase, TwinSearch, HealEvaluation))]
        assert held == [], f"{type(phase).__name__} holds {held}"
    assert heal.start is start and heal.twins is search.found
    with pytest.raises(RuntimeError, match="HealEvaluation needs the unlearned start"):
        heal.on_fit_start(trainer=None, pl_module=SimpleNamespace())
