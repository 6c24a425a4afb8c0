"""Regenerate the drawings in docs/img: ``python docs/figures.py``."""
from __future__ import annotations

import os

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


EXAMPLES = {
    "mlp": (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), {}),
    "cnn": (nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 3, groups=3), nn.GELU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)), {}),
    "residual": (Residual(), {}),
    "flatten_virtual": (Flatten(), {"flatten": "virtual"}),
    "flatten_repeat": (Flatten(), {"flatten": "repeat"}),
}


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    for name, (model, cfg) in EXAMPLES.items():
        fig, ax = plt.subplots(figsize=(5, 3.2))
        draw_neural_graph(to_neural_graph(model, **cfg), ax=ax, title=name)
        fig.tight_layout()
        fig.savefig(os.path.join(OUT, f"{name}.png"), dpi=110)
        plt.close(fig)
        print("wrote", os.path.join(OUT, f"{name}.png"))


if __name__ == "__main__":
    main()
