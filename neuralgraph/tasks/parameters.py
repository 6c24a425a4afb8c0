"""Per-parameter values of a batch of networks of one architecture, as ``{parameter name: [B, *shape]}``.

Tasks whose output is one value per parameter of the input network (INR editing, learned optimizers)
read two things this way, whatever the model:

* the members' own parameters, from the batch the model got (a PyG ``Batch`` of neural graphs, or a
  :class:`~neuralgraph.data.WeightSpaceBatch`);
* the model's per-parameter output: a graph model's :class:`~neuralgraph.models.heads.EquivariantOutput`
  (per-node / per-edge values laid out like ``x`` / ``edge_attr``, mapped back onto parameter positions
  through the conversion plan, :meth:`~neuralgraph.convert.ConversionPlan.read_batch`), or a weight-space
  model's :class:`~neuralgraph.data.WeightSpace` (the NFN's equivariant output, the flat MLP's vector
  cut into layers).

Every network of the batch must have the plan's architecture; graphs of a batch are laid out one after
the other, so the per-graph blocks are read with one gather.
"""
from __future__ import annotations

from torch import Tensor

from neuralgraph.data.weightspace import WeightSpace, WeightSpaceBatch
from neuralgraph.models.heads import EquivariantOutput

__all__ = ["parameter_values", "weight_space_values"]


def weight_space_values(ws: WeightSpace, plan) -> dict[str, Tensor]:
    """A :class:`WeightSpace` (layers in the plan's dataflow order) as parameters ``[B, *shape]``."""
    if len(ws.weights) != len(plan.layers):
        raise ValueError(f"a weight space of {len(ws.weights)} layers for an architecture of {len(plan.layers)}")
    out: dict[str, Tensor] = {}
    for w, b, (w_name, b_name) in zip(ws.weights, ws.biases, plan.layers):
        out[w_name] = w.reshape(w.size(0), *plan.param_shapes[w_name])
        if b_name is not None:
            out[b_name] = b
    missing = [n for n in plan.param_names if n not in out]
    if missing:
        raise ValueError(f"the weight space holds linear / conv layers only, not {missing}; use a graph model "
                         "for architectures with other parameters")
    return out


def parameter_values(source, plan) -> dict[str, Tensor]:
    """Parameters ``[B, *shape]`` of a batch of networks of ``plan``'s architecture (see the module
    docstring): ``source`` is an :class:`EquivariantOutput`, a :class:`WeightSpace`, a
    :class:`WeightSpaceBatch` or a PyG batch of neural graphs."""
    if isinstance(source, EquivariantOutput):
        return plan.read_batch(source.edge, source.node)
    if isinstance(source, WeightSpace):
        return weight_space_values(source, plan)
    if isinstance(source, WeightSpaceBatch):
        if not source.homogeneous:
            raise ValueError(f"a batch of {len(source.groups)} architectures; per-parameter values need one")
        order = source.positions[0].argsort()  # members back into batch order
        return {k: v[order.to(v.device)] for k, v in weight_space_values(source.groups[0], plan).items()}
    if hasattr(source, "edge_attr") and hasattr(source, "x"):
        return plan.read_batch(source.edge_attr, source.x[:, :plan.config.node_dim])
    raise TypeError(f"cannot read per-parameter values from a {type(source).__name__}")
