r"""NG-GNN: PNA with FiLM messages and edge updates on neural graphs.

`"Graph Neural Networks for Learning Equivariant Representations of Neural Networks"
<https://arxiv.org/abs/2403.12143>`_ (Kofinas et al., ICLR 2024), §3, eq. 3-4.

Per layer :math:`k`:

.. math::
    \mathbf{m}_{ij} &= \phi_{\mathrm{scale}}(\mathbf{e}_{ij}) \odot \phi_m([\mathbf{v}_i,
        \mathbf{v}_j]) + \phi_{\mathrm{shift}}(\mathbf{e}_{ij}) \\
    \mathbf{v}_i &\leftarrow \sigma\Big(\mathrm{LN}\Big(U\big[\mathbf{v}_i,
        \textstyle\bigoplus_j \mathbf{m}_{ij}\big]\Big)\Big) \\
    \mathbf{e}_{ij} &\leftarrow \phi_e([\mathbf{v}_i, \mathbf{e}_{ij}, \mathbf{v}_j])

with PNA's :math:`\bigoplus` (mean/min/max/std x identity/amplification/attenuation). The edge
update reads the layer's input node states :math:`\mathbf{v}^{(k)}`, as eq. 3 of the paper writes it
(the reference implementation reads the freshly updated ones). The last layer's edge update is only
built when per-edge outputs are requested (``head="equivariant"``).

**Degree statistics.** PNA's scalers are normalised by the in-degree histogram of the training set.
Either pass ``deg`` (a histogram, :func:`neuralgraph.nn.degree_histogram`) or call
:meth:`NGGNN.fit_statistics` with the training graphs / loader before training; tasks and runners do
the latter. The statistics are buffers, so they are saved in and restored from the state dict.
"""
from __future__ import annotations

import warnings
from typing import Any, ClassVar, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch_geometric.nn.resolver import activation_resolver

from neuralgraph.models.heads import PAPER_READOUT, EquivariantOutput, apply_head, make_head
from neuralgraph.models.registry import register_model
from neuralgraph.nn.embeddings import EncoderConfig, NeuralGraphEncoder
from neuralgraph.nn.film_pna import FiLMPNAConv, degree_histogram
from neuralgraph.transforms.probe_features import MemberNetwork, make_probe_features, with_probe_features

__all__ = ["NGGNN", "NG_GNN_ENCODER"]

#: NG-GNN's input encoding: the reference's random Fourier features (128 frequencies, scale 3.0)
NG_GNN_ENCODER = EncoderConfig(fourier_sigma=3.0)


@register_model("ng-gnn")
class NGGNN(nn.Module):
    r"""NG-GNN (registered as ``"ng-gnn"``).

    Args:
        out_dim (int): output size (per graph, or per node/edge for ``head="equivariant"``).
        node_in (int): :math:`F_{node}` of the neural graphs. (default: :obj:`4`)
        edge_in (int): :math:`F_{edge}` of the neural graphs. (default: :obj:`49`)
        hidden (int, optional): node width. (default: :obj:`64`, CNN Wild Park in the paper)
        edge_hidden (int, optional): edge width. (default: ``hidden``)
        num_layers (int, optional): message-passing layers. (default: :obj:`4`)
        deg (Tensor or list, optional): training-set in-degree histogram; see :meth:`fit_statistics`.
        aggregators (list of str, optional): PNA aggregators. (default: mean, min, max, std)
        scalers (list of str, optional): PNA scalers. (default: identity, amplification, attenuation)
        reverse_edges (bool, optional): also pass messages along reversed edges (each reversed edge
            has its own state, initialised from the weight plus a learned direction vector).
            (default: :obj:`False`)
        residual (bool, optional): residual connections on node states. (default: :obj:`False`)
        norm (str, optional): ``"layer"`` (LayerNorm per node) or ``None``. (default: :obj:`"layer"`)
        act (str, optional): activation. (default: :obj:`"silu"`)
        dropout (float, optional): dropout on node states. (default: :obj:`0.0`)
        head (str, optional): ``"graph"`` (invariant readout, output ``[B, out_dim]``) or
            ``"equivariant"`` (output :class:`~neuralgraph.models.heads.EquivariantOutput`).
            (default: :obj:`"graph"`)
        readout (str, optional): pooling of the graph head, see
            :class:`~neuralgraph.models.heads.GraphReadout`. (default: :obj:`"output_cat"`, the paper's:
            the output neurons' states concatenated; without ``num_outputs`` it falls back to ``"mean"``
            with a warning)
        num_outputs (int, optional): output neurons of every input network, for ``readout="output_cat"``
            (tasks supply it when the members' output size is fixed).
        head_hidden (int, optional): head MLP width. (default: ``hidden``)
        node_out_dim (int, optional): per-node output size of the equivariant head
            (default: ``out_dim``); with ``out_dim = F_edge`` and ``node_out_dim = F_node`` the
            outputs map onto parameters via :func:`~neuralgraph.models.heads.to_parameters`.
        encoder (EncoderConfig or dict, optional): the input encoding shared with the other neural-graph model
            (:class:`~neuralgraph.nn.EncoderConfig`: embeddings on / off for ablations, table sizes, Fourier
            features, ``separate_linear``); a dict is merged over this default.
            (default: :data:`NG_GNN_ENCODER`: 128 random Fourier features at scale 3.0, as the reference)
        probes (int, optional): learned probe inputs run through every input network (Neural Graphs §2.4,
            eq. 2): each neuron's values on them are appended to its node features, computed per batch
            from the graphs' own parameters and learned end to end. One of 0, 4, 16, 64; needs
            ``member_network``. (default: :obj:`0`)
        member_network (MemberNetwork, optional): the input networks' one architecture (tasks supply it).

    Shapes:
        - **input:** a PyG ``Batch`` of :class:`~neuralgraph.NeuralGraph` (B graphs, :math:`|V|`
          nodes, :math:`|E|` edges)
        - **output:** :math:`(B, out)`, or ``(node [|V|, out], edge [|E|, out])``
    """

    input_kind: ClassVar[str] = "graph"
    permutation_invariant: ClassVar[bool] = True
    #: the ``head`` giving per-node / per-edge outputs that map onto parameters (per-parameter tasks)
    parameter_head: ClassVar[str] = "equivariant"

    def __init__(
        self,
        out_dim: int = 1,
        node_in: int = 4,
        edge_in: int = 49,
        *,
        hidden: int = 64,
        edge_hidden: int | None = None,
        num_layers: int = 4,
        deg: Tensor | Sequence[int] | None = None,
        aggregators: Sequence[str] = ("mean", "min", "max", "std"),
        scalers: Sequence[str] = ("identity", "amplification", "attenuation"),
        reverse_edges: bool = False,
        residual: bool = False,
        norm: str | None = "layer",
        act: str = "silu",
        dropout: float = 0.0,
        head: str = "graph",
        readout: str = PAPER_READOUT,
        num_outputs: int | None = None,
        head_hidden: int | None = None,
        node_out_dim: int | None = None,
        encoder: EncoderConfig | dict[str, Any] = NG_GNN_ENCODER,
        probes: int = 0,
        member_network: MemberNetwork | None = None,
    ):
        super().__init__()
        if norm not in ("layer", None):
            raise ValueError(f"Could not resolve norm {norm!r} among choices ['layer', None]")
        edge_hidden = edge_hidden or hidden
        self.out_dim, self.hidden, self.edge_hidden = out_dim, hidden, edge_hidden
        self.num_layers, self.reverse_edges, self.residual = num_layers, reverse_edges, residual
        self.head_kind = head
        self.encoder = NeuralGraphEncoder(node_in, edge_in, hidden, edge_hidden, NG_GNN_ENCODER.updated(encoder),
                                          probe_in=probes)
        # direction vector added to the state of each reversed edge
        self.rev_dir = nn.Parameter(torch.empty(edge_hidden)) if reverse_edges else None
        deg_t = None if deg is None else torch.as_tensor(deg)
        final_edge_update = head == "equivariant"
        self.convs = nn.ModuleList([
            FiLMPNAConv(hidden, edge_hidden, deg_t, aggregators, scalers,
                        edge_update=(k < num_layers - 1) or final_edge_update, act=act)
            for k in range(num_layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(hidden) if norm == "layer" else nn.Identity()
                                    for _ in range(num_layers)])
        self.act = activation_resolver(act)
        self.dropout = nn.Dropout(dropout)
        self.head = make_head(head, hidden, edge_hidden, out_dim, readout, num_outputs, head_hidden,
                              node_out_dim)
        self.deg_fitted = deg is not None
        self.register_load_state_dict_post_hook(NGGNN._loaded)
        self.probe = make_probe_features(probes, member_network, "ng-gnn")  # last: the same init without probes
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every learnable parameter (degree statistics are kept)."""
        self.encoder.reset_parameters()
        if self.rev_dir is not None:
            nn.init.normal_(self.rev_dir)
        for conv in self.convs:
            aggr = conv.aggr_module
            kept = (aggr.avg_deg_lin.clone(), aggr.avg_deg_log.clone())
            conv.reset_parameters()
            aggr.avg_deg_lin.data.copy_(kept[0])
            aggr.avg_deg_log.data.copy_(kept[1])
        for norm in self.norms:
            if isinstance(norm, nn.LayerNorm):
                norm.reset_parameters()
        self.head.reset_parameters()
        if self.probe is not None:
            self.probe.reset_parameters()

    @staticmethod
    def _loaded(module: "NGGNN", incompatible_keys) -> None:
        module.deg_fitted = True  # degree statistics come with the state dict

    @torch.no_grad()
    def fit_statistics(self, graphs: Iterable) -> Tensor:
        """Set the PNA degree statistics from the training graphs (a list or a DataLoader): the model's
        data-fitted statistics (the training loop calls this hook with the training split).

        Counts reversed edges too when ``reverse_edges=True``. Returns the histogram.
        """
        deg = degree_histogram(graphs, reverse_edges=self.reverse_edges)
        for conv in self.convs:
            conv.set_degree(deg)
        self.deg_fitted = True
        return deg

    def encode(self, data) -> tuple[Tensor, Tensor]:
        """Node states ``[N, hidden]`` and forward-edge states ``[E, edge_hidden]`` after the stack."""
        if not self.deg_fitted:
            warnings.warn("NG-GNN degree statistics are not fitted; call model.fit_statistics(train_loader) "
                          "or pass deg=... (using a placeholder histogram)", stacklevel=5)
            self.deg_fitted = True  # warn once
        if self.probe is not None:
            data = with_probe_features(data, self.probe)  # x: (N, F + M)
        x, e = self.encoder(data)  # (N, F), (E, Fe)
        edge_index = data.edge_index
        E = edge_index.size(1)
        if self.rev_dir is not None:
            edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)  # (2, 2E)
            e = torch.cat([e, e + self.rev_dir], dim=0)  # (2E, Fe)
        for conv, norm in zip(self.convs, self.norms):
            h = self.dropout(self.act(norm(conv(x, edge_index, e))))  # (N, F)
            if conv.has_edge_update:  # eq. 3: e^(k+1) = phi_e([v_i^(k), e_ij^(k), v_j^(k)]), the layer's inputs
                e = conv.update_edges(x, edge_index, e)  # (E or 2E, Fe)
            x = x + h if self.residual else h
        return x, e[:E]

    def forward(self, data) -> Tensor | EquivariantOutput:
        x, e = self.encode(data)
        return apply_head(self.head, data, x, e)
