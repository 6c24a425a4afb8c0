"""Reference architectures for the performance benchmarks (plain torch, no torchvision)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuralgraph.zoo.arch import build_model


def small_cnn_zoo() -> nn.Module:
    """The Small CNN Zoo shape: 1->16->16->16 3x3 convs, global average pool, linear 16->10."""
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def wildpark() -> nn.Module:
    """A Wild-Park-style CNN (the zoo family): per-layer kernels and activations, min-channel skips."""
    return build_model({"family": "wildpark", "in_channels": 3, "n_classes": 10,
                        "channels": [16, 32, 8, 32, 16], "kernels": [3, 7, 5, 3, 5],
                        "activations": ["relu", "gelu", "tanh", "sigmoid", "leaky_relu"],
                        "residual": [-1, -1, 0, 1, 2]})


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.down = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(out + (self.down(x) if self.down is not None else x))


class ResNet18(nn.Module):
    """ResNet-18's convolutional shape (normalization layers omitted): 7x7 stem, 4 stages of 2 basic
    blocks (64, 128, 256, 512 channels), global pool, linear 512->1000."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        blocks, cin = [], 64
        for i, w in enumerate((64, 128, 256, 512)):
            for b in range(2):
                blocks.append(_Block(cin, w, 2 if (i > 0 and b == 0) else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2, 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(x), 1), 1))
