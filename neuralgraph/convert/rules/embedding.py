"""``nn.Embedding`` as a linear map from one-hot inputs (issue 7).

A lookup ``E[i]`` of row ``i`` of the ``[num_embeddings, embedding_dim]`` table is the linear map
``E^T onehot(i)``: the graph has one input neuron per vocabulary entry (the model's integer input read
as a one-hot vector), one neuron per embedding dim, and the edge ``token t -> dim d`` carries ``E[t, d]``
on the centre tap (``edge_kind = embedding``, no bias).

``padding_idx`` only changes training (the row gets no gradient); its row converts like any other, so
the round trip stays exact. ``max_norm`` renormalises rows *in place* during forward, so the module's
weights depend on the inputs it has seen: it is rejected. ``scale_grad_by_freq`` and ``sparse`` only
affect gradients and are ignored.
"""
from __future__ import annotations

import torch
from torch import nn

from neuralgraph.convert.builder import Val
from neuralgraph.convert.registry import module_rule
from neuralgraph.data.graph import ROLE


@module_rule(nn.Embedding)
def embedding(ctx, node, x: Val) -> Val:
    mod: nn.Embedding = ctx.module(node)
    b = ctx.builder
    if mod.max_norm is not None:
        raise ctx.unsupported(node, f"max_norm={mod.max_norm} renormalises embedding rows in place during "
                                    "forward (the weights depend on past inputs); convert a copy with "
                                    "max_norm=None after renormalising its weight")
    num, dim = mod.num_embeddings, mod.embedding_dim
    if x.kind == "input":
        # the model's integer input, read as a one-hot vector over the vocabulary
        x.nodes, x.kind = b.add_inputs(num), "index"
    elif not (x.kind == "index" and x.channels == num):
        raise ctx.unsupported(node, "an Embedding must read the model's integer input directly (other "
                                    "Embeddings reading the same input need the same num_embeddings)")
    assert all(b.role[i] == ROLE["input"] for i in x.nodes.tolist())
    out = b.add_nodes(dim, b.next_layer(x.nodes))
    # edge e = (t, d) in row-major order of the [num, dim] table, so its weight element is e itself
    src = x.nodes.repeat_interleave(dim)
    dst = out.repeat(num)
    elem = torch.arange(num * dim).view(-1, 1)
    b.add_edges(src, dst, "embedding", sources=[(ctx.param(node, "weight"), elem,
                                                 torch.tensor([ctx.config.centre_tap]))])
    return Val(out, "vec")
