r"""A stock-PyG baseline on neural graphs: GINE convolutions with edge features and mean pooling.

`"Strategies for Pre-training Graph Neural Networks" <https://arxiv.org/abs/1905.12265>`_ (Hu et al., 2020),
PyG's :class:`~torch_geometric.nn.conv.GINEConv`, used as is: what a neural graph gives an off-the-shelf graph
network, and so what the NG-specific models (:class:`~neuralgraph.models.NGGNN`, :class:`~neuralgraph.models.NGT`:
edge updates, FiLM messages, neuron embeddings, the output-neuron readout) add. It reads only the numeric fields
``x`` and ``edge_attr`` (no categorical embeddings).

.. math::
    \mathbf{v}_i \leftarrow \mathrm{MLP}\Big((1 + \epsilon)\mathbf{v}_i
        + \sum_{j \to i} \mathrm{ReLU}(\mathbf{v}_j + W\mathbf{e}_{ji})\Big), \qquad
    y = \mathrm{MLP}\Big(\tfrac{1}{|V|}\textstyle\sum_i \mathbf{v}_i\Big)
"""
from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn
from torch_geometric.nn import MLP, GINEConv, global_mean_pool

from neuralgraph.models.heads import graph_index
from neuralgraph.models.registry import register_model
from neuralgraph.nn.embeddings import check_edge_fields

__all__ = ["PyGGINE"]


@register_model("pyg-gine")
class PyGGINE(nn.Module):
    r"""Stock PyG GINE on neural graphs (registered as ``"pyg-gine"``).

    Args:
        out_dim (int): output size. (default: :obj:`1`)
        node_in (int): :math:`F_{node}`. (default: :obj:`4`)
        edge_in (int): :math:`F_{edge}`. (default: :obj:`49`)
        hidden (int, optional): node width. (default: :obj:`64`)
        num_layers (int, optional): GINE layers. (default: :obj:`4`)
        dropout (float, optional): dropout in the head. (default: :obj:`0.0`)

    Shapes:
        - **input:** a PyG ``Batch`` of :class:`~neuralgraph.NeuralGraph`
        - **output:** :math:`(B, out)`
    """

    input_kind: ClassVar[str] = "graph"
    permutation_invariant: ClassVar[bool] = True

    def __init__(self, out_dim: int = 1, node_in: int = 4, edge_in: int = 49, *, hidden: int = 64,
                 num_layers: int = 4, dropout: float = 0.0):
        super().__init__()
        self.node_proj = nn.Linear(node_in, hidden)
        self.convs = nn.ModuleList(GINEConv(MLP([hidden, hidden, hidden], norm=None), train_eps=True, edge_dim=edge_in)
                                   for _ in range(num_layers))
        self.head = MLP([hidden, hidden, out_dim], norm=None, dropout=dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.node_proj.reset_parameters()
        for conv in self.convs:
            conv.reset_parameters()
        self.head.reset_parameters()

    def forward(self, data) -> Tensor:
        check_edge_fields(data)
        x = self.node_proj(data.x)  # (N, F)
        for conv in self.convs:
            x = conv(x, data.edge_index, data.edge_attr).relu()  # (N, F)
        batch, num_graphs = graph_index(data)
        return self.head(global_mean_pool(x, batch, num_graphs))  # (B, out)
