r"""Readouts and heads on top of neural-graph encoders (NG-GNN, NG-T).

* :class:`GraphReadout` - invariant: pool node states per graph (mean, attention, or over the
  output neurons), then an MLP, giving ``[B, out_dim]``. Hidden neurons are only ever pooled by
  symmetric functions, so the output is invariant to hidden-neuron permutations of the input
  network.
* :class:`EquivariantHead` - per-node ``[N, out_dim]`` and per-edge ``[E, out_dim]`` outputs that
  permute with the neurons; :func:`to_parameters` maps them back onto parameter positions through
  the conversion plan (INR editing, learned optimizers).
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch_geometric.nn.aggr import AttentionalAggregation
from torch_geometric.utils import scatter

from neuralgraph.data.graph import ROLE
from neuralgraph.nn.feedforward import mlp
from neuralgraph.nn.embeddings import check_index_bound

__all__ = ["GraphReadout", "EquivariantHead", "EquivariantOutput", "READOUTS", "PAPER_READOUT", "graph_index",
           "make_head", "apply_head", "split_outputs", "to_parameters"]

#: Pooling choices of :class:`GraphReadout`.
READOUTS = ("mean", "attention", "output_mean", "output_cat")
#: The paper's readout (Neural Graphs appendix D: the final layer's nodes concatenated), the default.
PAPER_READOUT = "output_cat"


def graph_index(data) -> tuple[Tensor, int]:
    """``(batch, num_graphs)`` of a PyG ``Batch`` or a single graph, without device sync."""
    batch = getattr(data, "batch", None)
    if batch is None:
        return torch.zeros(data.num_nodes, dtype=torch.long, device=data.x.device), 1
    return batch, int(data.num_graphs)


class EquivariantOutput(NamedTuple):
    """Per-node and per-edge outputs of an :class:`EquivariantHead` (forward edges only)."""

    node: Tensor  #: [N, out_dim]
    edge: Tensor  #: [E, out_dim]


class GraphReadout(nn.Module):
    r"""Invariant readout: per-graph pooling of node states, then an MLP.

    Args:
        in_dim (int): node width.
        out_dim (int): output size.
        hidden (int, optional): MLP width. (default: ``in_dim``)
        readout (str, optional): ``"output_cat"`` (the output neurons' states concatenated in output
            order, the paper's readout, Neural Graphs appendix D; needs ``num_outputs``: every graph must
            have exactly that many output neurons, else the forward pass raises ``ValueError``),
            ``"mean"`` (all nodes), ``"attention"`` (gated attention pooling over all nodes) or
            ``"output_mean"`` (mean over output neurons; any output size). (default: :obj:`"output_cat"`)
        num_outputs (int, optional): number of output neurons for ``"output_cat"``.
        num_layers (int, optional): MLP depth. (default: :obj:`2`)

    Shapes:
        - **input:** node states :math:`(|V|, F)`, ``node_role``/``node_pos`` :math:`(|V|)`,
          ``batch`` :math:`(|V|)`
        - **output:** :math:`(B, out)`
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None, readout: str = PAPER_READOUT,
                 num_outputs: int | None = None, num_layers: int = 2):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"Could not resolve readout {readout!r} among choices {list(READOUTS)}")
        if readout == "output_cat" and not num_outputs:
            raise ValueError("readout='output_cat' needs `num_outputs` (the number of output neurons)")
        self.readout = readout
        self.num_outputs = num_outputs
        hidden = hidden or in_dim
        if readout == "attention":
            self.pool = AttentionalAggregation(gate_nn=nn.Linear(in_dim, 1),
                                               nn=nn.Linear(in_dim, in_dim))
        pooled = in_dim * num_outputs if readout == "output_cat" else in_dim
        self.mlp = mlp(pooled, [hidden] * (num_layers - 1), out_dim, act="silu")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.readout == "attention":
            self.pool.reset_parameters()
        self.mlp.reset_parameters()

    def forward(self, x: Tensor, batch: Tensor, num_graphs: int, node_role: Tensor,
                node_pos: Tensor) -> Tensor:
        if self.readout == "mean":
            h = scatter(x, batch, dim=0, dim_size=num_graphs, reduce="mean")  # (B, F)
        elif self.readout == "attention":
            h = self.pool(x, batch, dim_size=num_graphs)  # (B, F)
        else:
            is_out = node_role == ROLE["output"]  # (N,)
            if self.readout == "output_mean":
                w = is_out.to(x.dtype).unsqueeze(-1)  # (N, 1)
                num = scatter(x * w, batch, dim=0, dim_size=num_graphs, reduce="sum")
                den = scatter(w, batch, dim=0, dim_size=num_graphs, reduce="sum").clamp(min=1)
                h = num / den  # (B, F)
            else:  # output_cat: slot b * num_outputs + pos; other nodes go to a dropped extra slot
                K = self.num_outputs
                check_output_count(is_out, batch, num_graphs, K)
                pos = torch.where(is_out, node_pos, torch.zeros_like(node_pos))
                check_index_bound(pos, K, "output neuron index", "num_outputs")
                slot = torch.where(is_out, batch * K + pos, torch.full_like(batch, num_graphs * K))
                h = scatter(x, slot, dim=0, dim_size=num_graphs * K + 1, reduce="sum")
                h = h[:-1].view(num_graphs, K * x.size(-1))  # (B, K*F)
        return self.mlp(h)

    def extra_repr(self) -> str:
        return f"readout={self.readout!r}, num_outputs={self.num_outputs}"


def check_output_count(is_out: Tensor, batch: Tensor, num_graphs: int, expected: int) -> None:
    """Raise a readable error if a graph of the batch does not have exactly ``expected`` output neurons
    (``readout="output_cat"`` would otherwise leave slots empty). An asynchronous assertion on accelerators."""
    counts = torch.bincount(batch[is_out], minlength=num_graphs)  # (B,)
    if counts.device.type != "cpu":  # pragma: no cover - no accelerator in CI
        torch._assert_async((counts == expected).all(), "readout='output_cat': a graph's output size differs "
                            "from num_outputs; use readout='mean' or 'attention' for zoos of varying output size")
        return
    bad = (counts != expected).nonzero().view(-1)
    if bad.numel():
        g = int(bad[0])
        raise ValueError(f"readout='output_cat' concatenates num_outputs={expected} output neurons per graph, but "
                         f"graph {g} of the batch has {int(counts[g])}: the zoo's output size varies. Use "
                         "readout='mean' or 'attention' (any output size), or a zoo of one output size")


class EquivariantHead(nn.Module):
    r"""Per-node and per-edge MLPs: outputs permute with the hidden neurons of the input network.

    Args:
        node_dim (int): node width.
        edge_dim (int): edge width.
        out_dim (int): output size per edge (and per node unless ``node_out_dim`` is set).
        hidden (int, optional): MLP width. (default: ``max(node_dim, edge_dim)``)
        node_out_dim (int, optional): output size per node. (default: ``out_dim``)

    Shapes:
        - **input:** node states :math:`(|V|, F)`, edge states :math:`(|E|, F_e)`
        - **output:** :class:`EquivariantOutput` ``(node [|V|, out_node], edge [|E|, out])``
    """

    def __init__(self, node_dim: int, edge_dim: int, out_dim: int, hidden: int | None = None,
                 node_out_dim: int | None = None):
        super().__init__()
        hidden = hidden or max(node_dim, edge_dim)
        self.node_mlp = mlp(node_dim, [hidden], node_out_dim or out_dim, act="silu")
        self.edge_mlp = mlp(edge_dim, [hidden], out_dim, act="silu")

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def forward(self, x: Tensor, e: Tensor) -> EquivariantOutput:
        return EquivariantOutput(self.node_mlp(x), self.edge_mlp(e))


def split_outputs(out: EquivariantOutput, data) -> list[EquivariantOutput]:
    """Split the equivariant outputs of a PyG ``Batch`` into one :class:`EquivariantOutput` per graph."""
    batch, num_graphs = graph_index(data)
    nodes = torch.bincount(batch, minlength=num_graphs).tolist()
    edges = torch.bincount(batch[data.edge_index[0]], minlength=num_graphs).tolist()
    return [EquivariantOutput(n, e) for n, e in zip(out.node.split(nodes), out.edge.split(edges))]


def to_parameters(out: EquivariantOutput, plan) -> dict[str, Tensor]:
    """Map per-node / per-edge outputs of ONE graph onto the parameters of its network.

    The conversion plan knows which element of ``edge_attr`` / ``x`` holds each parameter element
    (``plan.edge_param`` / ``plan.node_param``); the head's outputs take the place of those features
    and :meth:`ConversionPlan.read <neuralgraph.convert.ConversionPlan.read>` gathers them back
    (differentiably). So build the head with ``out_dim = F_edge * c`` and ``node_out_dim = F_node * c``
    to get ``c`` values per parameter element (``c = 1``: a parameter-shaped update, e.g. a learned
    optimizer step or an INR edit).

    Args:
        out: outputs for one graph (:func:`split_outputs` splits a batch).
        plan: the :class:`~neuralgraph.convert.ConversionPlan` of the network's architecture.

    Returns:
        dict: parameter name -> tensor shaped like the parameter (``[*shape, c]`` if ``c > 1``).
    """
    f_edge, f_node = plan.config.edge_dim, plan.config.node_dim
    if out.edge.size(0) != plan.num_edges or out.node.size(0) != plan.num_nodes:
        raise ValueError(f"outputs for {out.node.size(0)} nodes / {out.edge.size(0)} edges do not "
                         f"match the plan ({plan.num_nodes} nodes / {plan.num_edges} edges); split a "
                         "batch with split_outputs first")
    if out.edge.size(1) % f_edge or out.node.size(1) % f_node or \
            out.edge.size(1) // f_edge != out.node.size(1) // f_node:
        raise ValueError(f"per-edge outputs must have F_edge * c = {f_edge} * c columns and per-node "
                         f"outputs F_node * c = {f_node} * c (got {out.edge.size(1)} and "
                         f"{out.node.size(1)}); set out_dim and node_out_dim accordingly")
    c = out.edge.size(1) // f_edge
    edge = out.edge.view(-1, f_edge, c)  # (E, F_edge, c)
    node = out.node.view(-1, f_node, c)  # (N, F_node, c)
    params = plan.read(edge, node)
    return {k: v.squeeze(-1) for k, v in params.items()} if c == 1 else params


def make_head(head: str, node_dim: int, edge_dim: int, out_dim: int, readout: str = PAPER_READOUT,
              num_outputs: int | None = None, hidden: int | None = None,
              node_out_dim: int | None = None) -> nn.Module:
    """The head a neural-graph model ends with: ``"graph"`` (invariant) or ``"equivariant"``.

    The fallback rule of the paper's readout: ``readout="output_cat"`` without ``num_outputs`` (the
    members' output size is not one fixed number: tasks pass it when every member has the same output size)
    pools the mean over all nodes instead, with a warning.
    """
    if head == "graph" and readout == "output_cat" and not num_outputs:
        warnings.warn("readout='output_cat' (the paper's readout) needs num_outputs, the members' fixed number "
                      "of output neurons (tasks supply it when every member has the same output size); falling "
                      "back to readout='mean'. Pass num_outputs=..., or readout='mean' to choose it", stacklevel=3)
        readout = "mean"
    if head == "graph":
        return GraphReadout(node_dim, out_dim, hidden, readout, num_outputs)
    if head == "equivariant":
        return EquivariantHead(node_dim, edge_dim, out_dim, hidden, node_out_dim)
    raise ValueError(f"Could not resolve head {head!r} among choices ['graph', 'equivariant']")


def apply_head(head: nn.Module, data, x: Tensor, e: Tensor) -> Tensor | EquivariantOutput:
    """Run ``head`` on final node states ``x`` [N, F] and forward-edge states ``e`` [E, F_e]."""
    if isinstance(head, GraphReadout):
        batch, num_graphs = graph_index(data)
        return head(x, batch, num_graphs, data.node_role, data.node_pos)
    return head(x, e)
