"""Backbones by name: ``resnet32``, ``wrn16_8`` and ``small_cnn``.

Every backbone exposes the same five blocks, in forward order, so that methods can address
layers by role rather than by architecture (SLMO, PROTOCOL.md §5, freezes the bottom ones):

    stem -> layer1 -> layer2 -> layer3 -> (pool, flatten) -> fc

``model.blocks()`` returns them as an ordered list of ``(name, module)``; ``model.features(x)``
gives the pooled features before ``fc`` (``forward`` is ``fc(features(x))``, so a method that
swaps ``fc``, as LDAM's cosine classifier, keeps the rest).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import BenchError

BLOCK_NAMES = ("stem", "layer1", "layer2", "layer3", "fc")


class Backbone(nn.Module):
    """Common frame: subclasses set stem, layer1..3, head (pre-pool extras) and fc.

    ``linearizable``: everything between leaf modules is linear (sums, shortcuts, pooling; the
    ReLUs are modules), so ``methods.jvp`` may push tangents through the saved activations.
    A subclass that adds a functional non-linearity between modules must set it to False.
    """

    head: nn.Module
    linearizable = True

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return [(name, getattr(self, name)) for name in BLOCK_NAMES]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        x = self.head(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


# --- ResNet-32 (He et al. 2016, CIFAR variant; the Idelbayev code used by MW-Net and CurveNet) ---

class _ShortcutA(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad channels, no parameters (PROTOCOL.md §2)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Identity()
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()  # modules, not F.relu: see Backbone.linearizable

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(Backbone):
    """CIFAR ResNet-6n+2 with option-A shortcuts; n = 5 gives ResNet-32 (about 0.46 M parameters)."""

    def __init__(self, num_classes: int, in_channels: int = 3, blocks_per_stage: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        widths, in_planes = (16, 32, 64), 16
        for i, (width, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            layers = []
            for j in range(blocks_per_stage):
                layers.append(BasicBlock(in_planes, width, stride if j == 0 else 1))
                in_planes = width
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.head = nn.Identity()
        self.fc = nn.Linear(64, num_classes)


# --- WRN-16-8 (Zagoruyko & Komodakis 2016; CurveNet paper Table 6) ---

class WideBlock(nn.Module):
    """Pre-activation wide basic block (BN-ReLU-conv twice, 1x1 conv shortcut when shapes change)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride, bias=False)
                         if stride != 1 or in_planes != planes else None)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()  # modules, not F.relu: see Backbone.linearizable

    def forward(self, x):
        o = self.relu1(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(self.relu2(self.bn2(y)))
        return y + (self.shortcut(o) if self.shortcut is not None else x)


class WideResNet(Backbone):
    """WRN-depth-k; depth 16, k 8 gives WRN-16-8 (2 blocks per stage, widths 128/256/512), as MW-Net's
    ``wideresnet.py`` at its default ``--droprate 0`` (no dropout; the WRN paper often uses 0.3).
    CurveNet-V1 ships no WRN code, so Table 6's network is this one."""

    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 16, widen: int = 8):
        super().__init__()
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        in_planes = 16
        for i, (width, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            layers = []
            for j in range(n):
                layers.append(WideBlock(in_planes, width, stride if j == 0 else 1))
                in_planes = width
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.head = nn.Sequential(nn.BatchNorm2d(in_planes), nn.ReLU())
        self.fc = nn.Linear(in_planes, num_classes)


# --- Small CNN for the embedded default (fmnist-mini, 28x28 grayscale) ---

def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class SmallCNN(Backbone):
    """Four conv-BN-ReLU blocks (16, 32, 64, 64 channels; strides 2, 1, 2, 1), about 61 k parameters.

    Not from any paper: sized so that a quick run on fmnist-mini takes a second or two per epoch
    on 2 CPU cores (the stride-2 stem avoids full-resolution convolutions, which cost 6x more
    here) while keeping the stem / three stages / fc structure that SLMO addresses.
    """

    def __init__(self, num_classes: int, in_channels: int = 1):
        super().__init__()
        self.stem = _conv_bn(in_channels, 16, stride=2)
        self.layer1 = _conv_bn(16, 32)
        self.layer2 = _conv_bn(32, 64, stride=2)
        self.layer3 = _conv_bn(64, 64)
        self.head = nn.Identity()
        self.fc = nn.Linear(64, num_classes)


def init_weights(model: nn.Module, scheme: str = "kaiming") -> nn.Module:
    """Initialise in place.

    ``kaiming`` (MW-Net and LDAM-DRW code, PROTOCOL.md §2): Kaiming normal on conv and linear
    weights, BN weight 1 and bias 0, linear bias left at PyTorch's default. That is their ResNet-32's
    init exactly; the suite gives WRN-16-8 the same, a deviation from MW-Net's own ``wideresnet.py``
    (conv weights N(0, 2 / (k * k * out_channels)), i.e. fan-out, linear weight at PyTorch's default,
    linear bias 0).
    ``curvenet`` (CurveNet code, recognition_curve.py): conv weights N(0, 0.02), BN weights
    N(1, 0.02) and bias 0, linear weights Kaiming normal.
    """
    if scheme not in INIT_SCHEMES:
        raise BenchError(f"unknown init {scheme!r}; choose from {', '.join(INIT_SCHEMES)}")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if scheme == "curvenet":
                nn.init.normal_(m.weight, 0.0, 0.02)
            else:
                nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            if scheme == "curvenet":
                nn.init.normal_(m.weight, 1.0, 0.02)
            else:
                nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


INIT_SCHEMES = ("kaiming", "curvenet")

MODELS = {
    "resnet32": ResNetCifar,
    "wrn16_8": WideResNet,
    "small_cnn": SmallCNN,
}


def build_model(name: str, num_classes: int, in_channels: int = 3, init: str = "kaiming") -> Backbone:
    """A freshly initialised backbone by name (see MODELS)."""
    if name not in MODELS:
        raise BenchError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    return init_weights(MODELS[name](num_classes, in_channels=in_channels), init)
