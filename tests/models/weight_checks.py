"""Shared fixtures for the weight-space models (NFN, SNE, StatNN, MLP): real torch modules, their
function-preserving hidden-neuron permutations, and WeightSpace batches built from their parameters."""
from __future__ import annotations

import copy
import inspect

import torch
from torch import Tensor, nn

from neuralgraph.data import WeightSpace, WeightSpaceBatch
from neuralgraph.models import create_model
from neuralgraph.models.registry import _MODELS
from tests.helpers.nets import MLP, permute_mlp
from tests.helpers.permute import assert_params_moved, assert_same_function, permute_in, permute_out


class SmallCNN(nn.Module):
    """The Small CNN Zoo architecture (SNE Arch1), narrower: convs, global average pool, linear."""

    def __init__(self, channels=(4, 5, 4), in_channels=1, n_classes=3, kernel=3):
        super().__init__()
        chans = (in_channels,) + tuple(channels)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel) for a, b in zip(chans[:-1], chans[1:]))
        self.fc = nn.Linear(chans[-1], n_classes)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.fc(x.mean(dim=(2, 3)))


class FlattenCNN(nn.Module):
    """SNE's Arch2 pattern: the linear head reads a flattened C x H x W map (no global pooling)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 3, 3), nn.Conv2d(3, 4, 2)
        self.fc1, self.fc2 = nn.Linear(4 * 3 * 3, 5), nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))              # [B, 4, 3, 3] from 6x6
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def permute_cnn(model: SmallCNN, gen: torch.Generator) -> SmallCNN:
    m = copy.deepcopy(model)
    layers = list(m.convs) + [m.fc]
    for a, b in zip(layers[:-1], layers[1:]):
        perm = torch.randperm(a.out_channels, generator=gen)
        permute_out(a, perm)
        permute_in(b, perm)
    return m


#: name -> (module factory, permutation, example input)
NETS = {
    "mlp": (lambda: MLP((5, 8, 7, 3)), permute_mlp, lambda: torch.randn(4, 5)),
    "cnn": (lambda: SmallCNN(), permute_cnn, lambda: torch.randn(2, 1, 9, 9)),
}


def weight_space_of(module: nn.Module) -> WeightSpace:
    """One network's Linear / Conv parameters in registration order (dataflow order for these nets)."""
    weights, biases = [], []
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            w = m.weight.detach()
            weights.append(w.unsqueeze(0))
            biases.append((m.bias.detach() if m.bias is not None else w.new_zeros(w.size(0))).unsqueeze(0))
    return WeightSpace(tuple(weights), tuple(biases))


def zoo(net: str, n: int, seed: int = 0) -> list[WeightSpace]:
    """``n`` randomly initialised networks of one architecture, with varied weight scales."""
    torch.manual_seed(seed)
    out = []
    for i in range(n):
        m = NETS[net][0]()
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(0.5 + i / max(n, 1))
        out.append(weight_space_of(m))
    return out


def permuted_pair(net: str, seed: int = 0) -> tuple[WeightSpace, WeightSpace]:
    """Weight spaces of a module and of a hidden-neuron-permuted copy (checked to compute the same)."""
    make, permute, example = NETS[net]
    torch.manual_seed(seed)
    model = make()
    other = permute(model, torch.Generator().manual_seed(seed + 1))
    assert_params_moved(model, other)
    assert_same_function(model, other, example())
    return weight_space_of(model), weight_space_of(other)


def collate(items) -> WeightSpaceBatch:
    return WeightSpaceBatch.collate(list(items))


#: small sizes so every model runs in milliseconds
SMALL = {
    "nfn-np": dict(hidden_channels=(4, 3), head_hidden=(16,)),
    "nfn-hnp": dict(hidden_channels=(4, 3), head_hidden=(16,)),
    "nfn-pt": dict(hidden_channels=(4, 3), head_hidden=(16,)),
    "sne": dict(hidden=16, chunk_hidden=8, chunk_size=8, head_hidden=(16,)),
    "statnn": dict(hidden=(16,)),
    "mlp": dict(hidden=(16,)),
}


def weight_models() -> list[str]:
    return sorted(n for n, cls in _MODELS.items() if getattr(cls, "input_kind", None) == "weights")


def needs_signature(name: str) -> bool:
    return "weight_shapes" in inspect.signature(_MODELS[name]).parameters and name != "statnn"


def build(name: str, signature=None, out_dim: int = 2, **extra) -> nn.Module:
    kwargs = dict(SMALL.get(name, {}), out_dim=out_dim, **extra)
    if needs_signature(name):
        kwargs["weight_shapes"] = signature
    return create_model(name, **kwargs)
