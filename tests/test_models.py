import pytest
import torch
import torch.nn.functional as F

from healing_pl.models.classifier import Classifier, check_compatible, evaluate, load_classifier


def test_small_cnn_logits_and_embed_shapes():
    model = Classifier("small_cnn", num_classes=10, in_chans=1, image_size=28)
    x = torch.randn(4, 1, 28, 28)
    assert model(x).shape == (4, 10)
    assert model.embed(x).shape == (4, 128)


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0"])
def test_timm_backbone_builds_embeds_and_trains_a_step(name):
    torch.manual_seed(0)
    model = Classifier(name, num_classes=3, in_chans=3, image_size=32)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    assert model.embed(x).shape == (2, model.net.num_features)
    opt = model.configure_optimizers()
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_unknown_backbone_is_one_sentence():
    with pytest.raises(ValueError, match="unknown backbone 'resnet5O'"):
        Classifier("resnet5O")


def test_checkpoint_round_trip_and_bad_checkpoints(tmp_path):
    model = Classifier("small_cnn", image_size=8)
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    loaded = load_classifier(str(path))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        load_classifier(str(tmp_path / "bad.ckpt"))
    with pytest.raises(FileNotFoundError):
        load_classifier(str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="another model"):
        check_compatible(Classifier("small_cnn", image_size=28), loaded, str(path))


def test_evaluate_counts_correct_predictions():
    model = Classifier("small_cnn", image_size=8)
    x = torch.randn(10, 1, 8, 8)
    y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10
    out = evaluate(model, [(x[:6], y[:6]), (x[6:], y[6:])])
    assert out["acc"] == pytest.approx(0.7)
