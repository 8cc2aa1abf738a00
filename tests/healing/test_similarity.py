"""Twin metrics, shrinkage covariance, whitening and representations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.covariance import empirical_covariance, ledoit_wolf
from sklearn.covariance import shrunk_covariance as sk_shrunk

from healing_pl.healing import TWIN_METRICS, Metric, get_metric
from healing_pl.healing.covariance import ledoit_wolf_covariance, shrunk_covariance, whitening_matrix
from healing_pl.healing.metrics import RandomMetric
from healing_pl.healing.representations import feature_vectors, raw_vectors
from healing_pl.healing.search import nearest


class PoolDataset(torch.utils.data.Dataset):
    """dataset[id] -> (image tensor, int label) for any pool id."""

    def __init__(self, n=60, shape=(1, 4, 4), seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, *shape, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


class Embedder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5), torch.nn.Dropout(0.9))
        self.head = torch.nn.Linear(5, 3)
        self.seen_training = []

    def embed(self, x):
        self.seen_training.append(self.training)
        return self.body(x)

    def forward(self, x):
        return self.head(self.embed(x))


@pytest.mark.parametrize("n, d", [(30, 80), (200, 10), (2, 5)])
def test_ledoit_wolf_matches_sklearn(n, d):
    x = np.random.default_rng(0).normal(size=(n, d))
    cov, s = ledoit_wolf_covariance(x, return_shrinkage=True)
    ref_cov, ref_s = ledoit_wolf(x)
    assert s == pytest.approx(ref_s, rel=1e-8, abs=1e-12)
    np.testing.assert_allclose(cov.numpy(), ref_cov, rtol=1e-8, atol=1e-12)


def test_shrunk_covariance_matches_sklearn():
    x = np.random.default_rng(1).normal(size=(20, 7))
    ref = sk_shrunk(empirical_covariance(x), shrinkage=0.3)
    np.testing.assert_allclose(shrunk_covariance(x, 0.3).numpy(), ref, rtol=1e-10)
    with pytest.raises(ValueError, match="shrinkage must be in"):
        shrunk_covariance(x, 0.0)


def test_shrinkage_covariance_is_positive_definite_when_n_below_d():
    rng = np.random.default_rng(2)
    x = rng.random((40, 100))
    x[:, :15] = 0.0  # constant border pixels: the sample covariance is singular
    assert np.linalg.matrix_rank(np.cov(x.T)) < 100
    cov = ledoit_wolf_covariance(x)
    assert torch.linalg.eigvalsh(cov).min() > 0
    torch.linalg.cholesky(cov)  # does not raise


def test_whitening_plus_l2_is_the_mahalanobis_distance():
    rng = np.random.default_rng(3)
    x = rng.random((40, 100))
    cov = ledoit_wolf_covariance(x)
    w = whitening_matrix(cov)
    a, b = rng.random((5, 100)), rng.random((7, 100))
    whitened = cdist(a @ w.numpy().T, b @ w.numpy().T)
    ref = cdist(a, b, "mahalanobis", VI=np.linalg.inv(cov.numpy()))
    np.testing.assert_allclose(whitened, ref, rtol=1e-8)


def test_identical_vectors_have_no_covariance():
    with pytest.raises(ValueError, match="all vectors are identical"):
        ledoit_wolf_covariance(np.ones((5, 3)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        ledoit_wolf_covariance(np.ones((1, 3)))


def test_registry():
    assert set(TWIN_METRICS) == {"raw_l2", "raw_mahalanobis", "feat_cosine", "feat_mahalanobis", "random"}
    expected = {
        "raw_l2": (False, "l2", False),
        "raw_mahalanobis": (False, "mahalanobis", False),
        "feat_cosine": (True, "cosine", True),
        "feat_mahalanobis": (True, "mahalanobis", False),
        "random": (False, "random", False),
    }
    for name, (feats, search_metric, larger) in expected.items():
        m = get_metric(name)
        assert isinstance(m, Metric) and m.name == name
        assert (m.needs_features, m.search_metric, m.larger_is_better) == (feats, search_metric, larger)
    assert get_metric(m) is m
    with pytest.raises(ValueError, match="unknown twin metric 'pixels'"):
        get_metric("pixels")
    with pytest.raises(ValueError, match="shrinkage must be in"):
        get_metric("raw_mahalanobis", shrinkage=2.0)


def test_raw_vectors():
    ds = PoolDataset()
    ids = [5, 0, 17]
    v, y = raw_vectors(ds, ids, batch_size=2, return_labels=True)
    assert v.shape == (3, 16) and v.dtype == torch.float32
    torch.testing.assert_close(v, ds.x[ids].reshape(3, -1))
    assert y.tolist() == ds.y[ids].tolist()
    assert torch.equal(get_metric("raw_l2").representations(ds, torch.tensor(ids)), v)


def test_feature_vectors_eval_no_grad_and_restores_mode():
    ds = PoolDataset()
    model = Embedder().train()
    v = feature_vectors(model, ds, range(10), batch_size=4)
    assert v.shape == (10, 5) and not v.requires_grad
    assert model.seen_training == [False, False, False]  # eval mode: dropout off
    assert model.training  # restored
    with torch.no_grad():
        ref = model.eval().body(ds.x[:10])
    torch.testing.assert_close(v, ref)
    f = get_metric("feat_cosine").representations(ds, range(10), model=model)
    torch.testing.assert_close(f, ref)


def test_feature_metrics_need_an_embed_method_and_a_model():
    ds = PoolDataset()
    with pytest.raises(ValueError, match="Sequential has no embed\\(\\) method"):
        feature_vectors(torch.nn.Sequential(torch.nn.Flatten()), ds, [0])
    with pytest.raises(ValueError, match="needs the baseline model"):
        get_metric("feat_mahalanobis").representations(ds, [0])


@pytest.mark.parametrize("name", ["raw_l2", "feat_cosine", "raw_mahalanobis", "feat_mahalanobis"])
def test_metric_rank_is_nearest(name):
    rng = np.random.default_rng(4)
    q, c = rng.random((6, 16)), rng.random((50, 16))
    metric = get_metric(name)
    scores, idx = metric.rank(q, c, 3)
    cov = metric.covariance(c)
    ref = nearest(q, c, 3, metric.search_metric, covariance=cov)
    torch.testing.assert_close(scores, ref[0])
    assert torch.equal(idx, ref[1])
    assert (cov is None) == (metric.search_metric != "mahalanobis")


def test_fixed_shrinkage_metric():
    rng = np.random.default_rng(5)
    c = rng.random((30, 16))
    metric = get_metric("raw_mahalanobis", shrinkage=0.5)
    torch.testing.assert_close(metric.covariance(c), shrunk_covariance(c, 0.5))


def test_random_metric_is_reproducible_by_seed():
    q, c = torch.empty(20, 0), torch.empty(100, 0)
    a = RandomMetric(seed=7).rank(q, c, 4)[1]
    b = RandomMetric(seed=7).rank(q, c, 4)[1]
    other = RandomMetric(seed=8).rank(q, c, 4)[1]
    assert torch.equal(a, b) and not torch.equal(a, other)
    assert all(len(set(row)) == 4 for row in a.tolist())  # distinct per query


def test_random_metric_respects_classes_and_exclusions():
    rng = np.random.default_rng(6)
    ql, cl = rng.integers(0, 3, 30), rng.integers(0, 3, 200)
    mask = rng.random(200) < 0.5
    scores, idx = RandomMetric(1).rank(
        np.zeros((30, 2)), np.zeros((200, 2)), 3, query_labels=ql, candidate_labels=cl, exclude=mask
    )
    assert (cl[idx.numpy()] == ql[:, None]).all()
    assert not mask[idx.numpy()].any()
    assert (scores == 0).all()
    with pytest.raises(ValueError, match="k must be between 1 and the 200 candidates"):
        RandomMetric(1).rank(np.zeros((3, 2)), np.zeros((200, 2)), 500)
    with pytest.raises(ValueError, match="only 0 candidates of class 0 are usable but k=3"):
        RandomMetric(1).rank(
            np.zeros((3, 2)), np.zeros((200, 2)), 3, query_labels=np.zeros(3, int), candidate_labels=np.ones(200, int)
        )


def test_random_metric_state_round_trip():
    import json

    m = RandomMetric(3)
    m.rank(torch.empty(5, 0), torch.empty(50, 0), 2)
    state = json.loads(json.dumps(m.state_dict()))  # plain ints
    nxt = m.rank(torch.empty(5, 0), torch.empty(50, 0), 2)[1]
    fresh = RandomMetric(0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.rank(torch.empty(5, 0), torch.empty(50, 0), 2)[1], nxt)


def test_random_metric_representations_are_empty_placeholders():
    ds = PoolDataset()
    v, y = get_metric("random").representations(ds, [3, 4], return_labels=True)
    assert v.shape == (2, 0) and y.tolist() == ds.y[[3, 4]].tolist()


def test_feature_vectors_of_a_float64_small_cnn():
    """Batches go to the model's device and dtype; features come back float32 on that device."""
    from healing_pl.models.backbones import SmallCNN

    torch.manual_seed(0)
    ds = PoolDataset(n=12, shape=(1, 8, 8))
    model = SmallCNN(in_chans=1, num_classes=3, image_size=8, width=4, hidden=6).double().train()
    v, y = feature_vectors(model, ds, range(12), batch_size=5, return_labels=True)
    assert v.dtype == torch.float32 and v.shape == (12, 6) and v.device == torch.device("cpu")
    assert y.tolist() == ds.y.tolist() and model.training
    with torch.no_grad():
        ref = model.eval().embed(ds.x.double())
    assert ref.dtype == torch.float64
    torch.testing.assert_close(v, ref.float())
    f = get_metric("feat_mahalanobis").representations(ds, range(12), model=model)
    torch.testing.assert_close(f, v)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_features_and_ranking_stay_on_the_model_device():
    from healing_pl.models.backbones import SmallCNN

    torch.manual_seed(0)
    ds = PoolDataset(n=40, shape=(1, 8, 8))
    model = SmallCNN(in_chans=1, num_classes=3, image_size=8, width=4, hidden=6).double().cuda()
    v = feature_vectors(model, ds, range(40), batch_size=16)
    assert v.is_cuda and v.dtype == torch.float32
    cpu_model = SmallCNN(in_chans=1, num_classes=3, image_size=8, width=4, hidden=6).double()
    cpu_model.load_state_dict({k: t.cpu() for k, t in model.state_dict().items()})
    torch.testing.assert_close(v.cpu(), feature_vectors(cpu_model, ds, range(40)))
    for name in ("feat_cosine", "feat_mahalanobis"):
        metric = get_metric(name)
        cov = metric.covariance(v[10:])
        assert (cov is None) if name == "feat_cosine" else cov.is_cuda, name  # cosine uses no covariance
        scores, idx = metric.rank(v[:10], v[10:], 3)
        assert scores.is_cuda and idx.is_cuda
        ref = metric.rank(v[:10].cpu(), v[10:].cpu(), 3)
        assert torch.equal(idx.cpu(), ref[1])


def test_covariance_estimators_leave_their_input_alone():
    x = np.random.default_rng(9).normal(size=(30, 6))
    before = x.copy()
    ledoit_wolf_covariance(x)
    shrunk_covariance(x, 0.2)
    np.testing.assert_array_equal(x, before)


def test_covariance_in_row_blocks_matches_sklearn(monkeypatch):
    from healing_pl.healing import covariance

    monkeypatch.setattr(covariance, "_BLOCK_BYTES", 8 * 5 * 3)  # 3 rows per block
    x = np.random.default_rng(10).normal(size=(17, 5)).astype(np.float32)
    cov, s = ledoit_wolf_covariance(x, return_shrinkage=True)
    ref_cov, ref_s = ledoit_wolf(x.astype(np.float64))
    assert s == pytest.approx(ref_s, rel=1e-8)
    np.testing.assert_allclose(cov.numpy(), ref_cov, rtol=1e-8, atol=1e-12)
    with pytest.raises(ValueError, match="NaN or infinite"):
        x[15, 2] = np.nan
        ledoit_wolf_covariance(x)


def test_one_way_imports():
    """covariance <- search <- representations <- metric <- metrics <- policies: no module imports one further
    along, even lazily (a package's modules may import each other)."""
    import ast
    import importlib
    import pathlib

    order = ["covariance", "search", "representations", "metric", "metrics", "policies"]
    for i, name in enumerate(order):
        mod = importlib.import_module(f"healing_pl.healing.{name}")
        path = pathlib.Path(mod.__file__)
        files = sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]
        imported = set()
        for file in files:
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    imported.add(node.module)
                elif isinstance(node, ast.Import):
                    imported.update(a.name for a in node.names)
        later = [f"healing_pl.healing.{n}" for n in order[i + 1 :]]
        bad = {m for m in imported if m == f"healing_pl.healing.{name}" and len(files) == 1}
        bad |= {m for m in imported for n in later if m == n or m.startswith(n + ".")}
        assert not bad, f"{name} imports {bad}"
    from healing_pl.healing import covariance, search
    from healing_pl.healing.metrics import _mahalanobis

    assert _mahalanobis.ledoit_wolf_covariance is covariance.ledoit_wolf_covariance
    assert search.whitening_matrix is covariance.whitening_matrix
