r"""Random hidden-neuron permutations of a neural graph: data augmentation by a symmetry of the network.

The permuted graph stores the *same function*: reading it back with
:func:`~neuralgraph.from_neural_graph` gives a module whose hidden neurons are permuted (and whose
outputs are unchanged), because the permutation is an automorphism of the graph's structure that
keeps every label the graph's semantics depend on. Node ids, ``edge_index`` and all categories stay as
they are; the values (``x``, ``edge_attr``) move.

How the symmetries are found (once per structure, cached): colour refinement (1-WL) on the structure
(node role, layer, position, activation, pooling and its window, spatial position and has-bias flag; edge kind and
convolution geometry) gives cells of candidate-equivalent neurons. Between two cells, each edge label's
edges are *complete* (every pair, e.g. dense or conv layers), a *matching* (channel ``k`` to channel
``k``: residual, identity, norm, flatten and depthwise edges) or *other*. Cells tied by matchings form
components permuted by one shared permutation (a residual stream and every layer writing into it,
Wild Park's nested ``min(c_i, c_j)`` segments, a channel and its flatten positions); any other relation
fixes the cells on both sides, as do edge kinds whose semantics couple neurons beyond their edges
(``groupnorm`` groups, ``attention`` heads) or unknown kinds. Such permutations map every edge onto an
edge with the same label, which is verified on every call. Input and output neurons never move.

Neurons stored more than once (``flatten="repeat"`` copies of a channel) are kept fixed, because the
graph alone does not say which copies belong together.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict, deque

import torch
from torch import Tensor
from torch_geometric.transforms import BaseTransform

from neuralgraph.data.graph import EDGE_KIND_TABLE, NODE_CATEGORIES, ROLE, NeuralGraph

_CACHE_SIZE = 128


class NeuronSymmetry:
    """The permutable neuron groups of one graph structure.

    Attributes:
        num_nodes (int): N.
        groups (list[Tensor]): one ``[cells, size]`` long tensor per component: row ``i`` lists the
            neurons of one cell in matched order; a sample permutes the columns of all rows together.
        edge_key (Tensor): ``[E]`` sort key ``(src, dst, label)`` of every edge.
    """

    def __init__(self, g: NeuralGraph):
        n = g.num_nodes
        src, dst = g.edge_index.cpu()
        self.num_nodes = n
        node_lab = torch.cat([g[k].cpu().view(n, -1) for k in NODE_CATEGORIES]
                             + [(g.x[:, 1] > 0).long().cpu().view(n, 1)], 1)
        colors = torch.unique(node_lab, dim=0, return_inverse=True)[1]
        self.node_label = colors
        # an edge's label: its kind and its geometry row's value (equal rows of a table built by hand are one label)
        geom = torch.unique(g.geometry.cpu().long(), dim=0, return_inverse=True)[1].view(-1)[g.edge_geom.cpu().long()]
        edge_rows = torch.stack([g.edge_kind.cpu().long(), geom], 1)
        if src.numel():
            elabel = torch.unique(edge_rows, dim=0, return_inverse=True)[1]
        else:
            elabel = torch.zeros(0, dtype=torch.long)
        self.num_labels = int(elabel.max()) + 1 if elabel.numel() else 1
        self.edge_key = (src * n + dst) * self.num_labels + elabel
        self.src, self.dst, self.elabel = src, dst, elabel
        permutable = torch.tensor([k.permutable for k in EDGE_KIND_TABLE] + [False])  # unknown kinds: fixed
        unsafe = ~permutable[g.edge_kind.cpu().long().clamp(0, len(EDGE_KIND_TABLE))]
        colors = _refine(colors, src, dst, elabel)
        fixed_nodes = (g.node_role.cpu() == ROLE["input"]) | (g.node_role.cpu() == ROLE["output"])
        # repeat-flatten copies: hidden neurons with a spatial position (virtual neurons are safe)
        fixed_nodes |= (g.node_spatial.cpu() > 0) & (g.node_role.cpu() != ROLE["virtual"])
        self.groups = self._components(colors, unsafe, fixed_nodes)

    # ------------------------------------------------------------------------------------------ build
    def _components(self, colors: Tensor, unsafe: Tensor, fixed_nodes: Tensor) -> list[Tensor]:
        src, dst, elabel = self.src, self.dst, self.elabel
        num_cells = int(colors.max()) + 1 if colors.numel() else 0
        size = torch.bincount(colors, minlength=num_cells)
        members = [[] for _ in range(num_cells)]
        for i, c in enumerate(colors.tolist()):
            members[c].append(i)
        fixed = torch.zeros(num_cells, dtype=torch.bool)
        fixed[colors[fixed_nodes]] = True
        fixed |= size <= 1
        matchings: dict[int, list[tuple[int, Tensor]]] = {}  # cell -> [(other cell, mate map)]
        if src.numel():
            cs, cd = colors[src], colors[dst]
            rel, group = torch.unique(torch.stack([cs, cd, elabel], 1), dim=0, return_inverse=True)
            for r, (x, y, _) in enumerate(rel.tolist()):
                sel = group == r
                s, d = src[sel], dst[sel]
                count = s.numel()
                pairs = torch.unique(s * self.num_nodes + d).numel()
                nx_, ny_ = int(size[x]), int(size[y])
                if x == y or bool(unsafe[sel].any()):
                    kind = "other"
                elif pairs == count == nx_ * ny_:
                    kind = "complete"
                elif count == nx_ == ny_ and torch.unique(s).numel() == nx_ and torch.unique(d).numel() == ny_:
                    kind = "matching"
                else:
                    kind = "other"
                if kind == "other":
                    fixed[x] = fixed[y] = True
                elif kind == "matching":
                    fwd = torch.full((self.num_nodes,), -1, dtype=torch.long)
                    fwd[s] = d
                    bwd = torch.full((self.num_nodes,), -1, dtype=torch.long)
                    bwd[d] = s
                    matchings.setdefault(x, []).append((y, fwd))
                    matchings.setdefault(y, []).append((x, bwd))
        groups = []
        seen = torch.zeros(num_cells, dtype=torch.bool)
        for root in range(num_cells):
            if seen[root]:
                continue
            rows = {root: torch.tensor(members[root], dtype=torch.long)}
            queue, ok = deque([root]), True
            seen[root] = True
            while queue:
                c = queue.popleft()
                for other, mate in matchings.get(c, []):
                    cand = mate[rows[c]]
                    if other in rows:
                        ok &= torch.equal(rows[other], cand)
                    else:
                        rows[other] = cand
                        seen[other] = True
                        queue.append(other)
            if ok and not any(bool(fixed[c]) for c in rows):
                groups.append(torch.stack([rows[c] for c in sorted(rows)]))
        return groups

    # ----------------------------------------------------------------------------------------- sample
    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """A random symmetry ``perm`` (``[N]`` long): neuron ``i`` moves to position ``perm[i]``."""
        perm = torch.arange(self.num_nodes)
        for rows in self.groups:
            pi = torch.randperm(rows.size(1), generator=generator)
            perm[rows] = rows[:, pi]
        return perm

    def edge_map(self, perm: Tensor) -> Tensor:
        """``emap`` with edge ``e`` moving to edge ``emap[e]``; raises if ``perm`` is not an automorphism."""
        n, labels = self.num_nodes, self.num_labels
        if not torch.equal(self.node_label[perm], self.node_label):
            raise AssertionError("the neuron permutation moves a neuron onto one with other categories")
        moved = (perm[self.src] * n + perm[self.dst]) * labels + self.elabel
        orig_sorted, o1 = torch.sort(self.edge_key, stable=True)
        moved_sorted, o2 = torch.sort(moved, stable=True)
        if not torch.equal(orig_sorted, moved_sorted):
            raise AssertionError("the neuron permutation does not map the graph onto itself (please report "
                                 "the architecture)")
        emap = torch.empty_like(o1)
        emap[o2] = o1
        return emap


def _refine(colors: Tensor, src: Tensor, dst: Tensor, elabel: Tensor) -> Tensor:
    """Colour refinement: split colours by the multisets of (edge label, neighbour colour), in and out."""
    gen = torch.Generator().manual_seed(0x5EED)
    n = colors.numel()
    count = int(colors.max()) + 1 if n else 0
    while src.numel():
        k = count
        sig = [colors]
        for here, there in ((dst, src), (src, dst)):
            keys, inv = torch.unique(elabel * k + colors[there], return_inverse=True)
            weights = torch.randint(0, 2 ** 40, (keys.numel(),), generator=gen)
            sig.append(torch.zeros(n, dtype=torch.long).index_add_(0, here, weights[inv]))
        colors = torch.unique(torch.stack(sig, 1), dim=0, return_inverse=True)[1]
        new_count = int(colors.max()) + 1
        if new_count == count:
            break
        count = new_count
    return colors


def _structure_key(g: NeuralGraph) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in [g.edge_index, g.edge_kind, g.edge_geom, g.geometry, (g.x[:, 1] > 0)] + [g[k] for k in NODE_CATEGORIES]:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


_SYMMETRIES: "OrderedDict[str, NeuronSymmetry]" = OrderedDict()


def neuron_symmetry(g: NeuralGraph) -> NeuronSymmetry:
    """The (cached) :class:`NeuronSymmetry` of ``g``'s structure."""
    key = _structure_key(g)
    sym = _SYMMETRIES.get(key)
    if sym is None:
        sym = _SYMMETRIES[key] = NeuronSymmetry(g)
        if len(_SYMMETRIES) > _CACHE_SIZE:
            _SYMMETRIES.popitem(last=False)
    else:
        _SYMMETRIES.move_to_end(key)
    return sym


class PermuteNeurons(BaseTransform):
    r"""Apply a random hidden-neuron permutation that is a symmetry of the network (augmentation).

    See the module docstring for which permutations are used. Node ``i``'s features move to node
    ``perm[i]`` and every edge's features to the edge between the moved endpoints; the structure and
    every categorical field stay unchanged, so ``from_neural_graph`` reads the permuted network back.
    Apply it before transforms that change the structure (``AddReverseEdges``).

    Args:
        generator (torch.Generator, optional): the random source. (default: the global RNG)
        seed (int, optional): seed a private generator instead (the sequence of permutations is then
            reproducible; each DataLoader worker gets its own copy of it).

    Example::

        ds = ZooDataset(zoo, transform=PermuteNeurons(seed=0))
    """

    def __init__(self, generator: torch.Generator | None = None, seed: int | None = None):
        if generator is not None and seed is not None:
            raise ValueError("pass a generator or a seed, not both")
        self.seed = seed
        self.generator = generator if seed is None else torch.Generator().manual_seed(seed)

    def sample(self, data: NeuralGraph) -> Tensor:
        """A random symmetry of ``data`` (``[N]``: neuron ``i`` moves to ``perm[i]``)."""
        return neuron_symmetry(data).sample(self.generator)

    def apply(self, data: NeuralGraph, perm: Tensor, symmetry: NeuronSymmetry | None = None) -> NeuralGraph:
        """``data`` with neuron ``i``'s values at ``perm[i]`` (``perm`` from :meth:`sample`)."""
        emap = (symmetry or neuron_symmetry(data)).edge_map(perm)
        data = data.clone()
        x = torch.empty_like(data.x)
        x[perm.to(x.device)] = data.x
        ea = torch.empty_like(data.edge_attr)
        ea[emap.to(ea.device)] = data.edge_attr
        data.x, data.edge_attr = x, ea
        return data

    def forward(self, data: NeuralGraph) -> NeuralGraph:
        sym = neuron_symmetry(data)
        return self.apply(data, sym.sample(self.generator), sym)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"
