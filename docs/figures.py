"""Regenerate the drawings in docs/img: ``python docs/figures.py`` (all), or only some by name:
``python docs/figures.py norm concat``."""
from __future__ import annotations

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from neuralgraph import to_neural_graph  # noqa: E402
from neuralgraph.viz import draw_neural_graph  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "img")


class Residual(nn.Module):
    """Two convs; layer 2 receives the first 2 channels of layer 0 before its activation."""

    def __init__(self):
        super().__init__()
        self.c0, self.c1, self.c2 = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 3, 5, padding=2), \
            nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        a = torch.relu(self.c0(x))
        b = torch.tanh(self.c1(a))
        h = self.c2(b)
        h = torch.cat([h[:, :2] + a, h[:, 2:]], 1)
        return self.fc(torch.sigmoid(h).mean((2, 3)))


class Flatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 2 * 2, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class Attention(nn.Module):
    """Multi-head self-attention, 2 heads of size 2 on 4 features (appendix C.4)."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x)[0]


class Dense(nn.Module):
    """DenseNet-style: the second conv reads the channel concatenation of the stem's and the first conv's maps,
    and the head pools the concatenation of all three."""

    def __init__(self):
        super().__init__()
        self.stem, self.c1, self.c2 = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 1, 3, padding=1), \
            nn.Conv2d(3, 1, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.cat([x, torch.relu(self.c1(x))], dim=1)
        z = torch.cat([y, torch.tanh(self.c2(y))], dim=1)
        return self.fc(z.mean((2, 3)))


EXAMPLES = {
    "mlp": (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), {}),
    "cnn": (nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 3, groups=3), nn.GELU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)), {}),
    "residual": (Residual(), {}),
    "flatten_virtual": (Flatten(), {"flatten": "virtual"}),
    "flatten_repeat": (Flatten(), {"flatten": "repeat"}),
    "attention": (Attention(), {}),
    "norm": (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3), nn.LayerNorm(3),
                           nn.Linear(3, 2)), {}),
    "concat": (Dense(), {}),
}


def main(names: list[str] | None = None) -> None:
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    for name, (model, cfg) in EXAMPLES.items():
        if names and name not in names:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        draw_neural_graph(to_neural_graph(model, **cfg), ax=ax, title=name)
        fig.tight_layout()
        fig.savefig(os.path.join(OUT, f"{name}.png"), dpi=110)
        plt.close(fig)
        print("wrote", os.path.join(OUT, f"{name}.png"))


def probe_features() -> None:
    """A sine MLP (an INR of 2-d coordinates) drawn twice, neurons coloured by their value on one probe."""
    from neuralgraph.transforms import probe_activations

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 5), Sin(), nn.Linear(5, 5), Sin(), nn.Linear(5, 1))
    g = to_neural_graph(model)
    probes = torch.tensor([[-0.5, 0.5], [0.8, 0.1]])
    values = probe_activations(g, model, probes)  # [N, 2]
    columns: dict[int, list[int]] = {}
    for n, layer in enumerate(g.node_layer.tolist()):
        columns.setdefault(layer, []).append(n)
    pos = {n: (layer, (len(ns) - 1) / 2 - k) for layer, ns in columns.items() for k, n in enumerate(ns)}
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for m, ax in enumerate(axes):
        draw_neural_graph(g, ax=ax, labels=False, title=f"probe x = ({probes[m, 0]:.1f}, {probes[m, 1]:.1f})")
        xy = torch.tensor([pos[n] for n in range(g.num_nodes)])
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=values[:, m].detach(), cmap="coolwarm", vmin=-1, vmax=1, s=160,
                        edgecolors="black", linewidths=0.5, zorder=3)
    fig.colorbar(sc, ax=axes, shrink=0.8, label="neuron value")
    path = os.path.join(OUT, "probe_features.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print("wrote", path)


class Sin(nn.Module):
    def forward(self, x):
        return torch.sin(x)


if __name__ == "__main__":
    wanted = sys.argv[1:]
    unknown = sorted(set(wanted) - set(EXAMPLES) - {"probe_features"})
    if unknown:
        sys.exit(f"unknown figure(s) {unknown}; known: {sorted(EXAMPLES) + ['probe_features']}")
    main(wanted)
    if not wanted or "probe_features" in wanted:
        probe_features()
