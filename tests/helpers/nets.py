"""Real torch modules used across the tests, each with a function-preserving hidden-neuron permutation.

Every ``permute_*`` function permutes the parameters of a deep copy and returns it; tests check the
function is unchanged before comparing graphs.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.helpers.permute import permute_in, permute_out

ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU,
        "identity": nn.Identity}


class MLP(nn.Module):
    """Linear layers with module and functional activations, optional missing biases."""

    def __init__(self, sizes=(6, 16, 12, 3), bias=True):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = nn.Tanh()

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x) if i % 2 == 0 else F.relu(x)
        return x


def randomize(m: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random (no zero biases, no unit LayerNorm weights, no two layers alike), eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return m.eval()


def permute_mlp(model: MLP, gen: torch.Generator) -> MLP:
    m = copy.deepcopy(model)
    for a, b in zip(m.layers[:-1], m.layers[1:]):
        perm = torch.randperm(a.out_features, generator=gen)
        permute_out(a, perm)
        permute_in(b, perm)
    return m


class WildParkCNN(nn.Module):
    """The CNN Wild Park family: conv layers with per-layer kernels and activations, skips added before
    the activation into the first min(c_i, c_j) channels, global average pooling, a linear head.

    ``residual[i] = j`` adds the output of layer ``j`` (``-1``: the input image, never used here) into
    layer ``i``.
    """

    def __init__(self, channels=(8, 4, 16, 8), kernels=(3, 5, 3, 7), acts=("relu", "tanh", "gelu", "sigmoid"),
                 residual=(-1, -1, 0, 1), in_channels=1, n_classes=5, linear=False):
        super().__init__()
        self.residual = list(residual)
        self.widths = list(channels)
        self.linear = linear  # the same family with Linear layers: a residual MLP
        chans = (in_channels,) + tuple(channels)
        self.layers = nn.ModuleList(nn.Linear(chans[i], chans[i + 1]) if linear else
                                    nn.Conv2d(chans[i], chans[i + 1], k, padding=k // 2)
                                    for i, k in enumerate(kernels))
        self.acts = nn.ModuleList(ACTS[a]() for a in acts)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans[-1], n_classes)

    def forward(self, x: Tensor) -> Tensor:
        outs = []
        for i, (conv, act) in enumerate(zip(self.layers, self.acts)):
            h = conv(x)
            j = self.residual[i]
            if j >= 0:
                s = outs[j]
                c = self.widths[i]
                m = min(c, self.widths[j])
                if m == c:
                    h = h + s[:, :m]
                else:
                    h = torch.cat([h[:, :m] + s[:, :m], h[:, m:]], dim=1)
            x = act(h)
            outs.append(x)
        return self.fc(x if self.linear else torch.flatten(self.pool(x), 1))


def permute_wildpark(model: WildParkCNN, gen: torch.Generator) -> WildParkCNN:
    """Nested-segment permutation: channels are cut at every distinct channel count; each segment has one
    permutation shared by all layers that have it, so every min(c_i, c_j) join stays aligned."""
    m = copy.deepcopy(model)
    widths = [layer.weight.shape[0] for layer in m.layers]
    cuts = sorted({0} | set(widths))
    seg_perm = {(a, b): a + torch.randperm(b - a, generator=gen) for a, b in zip(cuts[:-1], cuts[1:])}
    perms = []
    for width in widths:
        parts = [p for (a, b), p in seg_perm.items() if b <= width]
        perms.append(torch.cat(parts))
    for i, conv in enumerate(m.layers):
        permute_out(conv, perms[i])
        nxt = m.layers[i + 1] if i + 1 < len(m.layers) else m.fc
        permute_in(nxt, perms[i])
    return m


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv1(x))
        out = self.conv2(out)
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet (no torchvision): stem, stages of basic blocks with identity and 1x1-conv shortcuts."""

    def __init__(self, widths=(8, 16), blocks=(2, 2), in_channels=3, n_classes=4):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        layers, cin = [], widths[0]
        for s, (w, n) in enumerate(zip(widths, blocks)):
            for b in range(n):
                layers.append(BasicBlock(cin, w, stride=2 if (s > 0 and b == 0) else 1))
                cin = w
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        x = self.blocks(x)
        return self.fc(x.mean((2, 3)))


def permute_resnet(model: SmallResNet, gen: torch.Generator) -> SmallResNet:
    """One permutation per residual stream (shared by every block writing into it) and one per block's
    inner channels."""
    m = copy.deepcopy(model)
    stream = torch.randperm(m.stem.out_channels, generator=gen)
    permute_out(m.stem, stream)
    for blk in m.blocks:
        inner = torch.randperm(blk.conv1.out_channels, generator=gen)
        permute_in(blk.conv1, stream)
        permute_out(blk.conv1, inner)
        permute_in(blk.conv2, inner)
        if isinstance(blk.shortcut, nn.Conv2d):
            new_stream = torch.randperm(blk.conv2.out_channels, generator=gen)
            permute_in(blk.shortcut, stream)
            permute_out(blk.shortcut, new_stream)
            stream = new_stream
        permute_out(blk.conv2, stream)
    permute_in(m.fc, stream)
    return m


def nan_copy(m, persistent_only: bool = False):
    """A deep copy of ``m`` with every floating parameter and buffer NaN: a template for read-back tests.
    ``persistent_only``: only what its state dict holds, not the non-persistent buffers a module derives at
    construction (timm Swin's ``attn_mask``: structure the rules check, which the graph does not hold)."""
    blank = copy.deepcopy(m)
    with torch.no_grad():
        tensors = blank.state_dict(keep_vars=True).values() if persistent_only else \
            list(blank.parameters()) + list(blank.buffers())
        for t in tensors:
            if t.is_floating_point():
                t.fill_(float("nan"))
    return blank
