"""The twin metric family: every metric a registered class, one control, and a new metric is one new class."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser, lazy_instance

import healing_pl.healing.metrics as metrics_pkg
from healing_pl.healing import TWIN_METRICS, Metric, get_metric, get_policy
from healing_pl.healing.metrics import FeatCosine, RandomMetric, RawL2, RawMahalanobis
from healing_pl.healing.policies import GeneralSpareSet

LABELS = {
    "raw_l2": "T-raw_l2",
    "raw_mahalanobis": "T-raw_mahalanobis",
    "feat_cosine": "T-feat_cosine",
    "feat_mahalanobis": "T-feat_mahalanobis",
    "random": "T-random",
}


def metric_classes() -> list[type]:
    """Every public Metric subclass defined in a module of healing_pl.healing.metrics."""
    found = []
    for info in pkgutil.iter_modules(metrics_pkg.__path__):
        module = importlib.import_module(f"{metrics_pkg.__name__}.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Metric) and cls.__module__ == module.__name__ and not cls.__name__.startswith("_"):
                found.append(cls)
    return found


def test_every_metric_class_is_registered():
    classes = metric_classes()
    assert len(classes) == 5
    assert set(classes) == set(TWIN_METRICS.classes())
    assert TWIN_METRICS.names() == list(LABELS)  # the paper's order
    assert TWIN_METRICS.class_names() == ["RawL2", "RawMahalanobis", "FeatCosine", "FeatMahalanobis", "RandomMetric"]
    for cls in classes:
        assert TWIN_METRICS[cls.name] is cls and TWIN_METRICS.by_class_name(cls.__name__) is cls


def test_names_and_labels_are_unique_and_fixed():
    classes = TWIN_METRICS.classes()
    assert {cls.name: cls.label for cls in classes} == LABELS
    assert len({cls.name for cls in classes}) == len({cls.label for cls in classes}) == len(classes)
    for cls in classes:  # every metric declares its own attributes
        assert {"name", "label"} <= set(cls.__dict__)
        assert isinstance(cls.control, bool) and isinstance(cls.search_metric, str)


def test_exactly_one_control_the_random_metric():
    assert [cls for cls in TWIN_METRICS.classes() if cls.control] == [RandomMetric]
    assert get_metric("random").control and not get_metric("feat_cosine").control


def test_the_base_class_is_abstract_and_unregistered_classes_are_refused():
    with pytest.raises(TypeError, match="abstract"):
        Metric()

    class Unregistered(RawL2):
        """Same record name as RawL2, but not the registered class."""

    class Nameless(Metric):
        search_metric = "l2"

    for cls in (Unregistered, Nameless):
        with pytest.raises(ValueError, match="is not a registered twin metric; choose one of RawL2, "):
            cls()
    with pytest.raises(ValueError, match="is not a registered twin metric"):
        TWIN_METRICS.check(object())
    with pytest.raises(ValueError, match="unknown twin metric 'identity'"):
        get_metric("identity")


def test_a_lazy_instance_of_a_registered_metric_is_accepted():
    lazy = lazy_instance(RawMahalanobis, shrinkage=0.2)
    TWIN_METRICS.check(lazy)
    assert lazy.name == "raw_mahalanobis" and lazy.label == "T-raw_mahalanobis"
    assert repr(lazy) == "RawMahalanobis(shrinkage=0.2)"
    assert lazy.knobs() == {"shrinkage": 0.2}
    fresh = lazy.fresh(3)
    assert type(fresh) is RawMahalanobis and fresh.shrinkage == 0.2


def test_the_default_metric_is_jsonargparses_lazy_instance_of_feat_cosine():
    # the default is made without lazy_instance's walk of the call stack (its class is made once, in a thread):
    # still a lazy instance of the class, a fresh one per config, in the config module, as lazy_instance makes it
    from healing_pl.phases.config import TwinsConfig

    first, second = TwinsConfig().metric, TwinsConfig().metric
    reference = lazy_instance(FeatCosine)
    assert type(first) is type(second) and first is not second
    assert type(first).__name__ == type(reference).__name__ == "LazyInstance_FeatCosine"
    assert type(first).__module__ == "healing_pl.phases.config"
    assert type(first).__mro__[1:] == type(reference).__mro__[1:]  # jsonargparse's lazy base, then FeatCosine's
    assert first.lazy_get_init_data() == reference.lazy_get_init_data()
    TWIN_METRICS.check(first)
    assert first.name == "feat_cosine" and repr(first) == repr(FeatCosine())


def test_the_cli_offers_exactly_the_registered_classes():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--metric", type=Metric | None)
    for cls in TWIN_METRICS.classes():
        assert type(parser.instantiate(parser.parse_args(["--metric", cls.__name__])).metric) is cls
    init = parser.instantiate(parser.parse_args(["--metric", "RawMahalanobis", "--metric.shrinkage", "0.1"]))
    assert repr(init.metric) == "RawMahalanobis(shrinkage=0.1)"
    assert parser.parse_args(["--metric", "null"]).metric is None
    with pytest.raises(Exception, match="abstract"):
        parser.parse_args(["--metric", "Metric"])


def test_knobs_repr_and_get_metric():
    assert FeatCosine().knobs() == {} and repr(FeatCosine()) == "FeatCosine()"
    assert RawMahalanobis(shrinkage=0.3).knobs() == {"shrinkage": 0.3}
    assert repr(RandomMetric(4)) == "RandomMetric(seed=4)" and repr(RandomMetric()) == "RandomMetric(seed=None)"
    m = get_metric("raw_mahalanobis", shrinkage=0.5)
    assert type(m) is RawMahalanobis and m.shrinkage == 0.5
    with pytest.raises(ValueError, match="already built"):
        get_metric(m, shrinkage=0.1)


def test_random_seed_none_is_the_callers_seed():
    q, c = torch.empty(20, 0), torch.empty(100, 0)
    draws = RandomMetric(7).rank(q, c, 4)[1]
    assert torch.equal(RandomMetric().fresh(7).rank(q, c, 4)[1], draws)  # seed None: the caller's twins.seed
    assert torch.equal(RandomMetric(7).fresh(99).rank(q, c, 4)[1], draws)  # its own seed wins
    assert torch.equal(RandomMetric().rank(q, c, 4)[1], RandomMetric(0).rank(q, c, 4)[1])  # on its own: seed 0
    used = RandomMetric(7)
    used.rank(q, c, 4)
    assert torch.equal(used.fresh(1).rank(q, c, 4)[1], draws)  # fresh: the generator starts over
    state = RandomMetric().state_dict()
    restored = RandomMetric(5)
    restored.load_state_dict(state)
    assert restored.seed is None


@pytest.mark.parametrize("same_class", [False, True])
def test_the_random_control_in_a_policy_draws_as_before(same_class):
    """The caller's new pattern (``twins.metric.fresh(twins.seed)``) draws what the old one (name + seed) drew."""
    rng = np.random.default_rng(0)
    spares, labels = list(range(1000, 1060)), torch.from_numpy(rng.integers(0, 3, 60))
    requests, request_labels = list(range(12)), torch.from_numpy(rng.integers(0, 3, 12))
    out = []
    for policy in (
        get_policy("general_spare_set", metric="random", metric_kwargs={"seed": 11}, same_class=same_class),
        get_policy("general_spare_set", metric=RandomMetric().fresh(11), same_class=same_class),
    ):
        policy.fit(spares, None, labels)
        out.append(
            [list(policy.assign(requests[i : i + 4], None, request_labels[i : i + 4]).twin_ids) for i in (0, 4, 8)]
        )
    assert out[0] == out[1]


@pytest.fixture
def identity_metric():
    """A new metric is one class: twins are the spares with the very same pixels (L2 distance 0)."""

    @TWIN_METRICS.register
    class Identity(Metric):
        """The spare with identical pixels (a test metric)."""

        name, label = "identity", "T-identity"
        needs_features, search_metric, larger_is_better = False, "l2", False

    try:
        yield Identity
    finally:
        TWIN_METRICS.unregister("identity")
    assert "identity" not in TWIN_METRICS


def test_a_new_metric_is_one_class(identity_metric):
    assert "identity" in TWIN_METRICS and "Identity" in TWIN_METRICS.class_names()
    metric = get_metric("identity")
    assert type(metric) is identity_metric and repr(metric) == "Identity()" and not metric.control
    assert type(metric.fresh(3)) is identity_metric

    rng = np.random.default_rng(1)
    spare_vecs = torch.from_numpy(rng.normal(size=(40, 6)).astype(np.float32))
    spares = list(range(1000, 1040))
    picks = [7, 31, 2, 18]
    for policy in (get_policy("general_spare_set", metric="identity"), GeneralSpareSet(metric)):
        assert policy.metric.name == "identity"
        policy.fit(spares, spare_vecs, forbidden_ids=[0, 1, 2, 3])
        result = policy.assign([0, 1, 2, 3], spare_vecs[picks])
        assert list(result.twin_ids) == [spares[p] for p in picks]
        assert result.scores == pytest.approx([0.0] * 4, abs=1e-5)
        assert {r["metric"] for r in result.records()} == {"identity"}
