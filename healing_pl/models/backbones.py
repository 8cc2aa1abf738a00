"""Backbones: the project's small MNIST CNN, the paper's authors' MNIST CNN and any timm model by name.

Every backbone is an ``nn.Module`` with ``forward(x) -> logits`` and
``embed(x) -> features`` (the penultimate layer, used for feature twins).
"""

from __future__ import annotations

import os

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class SmallCNN(nn.Module):
    """Two conv blocks and two linear layers, the paper's small MNIST CNN shape.

    conv3x3(16) - ReLU - maxpool - conv3x3(32) - ReLU - maxpool - fc(128) - ReLU - fc(classes).
    Works for any square image side divisible by 4 (28 for MNIST, 8 for digits).
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        width: int = 16,
        hidden: int = 128,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"small_cnn needs an image side divisible by 4, got {image_size}.")
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width * (image_size // 4) ** 2, hidden)
        self.drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.num_features = hidden

    def embed(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.embed(x)))


class PaperCNN(nn.Module):
    """The paper's authors' MNIST CNN (the common PyTorch MNIST network).

    conv3x3(32, no padding) - ReLU - conv3x3(64, no padding) - ReLU - maxpool - fc(128) - ReLU - fc(classes).
    For MNIST (28x28) the flattened map is 64 x 12 x 12 = 9216.  Works for any square image side of at least 6
    (8 for digits: 64 x 2 x 2).  ``drop_rate`` is the dropout before each linear layer (0: none).
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        width: int = 32,
        hidden: int = 128,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if image_size < 6:
            raise ValueError(f"paper_cnn needs an image side of at least 6, got {image_size}.")
        self.conv1 = nn.Conv2d(in_chans, width, 3)
        self.conv2 = nn.Conv2d(width, 2 * width, 3)
        self.drop1 = nn.Dropout(drop_rate)
        self.fc1 = nn.Linear(2 * width * ((image_size - 4) // 2) ** 2, hidden)
        self.drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.num_features = hidden

    def embed(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(self.drop1(x.flatten(1))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.embed(x)))


#: the backbones built here, by name (anything else is a timm model name)
OWN_BACKBONES = {"small_cnn": SmallCNN, "paper_cnn": PaperCNN}


class TimmBackbone(nn.Module):
    """Any timm model (``resnet50``, ``efficientnet_b0``, ...) with an ``embed`` method."""

    def __init__(
        self,
        name: str,
        in_chans: int,
        num_classes: int,
        pretrained: bool = False,
        weights: str | None = None,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        import timm

        kwargs = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        if weights is not None:
            if not os.path.isfile(weights):
                raise FileNotFoundError(f"weights file '{weights}' does not exist.")
            # timm loads a local file as the pretrained weights (classifier re-initialised)
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=weights))
        else:
            kwargs.update(pretrained=pretrained)
        self.net = timm.create_model(name, **kwargs)
        self.num_features = self.net.num_features

    def embed(self, x: Tensor) -> Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def build_backbone(
    name: str,
    *,
    in_chans: int,
    num_classes: int,
    image_size: int,
    pretrained: bool = False,
    weights: str | None = None,
    drop_rate: float = 0.0,
) -> nn.Module:
    """``small_cnn``, ``paper_cnn`` or a timm model name; anything else stops with a sentence."""
    if name in OWN_BACKBONES:
        if pretrained or weights:
            raise ValueError(f"{name} has no pretrained weights; drop --model.pretrained / --model.weights.")
        return OWN_BACKBONES[name](in_chans, num_classes, image_size, drop_rate=drop_rate)
    import timm

    if not timm.is_model(name):
        raise ValueError(
            f"unknown backbone '{name}'; use small_cnn, paper_cnn or a timm model name such as resnet50 or "
            "efficientnet_b0."
        )
    return TimmBackbone(name, in_chans, num_classes, pretrained, weights, drop_rate)
