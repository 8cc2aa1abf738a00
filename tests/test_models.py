import pytest
import torch
import torch.nn.functional as F

from healing_pl.models.classifier import Classifier, check_compatible, evaluate, load_classifier


def test_small_cnn_logits_and_embed_shapes():
    model = Classifier("small_cnn", num_classes=10, in_chans=1, image_size=28)
    x = torch.randn(4, 1, 28, 28)
    assert model(x).shape == (4, 10)
    assert model.embed(x).shape == (4, 128)


def test_paper_cnn_is_conv32_conv64_fc128_and_trains_a_step():
    model = Classifier("paper_cnn", num_classes=10, in_chans=1, image_size=28)
    net = model.net
    assert (net.conv1.out_channels, net.conv2.out_channels) == (32, 64)
    assert (net.conv1.kernel_size, net.conv1.padding) == ((3, 3), (0, 0))
    assert (net.fc1.in_features, net.fc1.out_features, net.fc2.in_features) == (9216, 128, 128)  # 64 x 12 x 12
    n_params = 32 * 9 + 32 + 64 * 32 * 9 + 64 + 9216 * 128 + 128 + 128 * 10 + 10
    assert sum(p.numel() for p in model.parameters()) == n_params
    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 3, 7, 9])
    assert model(x).shape == (4, 10)
    assert model.embed(x).shape == (4, 128) and model.net.num_features == 128
    assert torch.allclose(model(x), net.fc2(model.embed(x)))  # embed is the penultimate layer
    opt = model.configure_optimizers()
    opt = opt[0] if isinstance(opt, (list, tuple)) else opt
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    digits = Classifier("paper_cnn", num_classes=10, in_chans=1, image_size=8)
    assert digits.net.fc1.in_features == 64 * 2 * 2 and digits(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="^paper_cnn needs an image side of at least 6, got 4\\.$"):
        Classifier("paper_cnn", image_size=4)
    with pytest.raises(ValueError, match="^paper_cnn has no pretrained weights"):
        Classifier("paper_cnn", pretrained=True)


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
