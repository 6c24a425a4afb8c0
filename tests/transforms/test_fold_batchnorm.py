"""FoldBatchNorm: the folded scale / shift are exactly the eval-mode affine map of each BatchNorm neuron."""
import pytest
import torch
from torch import nn

from neuralgraph import to_neural_graph
from neuralgraph.data.graph import EDGE_KIND
from neuralgraph.transforms import FoldBatchNorm


def _bn_net(affine: bool, eps: float = 1e-5) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4, eps=eps, affine=affine), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    bn = m[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        if affine:
            bn.weight.uniform_(-2, 2)
            bn.bias.uniform_(-1, 1)
    return m.eval()


@pytest.mark.parametrize("affine,eps", [(True, 1e-5), (False, 1e-5), (True, 0.5)])
def test_folded_features_are_the_eval_mode_affine_map(affine, eps):
    m = _bn_net(affine, eps)     # eps = 0.5 changes the scale visibly: the graph's eps must be used
    g = to_neural_graph(m)
    f = FoldBatchNorm()(g)
    e = (g.edge_kind == EDGE_KIND["batchnorm"]).nonzero().squeeze(1)
    src, dst = g.edge_index[:, e]
    # channel c of the conv feeds BatchNorm neuron c: conv neurons are numbered in channel order
    channel = src - src.min()
    bn = m[1]
    scale = (bn.weight if affine else torch.ones(4)) / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if affine else torch.zeros(4)) - scale * bn.running_mean
    torch.testing.assert_close(f.edge_attr[e, 24], scale.detach()[channel])
    torch.testing.assert_close(f.x[dst, 0], shift.detach()[channel])
    assert f.x[dst, 1].eq(1).all()
    assert f.edge_attr[e].count_nonzero(dim=1).le(1).all()           # statistics and eps taps cleared
    # the folded layer computes what BatchNorm computes in eval mode
    v = torch.randn(5, 4, 6, 6)
    folded = v * f.edge_attr[e, 24][channel.argsort()].view(1, 4, 1, 1) + f.x[dst, 0][channel.argsort()].view(1, 4, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(folded, bn(v))
    # everything else is untouched, and the input graph is not modified
    other = torch.ones(g.edge_index.size(1), dtype=torch.bool)
    other[e] = False
    assert torch.equal(f.edge_attr[other], g.edge_attr[other]) and torch.equal(f.edge_index, g.edge_index)
    assert torch.equal(to_neural_graph(m).edge_attr, g.edge_attr)


def test_graph_without_batchnorm_is_unchanged_and_wrong_kernel_is_named():
    g = to_neural_graph(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    f = FoldBatchNorm()(g)
    assert torch.equal(f.edge_attr, g.edge_attr) and torch.equal(f.x, g.x)
    with pytest.raises(ValueError, match="max_kernel"):
        FoldBatchNorm(max_kernel=(3, 3))(to_neural_graph(_bn_net(True)))
