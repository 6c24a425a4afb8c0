r"""Probe features (Neural Graphs §2.4): every neuron's value on a few probe inputs, as node features.

For a network :math:`f` and probe inputs :math:`x_1, \dots, x_M`, neuron :math:`j` gets the features
:math:`(v_j(x_1), \dots, v_j(x_M))`, its activation on each probe. For
:math:`f(x) = W^{(2)} \alpha(W^{(1)} x + b^{(1)}) + b^{(2)}` the probe features of the input, hidden and
output neurons are :math:`(x, \alpha(W^{(1)} x + b^{(1)}), f(x))`. They depend only on the function the
network computes, so they are invariant to hidden-neuron permutations (and to any other change of
parameters that keeps every neuron's value).

The network is evaluated *functionally from the graph's parameters*: the conversion plan reads the
parameters back from ``edge_attr`` / ``x`` (:meth:`~neuralgraph.convert.ConversionPlan.read`) and runs the
dataflow it traced (``plan.fx_graph``) with :func:`torch.func.functional_call`, returning the traced
tensors the plan records for each neuron (``plan.values`` / ``plan.node_value``). Any architecture the
converter handles works; no copy of a network class is involved, and the evaluation is differentiable
with respect to the probe inputs and the graph's features (:class:`LearnedProbeFeatures`).

What a neuron's value is:

- hidden / output neurons: the tensor after the last operation that defines the neuron (its activation,
  a residual addition into it, ...); a channel of a feature map is averaged over space, a feature of a
  token sequence over tokens;
- input neurons: the probe input itself (channels averaged over space; integer inputs of an
  ``nn.Embedding`` as one-hot vectors, i.e. the frequency of each token);
- virtual flatten neurons (and ``flatten="repeat"`` copies) of channel ``c`` at position ``p``: the value
  of that channel at that position (the flattened feature ``c * P + p``, not averaged);
- neurons no traced tensor holds (none for the built-in rules): 0.

The network runs in eval mode (BatchNorm uses the running statistics stored in the graph, dropout is
off). Apply the transform before transforms that change the graph's values or structure
(``NormalizeLayers``, ``AddReverseEdges``): it evaluates the network the graph stores.
"""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch_geometric.data import Batch
from torch_geometric.transforms import BaseTransform

from neuralgraph.convert.plan import ConversionPlan, find_plan
from neuralgraph.data.graph import NeuralGraph

#: a template module of the graphs' architecture, or a function giving one for a graph (mixed zoos)
ModelLike = Union[nn.Module, Callable[[NeuralGraph], nn.Module]]


class _Runner:
    """The traced dataflow of one plan, returning the tensors that hold neuron values."""

    def __init__(self, plan: ConversionPlan, template: nn.Module):
        if plan.fx_graph is None:
            raise ValueError("this conversion plan has no traced dataflow to evaluate")
        nv = plan.node_value
        entries = sorted(set(nv[nv >= 0].tolist()))
        names = list(dict.fromkeys(plan.values[e][0] for e in entries))
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        graph.graph_copy(plan.fx_graph, env)
        by_name = {n.name: env[n] for n in plan.fx_graph.nodes if n in env}
        graph.output(tuple(by_name[n] for n in names))
        module = copy.deepcopy(template).eval()  # eval mode on a private copy: the user's module is untouched
        module.requires_grad_(False)
        self.module = fx.GraphModule(module, graph)
        self.entries = [(names.index(plan.values[e][0]),) + tuple(plan.values[e][1:]) for e in entries]
        # column of each node in the concatenated [M, total] table; unknown neurons read a zero column
        offsets, start = {}, 0
        for e, (_, _, channels) in zip(entries, self.entries):
            offsets[e] = start
            start += channels
        col = torch.full_like(nv, start)
        for e in entries:
            sel = nv == e
            col[sel] = offsets[e] + plan.node_channel[sel]
        self.columns = col

    def __call__(self, params: dict[str, Tensor], inputs: tuple) -> Tensor:
        outs = torch.func.functional_call(self.module, params, inputs)
        dtype = next(iter(params.values())).dtype
        m = inputs[0].size(0)
        cols = [_per_channel(outs[i], kind, c, m, dtype) for i, kind, c in self.entries]
        table = torch.cat(cols + [torch.zeros(m, 1, dtype=dtype, device=cols[0].device if cols else None)], 1)
        return table[:, self.columns.to(table.device)].t()


def _per_channel(t: Tensor, kind: str, channels: int, m: int, dtype: torch.dtype) -> Tensor:
    """``[M, channels]`` neuron values of a traced tensor (averaged over space / tokens)."""
    while isinstance(t, (tuple, list)):  # a module returning (output, extras), e.g. nn.MultiheadAttention
        t = t[0]
    if kind == "index":
        return F.one_hot(t.long(), channels).to(dtype).reshape(m, -1, channels).mean(1)
    t = t.to(dtype)
    if kind == "vec":
        return t.reshape(m, -1, channels).mean(1)
    if kind in ("map", "flat"):
        return t.reshape(m, channels, -1).mean(-1)
    if kind == "feature":
        return t.reshape(m, -1)
    # a kind a newer rule introduced: channels on the last dim, else on dim 1
    if t.size(-1) == channels:
        return t.reshape(m, -1, channels).mean(1)
    if t.dim() > 1 and t.size(1) == channels:
        return t.reshape(m, channels, -1).mean(-1)
    raise ValueError(f"cannot locate {channels} neurons in a traced tensor of shape {tuple(t.shape)} "
                     f"(value kind {kind!r})")


_RUNNERS: "weakref.WeakKeyDictionary[ConversionPlan, _Runner]" = weakref.WeakKeyDictionary()


def _runner(plan: ConversionPlan, template: nn.Module) -> _Runner:
    run = _RUNNERS.get(plan)
    if run is None:
        run = _RUNNERS[plan] = _Runner(plan, template)
    return run


def _template(model: ModelLike, graph: NeuralGraph) -> nn.Module:
    return model if isinstance(model, nn.Module) else model(graph)


def probe_activations(graph: NeuralGraph, model: nn.Module, inputs: Tensor | tuple, example_input: Any = None,
                      **config) -> Tensor:
    r"""The value of every neuron of the network stored in ``graph`` on each of ``M`` inputs.

    Differentiable with respect to ``inputs`` and to ``graph.x`` / ``graph.edge_attr``.

    Args:
        graph (NeuralGraph): one converted network (extra columns of ``x`` beyond the converter's are
            ignored).
        model (nn.Module): any module of the graph's architecture (its parameter values are not used);
            it locates the conversion plan like :func:`~neuralgraph.from_neural_graph`.
        inputs (Tensor or tuple): ``M`` inputs batched on dim 0, as the module takes them.
        example_input, **config: as given to :func:`~neuralgraph.to_neural_graph`, if they were needed.

    Shapes:
        ``inputs [M, ...] -> [N, M]``.
    """
    plan = find_plan(graph, model, example_input, **config)
    plan.check(graph)
    params = plan.read(graph.edge_attr, graph.x[:, :plan.config.node_dim])
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    dtype = graph.x.dtype
    inputs = tuple(t.to(graph.x.device, dtype) if t.is_floating_point() else t.to(graph.x.device) for t in inputs)
    return _runner(plan, model)(params, inputs)


class ProbeFeatures(BaseTransform):
    r"""Append every neuron's values on ``M`` fixed probe inputs to ``x`` (``F_node`` grows by ``M``).

    Args:
        model (nn.Module or callable): a module of the graphs' architecture (any member: only its
            structure is used), or a function ``graph -> module`` for datasets of several architectures.
        probes (Tensor or tuple): ``M`` probe inputs batched on dim 0, e.g. ``torch.rand(16, 2) * 2 - 1``
            coordinates for INRs or ``torch.randn(8, 1, 8, 8)`` images for CNNs; integer indices for
            ``nn.Embedding`` inputs.
        example_input, **config: as given to :func:`~neuralgraph.to_neural_graph`, if they were needed
            (graphs converted with non-default options are otherwise found in the plan cache).

    Shapes:
        ``x [N, F] -> [N, F + M]``; nothing else changes, so graphs batch as before.

    Example::

        g = ProbeFeatures(model, torch.randn(8, 2))(to_neural_graph(model))   # g.x: [N, 4 + 8]
    """

    def __init__(self, model: ModelLike, probes: Tensor | tuple, example_input: Any = None, **config):
        self.model = model
        self.probes = probes
        self.example_input = example_input
        self.config = config

    def forward(self, data: NeuralGraph) -> NeuralGraph:
        with torch.no_grad():
            feats = probe_activations(data, _template(self.model, data), self.probes, self.example_input,
                                      **self.config)
        data = data.clone()
        data.x = torch.cat([data.x, feats.to(data.x.dtype)], dim=1)
        return data

    def __repr__(self) -> str:
        probes = self.probes if isinstance(self.probes, tuple) else (self.probes,)
        return f"{type(self).__name__}(probes={[tuple(p.shape) for p in probes]})"


@dataclass(frozen=True, eq=False)
class MemberNetwork:
    """The one architecture of a task's networks, as the graph models' probe features need it (tasks supply
    it: :meth:`Task.member_network <neuralgraph.tasks.Task.member_network>`).

    Args:
        module (nn.Module): any network of the architecture (only its structure is used).
        example_input (Tensor): ``[1, *input_shape]``, as given to :func:`~neuralgraph.to_neural_graph`.
        converter (dict): the converter options the graphs were made with.
    """

    module: nn.Module
    example_input: Tensor
    converter: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.example_input.shape[1:])


class LearnedProbeFeatures(nn.Module):
    r"""Probe features with learned probe inputs (``nn.Parameter``), trained with the model using them.

    The network of each graph is evaluated functionally from the graph's parameters, so gradients reach
    the probe inputs (and the graph's ``x`` / ``edge_attr`` if they require grad). A batch whose graphs
    all have the architecture of ``model`` (given as a module) is evaluated in one vectorised call
    (``torch.func.vmap`` over the members' parameters, read from the batch with one gather); other
    batches graph by graph.

    Args:
        model (nn.Module or callable): as in :class:`ProbeFeatures` (kept outside the module tree: its
            parameters are not parameters of this module).
        num_probes (int): ``M``.
        input_shape (tuple[int, ...]): the shape of one input, e.g. ``(2,)`` for 2-d INR coordinates.
        init_std (float, optional): standard deviation of the initial probes. (default: ``1.0``)
        example_input, **config: as in :class:`ProbeFeatures`.

    Shapes:
        a ``NeuralGraph`` or a PyG ``Batch`` of them with ``N`` nodes in total ``-> [N, M]``. Concatenate
        to the node features: ``x = torch.cat([batch.x, probe(batch)], 1)``.
    """

    def __init__(self, model: ModelLike, num_probes: int, input_shape: tuple[int, ...], init_std: float = 1.0,
                 example_input: Any = None, **config):
        super().__init__()
        self._model = [model]  # a list: not a submodule
        self.input_shape = tuple(input_shape)
        self.init_std = init_std
        self.example_input = example_input
        self.config = config
        self.probes = nn.Parameter(torch.empty(num_probes, *self.input_shape))
        self.reset_parameters()

    @classmethod
    def for_members(cls, net: MemberNetwork, num_probes: int, init_std: float = 1.0) -> "LearnedProbeFeatures":
        """Probe features of the networks of a :class:`MemberNetwork`."""
        return cls(net.module, num_probes, net.input_shape, init_std, net.example_input, **net.converter)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.probes, std=self.init_std)

    def forward(self, data: NeuralGraph | Batch) -> Tensor:
        model = self._model[0]
        if isinstance(data, Batch) and isinstance(model, nn.Module):
            first = data.get_example(0)
            plan = find_plan(first, model, self.example_input, **self.config)
            B = data.num_graphs
            if data.num_nodes == B * plan.num_nodes and data.edge_index.size(1) == B * plan.num_edges:
                plan.check(first)
                return _batched_activations(data, plan, model, self.probes)
        graphs = data.to_data_list() if isinstance(data, Batch) else [data]
        out = [probe_activations(g, _template(model, g), self.probes, self.example_input, **self.config)
               for g in graphs]
        return torch.cat(out) if len(out) > 1 else out[0]

    def extra_repr(self) -> str:
        return f"num_probes={self.probes.size(0)}, input_shape={self.input_shape}"


#: the numbers of probes the graph models offer (Neural Graphs, table 3 / figure 2)
PROBE_CHOICES = (0, 4, 16, 64)


def make_probe_features(probes: int, member_network: MemberNetwork | None, who: str) -> LearnedProbeFeatures | None:
    """The learned probe features of a graph model with ``probes`` probes (``None`` for 0), with clear errors."""
    if probes not in PROBE_CHOICES:
        raise ValueError(f"{who}: probes={probes!r}; choose one of {list(PROBE_CHOICES)}")
    if not probes:
        return None
    if member_network is None:
        raise ValueError(f"{who}: probes={probes} needs the networks' architecture (member_network=MemberNetwork"
                         "(...)), which tasks over one architecture supply (inr-cls, inr-edit, cnn-zoo, cross-*); "
                         "this task mixes architectures, so set probes=0")
    return LearnedProbeFeatures.for_members(member_network, probes)


def _batched_activations(data: Batch, plan: ConversionPlan, model: nn.Module, inputs: Tensor) -> Tensor:
    """Neuron values ``[B * N, M]`` of a batch of ``B`` graphs of one plan on inputs ``[M, ...]``."""
    params = plan.read_batch(data.edge_attr, data.x[:, :plan.config.node_dim])  # name -> (B, *shape)
    inputs = inputs.to(data.x.device, data.x.dtype)
    run = _runner(plan, model)
    values = torch.func.vmap(lambda p: run(p, (inputs,)))(params)  # (B, N, M)
    return values.reshape(-1, values.size(-1))


def with_probe_features(data: NeuralGraph | Batch, probe: LearnedProbeFeatures) -> NeuralGraph | Batch:
    """A shallow copy of ``data`` whose ``x`` has the probe features appended (``[N, F + M]``)."""
    out = copy.copy(data)
    out.x = torch.cat([data.x, probe(data).to(data.x.dtype)], dim=1)
    return out
