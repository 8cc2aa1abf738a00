"""Exact top-k search against a brute-force float64 reference (scipy cdist)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from healing_pl.healing import search
from healing_pl.healing.covariance import ledoit_wolf_covariance
from healing_pl.healing.search import nearest, whitening_matrix


def reference(q, c, k, metric, cov=None, exclude=None, q_lab=None, c_lab=None):
    """Brute force: full float64 score matrix, best k by (score, lower index)."""
    q, c = np.asarray(q, np.float64), np.asarray(c, np.float64)
    if metric == "l2":
        score = cdist(q, c, "euclidean")
    elif metric == "mahalanobis":
        score = cdist(q, c, "mahalanobis", VI=np.linalg.inv(cov))
    else:
        score = -(1.0 - cdist(q, c, "cosine"))  # negate: smaller is better
    if exclude is not None:
        score[:, np.asarray(exclude)] = np.inf
    if q_lab is not None:
        score[np.asarray(q_lab)[:, None] != np.asarray(c_lab)[None, :]] = np.inf
    order = np.argsort(score, axis=1, kind="stable")[:, :k]  # stable: ties keep index order
    best = np.take_along_axis(score, order, 1)
    return (-best if metric == "cosine" else best), order


def spd(dim, seed=0):
    a = np.random.default_rng(seed).normal(size=(dim, dim))
    return a @ a.T / dim + 0.5 * np.eye(dim)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 12)).astype(np.float32), rng.normal(size=(300, 12)).astype(np.float32)


@pytest.mark.parametrize("metric", ["l2", "cosine", "mahalanobis"])
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("chunk_size", [None, 7, 64, 1000])
@pytest.mark.parametrize("margin", [0, search.MARGIN])
def test_matches_brute_force(monkeypatch, data, metric, k, chunk_size, margin):
    """margin 0: the shortlist is exactly k, so the exhaustive re-check runs often."""
    monkeypatch.setattr(search, "MARGIN", margin)
    q, c = data
    cov = spd(12) if metric == "mahalanobis" else None
    scores, idx = nearest(q, c, k, metric, covariance=cov, chunk_size=chunk_size)
    ref_s, ref_i = reference(q, c, k, metric, cov)
    assert idx.dtype == torch.long and idx.shape == (40, k)
    assert scores.dtype == torch.float32 and scores.shape == (40, k)
    np.testing.assert_array_equal(idx.numpy(), ref_i)
    np.testing.assert_allclose(scores.numpy(), ref_s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_group_preselection_and_tail(monkeypatch, metric):
    """Small GROUP so the group-max pre-selection and the partial tail group run."""
    monkeypatch.setattr(search, "GROUP", 8)
    rng = np.random.default_rng(1)
    q, c = rng.normal(size=(30, 5)), rng.normal(size=(2000, 5))
    for chunk in (None, 300, 1003):
        scores, idx = nearest(q, c, 4, metric, chunk_size=chunk)
        ref_s, ref_i = reference(q, c, 4, metric)
        np.testing.assert_array_equal(idx.numpy(), ref_i)
        np.testing.assert_allclose(scores.numpy(), ref_s, rtol=1e-5, atol=1e-5)


def test_sklearn_brute_force_agrees(data):
    from sklearn.neighbors import NearestNeighbors

    q, c = data
    dist, ref = NearestNeighbors(n_neighbors=3, algorithm="brute").fit(c).kneighbors(q)
    scores, idx = nearest(torch.from_numpy(q), torch.from_numpy(c), 3, "l2", chunk_size=50)
    np.testing.assert_array_equal(idx.numpy(), ref)
    np.testing.assert_allclose(scores.numpy(), dist, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group", [8, 512])
@pytest.mark.parametrize("chunk_size", [None, 5, 33])
@pytest.mark.parametrize("margin", [0, search.MARGIN])
def test_exact_ties_go_to_the_lower_index(monkeypatch, group, chunk_size, margin):
    """Integer data: many candidates at exactly the same distance."""
    monkeypatch.setattr(search, "GROUP", group)
    monkeypatch.setattr(search, "MARGIN", margin)
    rng = np.random.default_rng(2)
    base = rng.integers(0, 3, size=(40, 4)).astype(np.float32)
    c = base[rng.integers(0, 40, size=400)]  # many duplicated rows
    q = rng.integers(0, 3, size=(25, 4)).astype(np.float32)
    for k in (1, 3, 7):
        scores, idx = nearest(q, c, k, "l2", chunk_size=chunk_size)
        ref_s, ref_i = reference(q, c, k, "l2")
        np.testing.assert_array_equal(idx.numpy(), ref_i)
        np.testing.assert_allclose(scores.numpy(), ref_s, rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 203, 1000])
@pytest.mark.parametrize("margin", [0, search.MARGIN])
def test_heavily_tied_blocks(monkeypatch, chunk_size, margin):
    """Few distinct rows: thresholds tie with many entries, so the filtered
    shortlist update falls back to the group pre-selection (with tail columns)."""
    monkeypatch.setattr(search, "GROUP", 4)
    monkeypatch.setattr(search, "MARGIN", margin)
    rng = np.random.default_rng(12)
    base = rng.integers(0, 2, size=(3, 3)).astype(np.float32)
    c = base[rng.integers(0, 3, size=3000)]
    q = rng.integers(0, 2, size=(20, 3)).astype(np.float32)
    for k in (1, 4):
        scores, idx = nearest(q, c, k, "l2", chunk_size=chunk_size)
        ref_s, ref_i = reference(q, c, k, "l2")
        np.testing.assert_array_equal(idx.numpy(), ref_i)
        np.testing.assert_allclose(scores.numpy(), ref_s, rtol=1e-6)


@pytest.mark.parametrize("metric", ["l2", "cosine", "mahalanobis"])
@pytest.mark.parametrize("chunk_size", [None, 9])
def test_duplicated_float_rows_tie(metric, chunk_size):
    """Real-valued duplicates in different blocks: the float32 products of two
    copies can differ in the last bit, the exact rescoring makes them tie."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(10, 6)).astype(np.float32)
    c = np.repeat(base, 5, axis=0)[rng.permutation(50)]
    q = rng.normal(size=(8, 6)).astype(np.float32)
    cov = spd(6, 2)
    scores, idx = nearest(q, c, 7, metric, covariance=cov, chunk_size=chunk_size)
    ref_s, ref_i = reference(q, c, 7, metric, cov)
    np.testing.assert_array_equal(idx.numpy(), ref_i)
    np.testing.assert_allclose(scores.numpy(), ref_s, rtol=1e-5)


def test_all_identical_candidates_give_the_first_indices():
    c = torch.ones(100, 3)
    for metric in ("l2", "cosine"):
        _, idx = nearest(torch.zeros(2, 3) + 0.5, c, 4, metric, chunk_size=13)
        assert idx.tolist() == [[0, 1, 2, 3]] * 2


@pytest.mark.parametrize("metric", ["l2", "cosine", "mahalanobis"])
def test_class_restriction(data, metric):
    q, c = data
    rng = np.random.default_rng(4)
    ql, cl = rng.integers(0, 3, size=40), rng.integers(0, 3, size=300)
    cov = spd(12, 1)
    scores, idx = nearest(q, c, 3, metric, covariance=cov, query_labels=ql, candidate_labels=cl, chunk_size=16)
    ref_s, ref_i = reference(q, c, 3, metric, cov, q_lab=ql, c_lab=cl)
    np.testing.assert_array_equal(idx.numpy(), ref_i)
    np.testing.assert_allclose(scores.numpy(), ref_s, rtol=1e-5, atol=1e-5)
    assert (cl[idx.numpy()] == ql[:, None]).all()


def test_class_with_too_few_candidates_raises(data):
    q, c = data
    cl = np.zeros(300, dtype=int)
    cl[:2] = 1
    ql = np.zeros(40, dtype=int)
    ql[0] = 1
    with pytest.raises(ValueError, match="class 1 has only 2 candidates but k=3"):
        nearest(q, c, 3, "l2", query_labels=ql, candidate_labels=cl)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_exclude_mask(data, metric):
    q, c = data
    mask = np.zeros(300, dtype=bool)
    mask[np.random.default_rng(5).choice(300, 200, replace=False)] = True
    scores, idx = nearest(q, c, 4, metric, exclude=torch.from_numpy(mask), chunk_size=21)
    ref_s, ref_i = reference(q, c, 4, metric, exclude=mask)
    np.testing.assert_array_equal(idx.numpy(), ref_i)
    np.testing.assert_allclose(scores.numpy(), ref_s, rtol=1e-5, atol=1e-5)
    assert not mask[idx.numpy()].any()


def test_exclude_with_classes(data):
    q, c = data
    rng = np.random.default_rng(6)
    ql, cl = rng.integers(0, 2, size=40), rng.integers(0, 2, size=300)
    mask = rng.random(300) < 0.5
    _, idx = nearest(q, c, 2, "l2", query_labels=ql, candidate_labels=cl, exclude=mask)
    _, ref_i = reference(q, c, 2, "l2", exclude=mask, q_lab=ql, c_lab=cl)
    np.testing.assert_array_equal(idx.numpy(), ref_i)
    with pytest.raises(ValueError, match="left after exclusions"):
        nearest(q, c, 2, "l2", query_labels=ql, candidate_labels=cl, exclude=np.ones(300, bool))


def test_exclusions_leaving_fewer_than_k_raise(data):
    q, c = data
    mask = np.ones(300, dtype=bool)
    mask[:2] = False
    with pytest.raises(ValueError, match="only 2 candidates remain"):
        nearest(q, c, 3, "l2", exclude=mask)


def test_mahalanobis_without_covariance_uses_ledoit_wolf(data):
    q, c = data
    a = nearest(q, c, 3, "mahalanobis")
    b = nearest(q, c, 3, "mahalanobis", covariance=ledoit_wolf_covariance(c))
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[1], b[1])


def test_mahalanobis_on_singular_pool_n_below_d():
    rng = np.random.default_rng(7)
    c = rng.random((50, 80)).astype(np.float32)
    c[:, :10] = 0.0  # constant "border pixels"
    q = rng.random((5, 80)).astype(np.float32)
    cov = ledoit_wolf_covariance(c).numpy()
    scores, idx = nearest(q, c, 3, "mahalanobis")
    ref_s, ref_i = reference(q, c, 3, "mahalanobis", cov)
    np.testing.assert_array_equal(idx.numpy(), ref_i)
    np.testing.assert_allclose(scores.numpy(), ref_s, rtol=1e-4)


@pytest.mark.parametrize("margin", [0, search.MARGIN])
def test_numpy_float64_and_small_blocks(monkeypatch, data, margin):
    """Several query blocks and candidate chunks, also through the exhaustive re-check."""
    monkeypatch.setattr(search, "BLOCK_BYTES", 4 * 1024)
    monkeypatch.setattr(search, "MAX_QUERY_CHUNK", 7)
    monkeypatch.setattr(search, "RESCORE_BYTES", 8 * 12 * 3)  # rescoring in pieces of a few rows
    monkeypatch.setattr(search, "MARGIN", margin)
    q, c = data
    rng = np.random.default_rng(8)
    ql, cl = rng.integers(0, 2, size=40), rng.integers(0, 2, size=300)
    for metric in ("l2", "cosine"):
        scores, idx = nearest(q.astype(np.float64), c.astype(np.float64), 2, metric)
        ref_s, ref_i = reference(q, c, 2, metric)
        np.testing.assert_array_equal(idx.numpy(), ref_i)
        np.testing.assert_allclose(scores.numpy(), ref_s, rtol=1e-5, atol=1e-5)
        _, idx = nearest(q, c, 3, metric, query_labels=ql, candidate_labels=cl, exclude=cl > 5)
        np.testing.assert_array_equal(idx.numpy(), reference(q, c, 3, metric, q_lab=ql, c_lab=cl)[1])


def test_block_and_chunk_sizes_are_bounded():
    for n_q, n_c, dim in [(10, 10**7, 784), (10**5, 10**5, 128), (1000, 50_000, 784), (25, 10**4, 786_432)]:
        q_chunk, c_chunk = search._chunk_sizes(n_q, n_c, dim, None)
        assert q_chunk * c_chunk * 4 <= search.BLOCK_BYTES  # score block
        assert c_chunk * (dim + 1) * 4 <= search.BLOCK_BYTES  # prepared chunk
        assert c_chunk % search.GROUP == 0 or c_chunk < search.GROUP
    q_chunk, c_chunk = search._chunk_sizes(10**6, 10**9, 8, 10**8)
    assert q_chunk == 1 and c_chunk == 10**8  # an explicit chunk_size is obeyed


def test_no_queries():
    scores, idx = nearest(np.zeros((0, 3)), np.ones((5, 3)), 2)
    assert scores.shape == (0, 2) and idx.shape == (0, 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=0), "k must be between 1 and the 300 candidates"),
        (dict(k=301), "k must be between 1 and the 300 candidates"),
        (dict(k=2.0), "k must be an integer"),
        (dict(metric="manhattan"), "unknown search metric"),
        (dict(chunk_size=0), "chunk_size must be a positive integer"),
        (dict(exclude=np.zeros(299, bool)), "exclude must be a bool mask"),
        (dict(exclude=np.zeros(300, int)), "exclude must be a bool mask"),
        (dict(query_labels=np.zeros(40, int)), "pass both query_labels and candidate_labels"),
        (dict(query_labels=np.zeros(39, int), candidate_labels=np.zeros(300, int)), "expected 40 query labels"),
        (dict(metric="mahalanobis", covariance=np.eye(11)), "covariance is 11x11"),
        (dict(metric="mahalanobis", covariance=np.triu(np.ones((12, 12)))), "symmetric"),
        (dict(metric="mahalanobis", covariance=-np.eye(12)), "not positive definite"),
    ],
)
def test_bad_input_raises(data, kwargs, message):
    q, c = data
    args = dict(k=3, metric="l2")
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        nearest(q, c, args.pop("k"), args.pop("metric"), **args)


def test_bad_arrays_raise(data):
    q, c = data
    with pytest.raises(ValueError, match="queries have 12 dimensions but candidates have 11"):
        nearest(q, c[:, :11], 1)
    with pytest.raises(ValueError, match="2-D"):
        nearest(q[0], c, 1)
    for bad in (np.nan, np.inf):
        q2 = q.copy()
        q2[3, 4] = bad
        with pytest.raises(ValueError, match="queries contain NaN or infinite values"):
            nearest(q2, c, 1)
        c2 = c.copy()
        c2[7, 0] = bad
        for metric in ("l2", "cosine", "mahalanobis"):  # checked in the search itself, or up front
            with pytest.raises(ValueError, match="candidates contain NaN or infinite values"):
                nearest(q, c2, 1, metric, covariance=np.eye(12), chunk_size=5)
        with pytest.raises(ValueError, match="candidates contain NaN or infinite values"):
            nearest(q[:0], c2, 1)
        with pytest.raises(ValueError, match="candidates contain NaN or infinite values"):
            nearest(q, c2, 1, exclude=np.arange(300) == 7)
        c2[7, 0] = 3e38  # finite, but its squared norm overflows: not an input error
        nearest(q, c2, 1)


def test_whitening_matrix_inverts_the_covariance():
    cov = spd(9, 3)
    w = whitening_matrix(cov).numpy()
    np.testing.assert_allclose(w.T @ w, np.linalg.inv(cov), rtol=1e-8, atol=1e-10)


def test_inputs_on_two_devices_raise(data):
    q, c = data
    with pytest.raises(ValueError, match="queries are on cpu but candidates on meta"):
        nearest(torch.from_numpy(q), torch.from_numpy(c).to("meta"), 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("metric", ["l2", "cosine", "mahalanobis"])
def test_cuda_search_stays_on_the_device_and_matches(data, metric):
    q, c = data
    rng = np.random.default_rng(11)
    ql, cl = rng.integers(0, 3, size=40), rng.integers(0, 3, size=300)
    qc, cc = torch.from_numpy(q).cuda(), torch.from_numpy(c).cuda()
    for kwargs in ({}, dict(query_labels=ql, candidate_labels=cl, exclude=cl > 1)):
        cov = ledoit_wolf_covariance(c) if metric == "mahalanobis" else None
        scores, idx = nearest(qc, cc, 3, metric, covariance=cov, chunk_size=50, **kwargs)
        assert scores.is_cuda and idx.is_cuda
        ref_s, ref_i = nearest(q, c, 3, metric, covariance=cov, chunk_size=50, **kwargs)
        assert torch.equal(idx.cpu(), ref_i)
        torch.testing.assert_close(scores.cpu(), ref_s, rtol=1e-5, atol=1e-5)
