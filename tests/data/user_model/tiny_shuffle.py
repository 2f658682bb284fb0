"""A user's own small classifier, as the tests copy it into a temporary package: blocks torchvision's classifiers
lack together — a grouped 1×1 convolution, a channel shuffle, a depthwise 3×3, squeeze-excitation gated through a
custom activation — and 10 classes, not ImageNet's 1000."""

from __future__ import annotations

import torch
from torch import nn


class QuickGELU(nn.Module):
    """x · sigmoid(1.702 x): a custom activation written from primitives, as research code often has."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ShuffleSEBlock(nn.Module):
    """Grouped 1×1 conv → channel shuffle → depthwise 3×3 → squeeze-excitation, with a residual."""

    def __init__(self, channels: int, groups: int = 4):
        super().__init__()
        self.pointwise = nn.Conv2d(channels, channels, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.expand = nn.Conv2d(channels // 4, channels, 1)
        self.act = QuickGELU()
        self.groups = groups

    def shuffle(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        x = x.reshape(batch, self.groups, channels // self.groups, height, width)
        return x.transpose(1, 2).reshape(batch, channels, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shuffle(self.act(self.bn1(self.pointwise(x))))
        y = self.bn2(self.depthwise(y))
        gate = torch.sigmoid(self.expand(self.act(self.reduce(y.mean((2, 3), keepdim=True)))))
        return x + y * gate


class TinyShuffleNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=4, padding=1, bias=False), nn.BatchNorm2d(16), QuickGELU())
        self.block1 = ShuffleSEBlock(16)
        self.down = nn.Sequential(
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), QuickGELU()
        )
        self.block2 = ShuffleSEBlock(32)
        self.head = nn.Linear(32, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.down(self.block1(self.stem(x)))).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build() -> nn.Module:
    """The factory: `--model <package>.tiny_shuffle:build`."""
    return TinyShuffleNet(num_classes=10)


def trained_like(seed: int = 1) -> nn.Module:
    """The model with weights a training run might leave: random, normalization statistics far from identity."""
    torch.manual_seed(seed)
    model = build()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
                module.running_mean.normal_(0.0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
        model.eval()
        # A classifier that reads what differs between inputs, not the features' common mean: answers that vary.
        features = model.features(torch.randn(64, 3, 224, 224))
        model.head.weight.div_(features.std(dim=0))
        model.head.bias.copy_(-(model.head.weight @ features.mean(dim=0)))
    return model


not_a_function = 42


def not_a_module() -> str:
    return "a string"
