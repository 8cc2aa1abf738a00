"""Spare-set policies: no reuse, never a forget/remain sample, nearest choice, state."""

import itertools
import json

import numpy as np
import pytest
import torch

from healing_pl.healing.policies import GROUP_MODES, POLICIES, GeneralSpareSet, Twins, get_policy, match
from healing_pl.healing.search import nearest

PRIMARY = list(range(100))  # forget + remain ids
SPARES = list(range(1000, 1120))  # backup / spare ids


@pytest.fixture
def pool():
    rng = np.random.default_rng(0)
    return {
        "spare_vecs": torch.from_numpy(rng.normal(size=(len(SPARES), 6)).astype(np.float32)),
        "spare_labels": torch.from_numpy(rng.integers(0, 3, len(SPARES))),
        "vecs": torch.from_numpy(rng.normal(size=(len(PRIMARY), 6)).astype(np.float32)),
        "labels": torch.from_numpy(rng.integers(0, 3, len(PRIMARY))),
    }


def make(name, pool, same_class=True, **kwargs):
    """A fitted policy; class-restricted unless told otherwise (the tests of classes use it)."""
    policy = get_policy(name, same_class=same_class, **kwargs)
    policy.fit(SPARES, pool["spare_vecs"], pool["spare_labels"], forbidden_ids=PRIMARY)
    if name == "twins":
        policy.precompute(PRIMARY, pool["vecs"], pool["labels"])
    return policy


def rounds(policy, pool, batches):
    out = []
    for ids in batches:
        ids = list(ids)
        out.append(policy.assign(ids, pool["vecs"][ids], pool["labels"][ids]))
    return out


def line(positions):
    return torch.tensor(positions, dtype=torch.float32)[:, None]


def test_registry():
    assert POLICIES == {"general_spare_set": GeneralSpareSet, "twins": Twins}
    with pytest.raises(ValueError, match="unknown spare policy"):
        get_policy("triplets")
    with pytest.raises(ValueError, match="unknown group mode"):
        get_policy("twins", group="best")


@pytest.mark.parametrize("name", list(POLICIES))
@pytest.mark.parametrize("group", GROUP_MODES)
@pytest.mark.parametrize("metric", ["raw_l2", "feat_cosine", "raw_mahalanobis", "random"])
def test_no_reuse_across_rounds_and_only_spares(pool, name, group, metric):
    policy = (
        make(name, pool, metric=metric, group=group, k=2)
        if name == "twins"
        else make(name, pool, metric=metric, group=group)
    )
    results = rounds(policy, pool, [range(0, 10), range(10, 13), range(13, 30), range(30, 31)])
    twins = [t for r in results for t in r.twin_ids]
    assert len(twins) == 31 == len(set(twins))  # never reused
    assert set(twins) <= set(SPARES) and not set(twins) & set(PRIMARY)
    for r in results:  # same class
        label_of = dict(zip(SPARES, pool["spare_labels"].tolist()))
        assert all(label_of[t] == int(pool["labels"][q]) for q, t in r.twins.items())
    assert policy.remaining == len(SPARES) - 31
    assert sorted(policy.used_ids) == sorted(twins)


def test_general_spare_set_takes_the_nearest_remaining_spare(pool):
    policy = make("general_spare_set", pool, same_class=False)
    used = np.zeros(len(SPARES), bool)
    for batch in ([3, 1, 4], [15, 9], [2, 6, 5, 35]):
        result = policy.assign(batch, pool["vecs"][batch])
        for q, t in result.twins.items():  # sequential: in request order
            dist, idx = nearest(pool["vecs"][[q]], pool["spare_vecs"], 1, exclude=torch.from_numpy(used))
            assert t == SPARES[int(idx)]
            assert result.score_of[q] == pytest.approx(float(dist), rel=1e-6)
            used[int(idx)] = True


def test_general_spare_set_respects_classes(pool):
    policy = make("general_spare_set", pool)
    batch = list(range(8))
    result = policy.assign(batch, pool["vecs"][batch], pool["labels"][batch])
    for q, t in result.twins.items():
        same = pool["spare_labels"] == pool["labels"][q]
        _, idx = nearest(
            pool["vecs"][[q]],
            pool["spare_vecs"],
            1,
            exclude=~same | torch.tensor([s in set(result.twin_ids[: batch.index(q)]) for s in SPARES]),
        )
        assert t == SPARES[int(idx)]


def test_twins_precompute_k_nearest_backups(pool):
    policy = make("twins", pool, k=3)
    sur = policy.surrogates
    assert set(sur) == set(PRIMARY)
    _, idx = nearest(
        pool["vecs"], pool["spare_vecs"], 3, query_labels=pool["labels"], candidate_labels=pool["spare_labels"]
    )
    assert [sur[i] for i in PRIMARY] == [[SPARES[j] for j in row] for row in idx.tolist()]


def test_twins_takes_the_first_unused_surrogate():
    spares = [1000, 1001, 1002, 1003]
    policy = Twins("raw_l2", k=3, same_class=False)
    policy.fit(spares, line([0.0, 1.0, 2.0, 10.0]))
    policy.precompute([1, 2, 3], line([0.1, 0.2, 0.3]))
    assert policy.surrogates[1] == [1000, 1001, 1002]
    first = policy.assign([1, 2])  # both prefer 1000; request 2 gets its second choice
    assert first.twins == {1: 1000, 2: 1001}
    second = policy.assign([3])  # a later round: 1000 and 1001 are used up
    assert second.twins == {3: 1002}
    assert second.scores[0] == pytest.approx(1.7)


def test_twins_exhausted_or_missing_surrogates():
    policy = Twins("raw_l2", k=1, same_class=False)
    policy.fit([1000, 1001, 1002], line([0.0, 1.0, 5.0]))
    policy.precompute([1, 2], line([0.1, 0.2]))
    policy.assign([1])
    with pytest.raises(ValueError, match="all 1 surrogates of samples 2 are used up"):
        policy.assign([2])
    with pytest.raises(ValueError, match="samples 7 have no precomputed surrogates"):
        policy.assign([7])
    # With vectors the policy falls back to the nearest free backup.
    result = policy.assign([2, 7], line([0.2, 4.0]))
    assert result.twins == {2: 1001, 7: 1002}


@pytest.mark.parametrize("name", list(POLICIES))
def test_too_small_spare_set_raises_and_changes_nothing(name):
    policy = (
        get_policy(name, metric="raw_l2", same_class=False, k=2)
        if name == "twins"
        else get_policy(name, metric="raw_l2", same_class=False)
    )
    policy.fit([1000, 1001, 1002], line([0.0, 1.0, 2.0]))
    if name == "twins":
        policy.precompute([1, 2, 3, 4], line([0.0, 0.1, 0.2, 0.3]))
    ids = [1, 2, 3, 4]
    with pytest.raises(ValueError, match=f"{name} needs 4 spares for 4 requests but only 3 remain; enlarge"):
        policy.assign(ids, line([0.0, 0.1, 0.2, 0.3]))
    assert policy.remaining == 3 and policy.served == {}
    policy.assign([1, 2], line([0.0, 0.1]))
    with pytest.raises(ValueError, match="needs 2 spares for 2 requests but only 1 remain"):
        policy.assign([3, 4], line([0.2, 0.3]))


def test_too_few_spares_of_a_class_raises():
    policy = GeneralSpareSet("raw_l2", same_class=True)
    policy.fit([1000, 1001, 1002], line([0.0, 1.0, 2.0]), [0, 0, 1])
    with pytest.raises(ValueError, match="needs 2 spares of class 1 for 2 requests but only 1 remain"):
        policy.assign([1, 2], line([0.0, 0.1]), [1, 1])


def test_ids_are_validated(pool):
    policy = GeneralSpareSet("raw_l2", same_class=True)
    with pytest.raises(ValueError, match="call fit\\(\\) first"):
        policy.assign([1], line([0.0]), [0])
    with pytest.raises(ValueError, match="spare ids 1000 are also primary"):
        policy.fit([1000, 1001], line([0.0, 1.0]), [0, 0], forbidden_ids=[5, 1000])
    with pytest.raises(ValueError, match="needs spare labels"):
        policy.fit([1000, 1001], line([0.0, 1.0]))
    policy.fit([1000, 1001], line([0.0, 1.0]), [0, 0])
    with pytest.raises(ValueError, match="request ids 1001 are spares"):
        policy.assign([1001], line([0.0]), [0])
    with pytest.raises(ValueError, match="request ids contain duplicates"):
        policy.assign([3, 3], line([0.0, 0.0]), [0, 0])
    with pytest.raises(ValueError, match="needs request labels"):
        policy.assign([3], line([0.0]))
    with pytest.raises(ValueError, match="request_vectors must be"):
        policy.assign([3], torch.zeros(1, 2), [0])
    policy.assign([3], line([0.0]), [0])
    with pytest.raises(ValueError, match="requests 3 were already served"):
        policy.assign([3], line([0.0]), [0])


def test_greedy_and_optimal_differ_where_they_should():
    # costs [[1, 2], [1.1, 4.1]]: greedy takes (r1, s1) first, optimal pays 3.1 in total
    spares, spare_pos = [1000, 1001], line([0.0, 3.0])
    requests, req_pos = [1, 2], line([1.0, -1.1])
    totals = {}
    for group in GROUP_MODES:
        policy = GeneralSpareSet("raw_l2", group=group, same_class=False)
        policy.fit(spares, spare_pos)
        result = policy.assign(requests, req_pos)
        totals[group] = sum(result.scores)
        if group == "optimal":
            assert result.twins == {1: 1001, 2: 1000}
        else:
            assert result.twins == {1: 1000, 2: 1001}
    assert totals["optimal"] == pytest.approx(3.1) and totals["greedy"] == pytest.approx(5.1)


def test_optimal_is_the_brute_force_minimum():
    rng = np.random.default_rng(1)
    spare_pos, req_pos = rng.normal(size=(6, 2)), rng.normal(size=(4, 2))
    cost = np.linalg.norm(req_pos[:, None] - spare_pos[None], axis=2)
    best = min(sum(cost[r, p[r]] for r in range(4)) for p in itertools.permutations(range(6), 4))
    policy = GeneralSpareSet("raw_l2", group="optimal", same_class=False)
    policy.fit(range(100, 106), spare_pos)
    assert sum(policy.assign(range(4), req_pos).scores) == pytest.approx(best, rel=1e-5)
    greedy = GeneralSpareSet("raw_l2", group="greedy", same_class=False).fit(range(100, 106), spare_pos)
    assert sum(greedy.assign(range(4), req_pos).scores) >= best - 1e-6


def test_cosine_prefers_larger_similarity():
    policy = GeneralSpareSet("feat_cosine", group="optimal", same_class=False)
    policy.fit([1000, 1001], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    result = policy.assign([1, 2], torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
    assert result.twins == {1: 1000, 2: 1001} and all(s > 0.9 for s in result.scores)


def test_small_candidate_lists_still_assign_everyone(pool):
    policy = make("general_spare_set", pool, group="greedy", max_candidates=1)
    result = rounds(policy, pool, [range(40)])[0]
    assert len(set(result.twin_ids)) == 40


def test_match_modes_directly():
    cost = np.array([[1.0, 2.0], [1.0, 3.0]])
    cand = np.array([[7, 8], [7, 9]])
    usable = np.ones_like(cand, dtype=bool)
    assert match(cost, cand, usable, "sequential").tolist() == [0, 1]
    assert match(cost, cand, usable, "greedy").tolist() == [0, 1]  # tie: lower request first
    assert match(cost, cand, usable, "optimal").tolist() == [1, 0]
    usable[0, 0] = False
    assert match(cost, cand, usable, "sequential").tolist() == [1, 0]


@pytest.mark.parametrize("name", list(POLICIES))
def test_state_dict_round_trip(pool, name):
    kwargs = (
        dict(metric="random", metric_kwargs={"seed": 4}, k=3)
        if name == "twins"
        else dict(metric="random", metric_kwargs={"seed": 4})
    )
    original = make(name, pool, **kwargs)
    rounds(original, pool, [range(0, 5), range(5, 12)])
    state = json.loads(json.dumps(original.state_dict()))  # plain lists and ints
    assert state["used"] == original.used_ids and state["policy"] == name

    restored = get_policy(name, same_class=True, **kwargs)
    restored.load_state_dict(state)
    restored.fit(SPARES, pool["spare_vecs"], pool["spare_labels"])
    assert restored.used_ids == original.used_ids and restored.served == original.served
    a = rounds(original, pool, [range(12, 20)])[0]
    b = rounds(restored, pool, [range(12, 20)])[0]
    assert a == b
    with pytest.raises(ValueError, match="state is for policy"):
        get_policy("twins" if name != "twins" else "general_spare_set").load_state_dict(state)


def test_assignment_records(pool):
    policy = make("general_spare_set", pool, metric="raw_l2")
    result = rounds(policy, pool, [[4, 2]])[0]
    recs = result.records()
    assert [r["request_id"] for r in recs] == [4, 2]
    assert all(r["twin_id"] in SPARES and r["policy"] == "general_spare_set" and r["metric"] == "raw_l2" for r in recs)
    assert len(result) == 2 and result.twins == {r["request_id"]: r["twin_id"] for r in recs}


def test_random_control_needs_no_vectors():
    policy = GeneralSpareSet("random", same_class=False, metric_kwargs={"seed": 1})
    policy.fit(SPARES, None)
    first = policy.assign([1, 2, 3])
    again = GeneralSpareSet("random", same_class=False, metric_kwargs={"seed": 1}).fit(SPARES, None)
    assert again.assign([1, 2, 3]) == first  # reproducible by seed
    with pytest.raises(ValueError, match="needs spare_vectors"):
        GeneralSpareSet("raw_l2", same_class=False).fit(SPARES, None)
