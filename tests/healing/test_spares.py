"""twins.spares: the spare-set size study draws a seeded subset of the backup set."""

import pytest
import torch

from healing_pl.phases.config import TwinsConfig
from healing_pl.phases.twins import spare_ids

BACKUP = torch.arange(100, 150)


def test_the_default_is_the_whole_backup_set():
    assert torch.equal(spare_ids(TwinsConfig(), BACKUP), BACKUP)


@pytest.mark.parametrize(("spares", "count"), [(0.2, 10), (1.0, 50), (1, 50), (7, 7), (7.0, 7), (50, 50)])
def test_a_fraction_or_a_count_of_the_backup_set(spares, count):
    ids = spare_ids(TwinsConfig(spares=spares, seed=3), BACKUP)
    assert len(ids) == count and len(set(ids.tolist())) == count
    assert set(ids.tolist()) <= set(BACKUP.tolist())
    assert ids.tolist() == sorted(ids.tolist())


def test_the_draw_follows_the_seed():
    a, b = (spare_ids(TwinsConfig(spares=10, seed=s), BACKUP) for s in (0, 0))
    c = spare_ids(TwinsConfig(spares=10, seed=1), BACKUP)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_smaller_sets_are_nested_within_a_seed():
    small, large = (set(spare_ids(TwinsConfig(spares=n, seed=2), BACKUP).tolist()) for n in (5, 20))
    assert small <= large


@pytest.mark.parametrize("spares", [0, -3, 1.5, 0.0, True, float("nan")])
def test_bad_sizes_stop_with_one_sentence(spares):
    with pytest.raises(ValueError, match="twins.spares must be"):
        TwinsConfig(spares=spares)


def test_more_spares_than_the_backup_set_holds():
    with pytest.raises(ValueError, match="backup set holds 50"):
        spare_ids(TwinsConfig(spares=60), BACKUP)
