"""NFN-NP / NFN-HNP / NFN-PT: exact invariance, IO-encoding, homogeneous-only errors, the paper's setup."""
from __future__ import annotations

import pytest
import torch

from neuralgraph.models import create_model
from neuralgraph.nn.nf_layers import pool_dim
from tests.models.weight_checks import FlattenCNN, collate, permuted_pair, weight_space_of, zoo

VARIANTS = ["nfn-np", "nfn-hnp", "nfn-pt"]


@pytest.mark.parametrize("io", ["none", "sinusoidal", "learned"])
@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("name", VARIANTS)
def test_exact_hidden_permutation_invariance(name, net, io):
    ws, ws_perm = permuted_pair(net, seed=3)
    model = create_model(name, weight_shapes=ws.signature, hidden_channels=(6, 4), head_hidden=(8,),
                         io_encoding=io).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(collate([ws])), model(collate([ws_perm])), atol=1e-5, rtol=1e-5)


def _permute_io(ws, pin=None, pout=None):
    W, b = list(ws.weights), list(ws.biases)
    if pin is not None:
        W[0] = W[0][:, :, pin]
    if pout is not None:
        W[-1], b[-1] = W[-1][:, pout], b[-1][:, pout]
    return type(ws)(tuple(W), tuple(b))


def test_io_encoding_breaks_input_output_symmetry():
    ws = zoo("mlp", 1)[0]
    pin, pout = torch.tensor([1, 0, 2, 3, 4]), torch.tensor([2, 0, 1])
    outs = {}
    for io in ("none", "sinusoidal"):
        torch.manual_seed(0)
        m = create_model("nfn-np", weight_shapes=ws.signature, hidden_channels=(6, 4), head_hidden=(8,),
                         io_encoding=io, pool="np").eval()
        with torch.no_grad():
            outs[io] = (m(collate([ws])), m(collate([_permute_io(ws, pin, pout)])))
    torch.testing.assert_close(*outs["none"], atol=1e-5, rtol=1e-5)     # NP: inputs/outputs permutable too
    assert not torch.allclose(*outs["sinusoidal"], atol=1e-5)           # IO-encoding tells them apart
    torch.manual_seed(0)
    hnp = create_model("nfn-hnp", weight_shapes=ws.signature, hidden_channels=(6, 4), head_hidden=(8,)).eval()
    with torch.no_grad():
        assert not torch.allclose(hnp(collate([ws])), hnp(collate([_permute_io(ws, None, pout)])), atol=1e-5)


def test_paper_setup_on_small_cnn_zoo_shapes():
    """Appendix D.1: 3 NF-layers (16, 16, 5), mean pool, MLP 1000-1000 -> 1 (sigmoid applied by the task)."""
    sig = (((16, 1, 3, 3), (16,)), ((16, 16, 3, 3), (16,)), ((16, 16, 3, 3), (16,)), ((10, 16), (10,)))
    for name in ("nfn-np", "nfn-hnp"):
        model = create_model(name, weight_shapes=sig)
        assert [layer.out_channels for layer in model.layers] == [16, 16, 5]
        assert model.head.channel_list == [pool_dim(sig, 5, "hnp"), 1000, 1000, 1]   # as the reference code


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_standardization_fits_per_layer_and_keeps_exact_invariance(net):
    train = zoo(net, 12, seed=1)
    model = create_model("nfn-np", weight_shapes=train[0].signature, hidden_channels=(6, 4), head_hidden=(8,)).eval()
    model.fit_statistics(train)
    stacked = model._standardized(type(train[0]).stack(train))
    L = len(stacked.weights)
    for i, (w, b) in enumerate(zip(stacked.weights, stacked.biases)):
        # zero mean / unit std over networks and the permuted dims; kept apart along the others
        dims = (0,) + ((1,) if i < L - 1 else ()) + ((2,) if i > 0 else ())
        torch.testing.assert_close(w.mean(dims), torch.zeros_like(w.mean(dims)), atol=1e-5, rtol=0)
        torch.testing.assert_close(w.std(dims, unbiased=False), torch.ones_like(w.mean(dims)), atol=1e-4, rtol=0)
        assert model.get_buffer(f"w_mean_{i}").shape[2:] == w.shape[3:]         # kernel taps kept apart
    # the last layer's outputs are not permuted: one statistic per output neuron
    assert model.get_buffer(f"b_mean_{L - 1}").shape == stacked.biases[-1].shape[1:]
    ws, ws_perm = permuted_pair(net, seed=4)
    with torch.no_grad():
        out, out_perm = model(collate([ws])), model(collate([ws_perm]))
    torch.testing.assert_close(out, out_perm, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, create_model("nfn-np", weight_shapes=train[0].signature, hidden_channels=(6, 4),
                                                 head_hidden=(8,), standardize=False).eval()(collate([ws])))


def test_standardization_is_saved_with_the_model():
    train = zoo("cnn", 6)
    kw = dict(weight_shapes=train[0].signature, hidden_channels=(3,), head_hidden=(4,))
    model = create_model("nfn-np", **kw)
    model.fit_statistics(train)
    fresh = create_model("nfn-np", **kw)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.get_buffer("w_std_1"), model.get_buffer("w_std_1"))
    assert not torch.equal(model.get_buffer("w_std_1"), torch.ones_like(model.get_buffer("w_std_1")))


def test_hnp_layers_refuse_the_np_pool():
    sig = zoo("mlp", 1)[0].signature
    with pytest.raises(ValueError, match="need pool='hnp'"):
        create_model("nfn-hnp", weight_shapes=sig, pool="np")


def test_weight_shapes_from_yaml_lists_and_plain_shapes():
    ws = zoo("cnn", 2)[0]
    as_lists = [[list(w), list(b)] for w, b in ws.signature]
    plain = [w for w, _ in ws.signature]
    for shapes in (as_lists, plain):
        m = create_model("nfn-hnp", weight_shapes=shapes, hidden_channels=(3,), head_hidden=(4,))
        assert m(collate([ws])).shape == (1, 1)


def test_flattening_cnn_is_rejected_with_advice():
    sig = weight_space_of(FlattenCNN()).signature
    for name in ("nfn-np", "nfn-hnp"):
        with pytest.raises(ValueError, match="ng-gnn, ng-t or sne"):
            create_model(name, weight_shapes=sig)
    create_model("nfn-pt", weight_shapes=sig)   # pointwise layers do not couple layers: fine


def test_heterogeneous_batch_error_says_why():
    mixed = collate([zoo("mlp", 1)[0], zoo("cnn", 1)[0]])
    model = create_model("nfn-np", weight_shapes=mixed.groups[0].signature, hidden_channels=(3,))
    with pytest.raises(ValueError, match="homogeneous zoo.*2 architectures.*ng-gnn, ng-t or sne"):
        model(mixed)
