"""The model zoo: a small CNN for 28x28 grey images, VGG-11, ResNet-18 and WRN-16-4 for 32x32 colour.

Every model takes float images in [0, 1] and normalises them itself, so data, generators and
attacks never have to agree on normalisation constants.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fedattr.core.errors import UserError


class _Normalise(nn.Module):
    """Maps [0, 1] pixels to roughly zero mean and unit variance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.25


class SmallCNN(nn.Module):
    """Two conv layers and two linear layers (about 44k parameters at 28x28)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, side: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            _Normalise(),
            nn.Conv2d(in_channels, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = 32 * (((side - 4) // 2 - 4) // 2) ** 2
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGG11(nn.Module):
    """VGG-11 with BatchNorm for 32x32 inputs (the CIFAR variant: one linear head)."""

    CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, num_classes: int = 10, in_channels: int = 3, side: int = 32, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = [_Normalise()]
        c = in_channels
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = max(8, int(v * width))
                layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                c = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def resnet18(num_classes: int = 10, in_channels: int = 3, side: int = 32) -> nn.Module:
    """torchvision's ResNet-18 with the 32x32 stem (3x3 conv, no max-pool)."""
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return nn.Sequential(_Normalise(), net)


class _WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = torch.relu(self.bn1(x))
        y = self.conv2(torch.relu(self.bn2(self.conv1(o))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """Wide ResNet (Zagoruyko & Komodakis 2016); depth 16, widen 4 gives WRN-16-4."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, side: int = 32, depth: int = 16, widen: int = 4):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        layers: list[nn.Module] = [_Normalise(), nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
        cin = widths[0]
        for stage, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                layers.append(_WideBlock(cin, stage, stride if i == 0 else 1))
                cin = stage
        layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": SmallCNN,
    "vgg11": VGG11,
    "resnet18": resnet18,
    "wrn16_4": WideResNet,
}


def build_model(name: str, num_classes: int = 10, in_channels: int = 1, side: int = 28) -> nn.Module:
    """Construct model ``name`` for images of ``in_channels`` x ``side`` x ``side``."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if name == "cnn" and side < 16:
        raise UserError(f"model 'cnn' needs images of at least 16x16 pixels, got {side}x{side}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, side=side)


def resolve_device(device: str = "cpu") -> torch.device:
    """``auto`` picks cuda when available; ``cuda`` without a GPU is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device 'cuda' was requested but no CUDA GPU is visible; use runtime.device = 'cpu' or 'auto'")
    return torch.device(device)
