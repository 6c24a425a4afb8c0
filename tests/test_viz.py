"""Drawing: every edge kind in a graph gets its style from the edge-kind table (group edges were missing)."""
import matplotlib

matplotlib.use("Agg")

from torch import nn  # noqa: E402

from neuralgraph import to_neural_graph  # noqa: E402
from neuralgraph.viz import draw_neural_graph  # noqa: E402


def test_legend_lists_every_edge_kind_present():
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(4, 2))
    ax = draw_neural_graph(to_neural_graph(m))
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["conv", "group", "groupnorm", "linear"]
