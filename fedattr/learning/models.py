"""The model zoo: an MLP, a small CNN and ResNet-8 for small grey images (28x28 or 8x8), VGG-11,
ResNet-18 and WRN-16-4 for 32x32 colour.

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
    """Two conv layers and two linear layers (about 44k parameters at 28x28).

    Images of at least 16x16 pixels get 5x5 convolutions without padding; smaller ones (8x8
    digits) get 3x3 convolutions with padding 1, so that both 2x2 poolings still apply.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, side: int = 28):
        super().__init__()
        if side >= 16:
            kernel, pad, after = 5, 0, ((side - 4) // 2 - 4) // 2
        else:
            kernel, pad, after = 3, 1, side // 4
        if after < 1:
            raise UserError(f"model 'cnn' needs images of at least 4x4 pixels, got {side}x{side}")
        self.features = nn.Sequential(
            _Normalise(),
            nn.Conv2d(in_channels, 16, kernel, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = 32 * after**2
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """Fully connected network: flattened pixels, two hidden ReLU layers (256 and 128 units).

    About 235k parameters at 28x28 and 50k at 8x8.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, side: int = 28,
                 hidden: tuple[int, ...] = (256, 128)):
        super().__init__()
        layers: list[nn.Module] = [_Normalise(), nn.Flatten()]
        width = in_channels * side * side
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 conv-BN layers plus the identity or a 1x1 projection."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = (nn.Identity() if cin == cout and stride == 1 else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet8(nn.Module):
    """ResNet-8 for small grey images: a 3x3 stem, three basic blocks (16, 32, 32 channels),
    global average pooling and one linear layer (about 40k parameters).

    The first block halves the resolution only for images of at least 16x16 pixels, the other
    two always: 28x28 ends at 4x4 (about 4 MFLOP per image), 8x8 at 2x2.
    """

    WIDTHS = (16, 32, 32)

    def __init__(self, num_classes: int = 10, in_channels: int = 1, side: int = 28):
        super().__init__()
        if side < 4:
            raise UserError(f"model 'resnet8' needs images of at least 4x4 pixels, got {side}x{side}")
        w = self.WIDTHS
        strides = (2 if side >= 16 else 1, 2, 2)
        self.features = nn.Sequential(
            _Normalise(),
            nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(),
            _BasicBlock(w[0], w[0], strides[0]), _BasicBlock(w[0], w[1], strides[1]),
            _BasicBlock(w[1], w[2], strides[2]),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(w[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


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
    "mlp": MLP,
    "cnn": SmallCNN,
    "resnet8": ResNet8,
    "vgg11": VGG11,
    "resnet18": resnet18,
    "wrn16_4": WideResNet,
}


def build_model(name: str, num_classes: int = 10, in_channels: int = 1, side: int = 28) -> nn.Module:
    """Construct model ``name`` for images of ``in_channels`` x ``side`` x ``side``."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, side=side)


def resolve_device(device: str = "cpu") -> torch.device:
    """``auto`` picks cuda when available; ``cuda`` without a GPU is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device 'cuda' was requested but no CUDA GPU is visible; use runtime.device = 'cpu' or 'auto'")
    return torch.device(device)
