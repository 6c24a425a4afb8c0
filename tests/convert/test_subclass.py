"""Subclasses of supported layers: the parent's rule applies only if the subclass does not redefine how the layer
computes (``forward``, ``_conv_forward``, ...); otherwise it is traced into (and converts if what it does can be
represented) or refused by name. Before, every subclass silently converted as its parent."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph import UnsupportedModuleError, execute, from_neural_graph, to_neural_graph
from tests.helpers.permute import assert_state_equal, isomorphic


class ScaledConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 0.5 + 1


class StdConv2d(nn.Conv2d):
    """timm's weight-standardised convolution."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                         momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class HalfConv(nn.Conv2d):
    """Changes the computation without touching forward."""

    def _conv_forward(self, x, weight, bias):
        return F.conv2d(x, weight * 0.5, bias, self.stride, self.padding, self.dilation, self.groups)


class InitConv(nn.Conv2d):
    """Only a different initialisation: the same function as its parent."""

    def reset_parameters(self):
        nn.init.zeros_(self.bias) if self.bias is not None else None
        nn.init.normal_(self.weight, std=0.1)


class ReLULinear(nn.Linear):
    def forward(self, x):
        return super().forward(x).relu()


def _net(conv_cls, head_cls=nn.Linear) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(conv_cls(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         head_cls(4, 3)).eval()


@pytest.mark.parametrize("conv_cls, head_cls", [(ScaledConv, nn.Linear), (InitConv, nn.Linear),
                                                (nn.Conv2d, ReLULinear), (ScaledConv, ReLULinear)])
def test_representable_subclasses_convert_exactly(conv_cls, head_cls):
    m = _net(conv_cls, head_cls)
    x = torch.randn(3, 2, 6, 6)
    g = to_neural_graph(m)
    torch.testing.assert_close(execute(g, x), m(x), atol=1e-5, rtol=1e-5)
    assert_state_equal(m, from_neural_graph(g, m))


def test_overriding_subclass_differs_from_its_parent():
    plain, scaled = _net(nn.Conv2d), _net(ScaledConv)
    scaled.load_state_dict(plain.state_dict())
    assert not isomorphic(to_neural_graph(plain), to_neural_graph(scaled))
    init = _net(InitConv)  # a subclass that only initialises differently uses the Conv2d rule
    init.load_state_dict(plain.state_dict())
    assert isomorphic(to_neural_graph(plain), to_neural_graph(init))


@pytest.mark.parametrize("conv_cls", [StdConv2d, HalfConv])
def test_unrepresentable_subclasses_refused_by_name(conv_cls):
    with pytest.raises(UnsupportedModuleError, match=r"^0 \(.*\): (the weight of this convolution is computed in "
                                                     r"forward|computes '\w+' on parameter '0.weight' in forward)"
                                                     r".*subclass of torch.nn.modules.conv.Conv2d"):
        to_neural_graph(_net(conv_cls))


def test_functional_layers_on_model_parameters():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.b1 = nn.Parameter(torch.randn(4, 2, 3, 3)), nn.Parameter(torch.randn(4))
            self.w2 = nn.Parameter(torch.randn(3, 4))

        def forward(self, x):
            h = F.conv2d(x, self.w1, self.b1, padding=1, stride=2).tanh().mean((2, 3))
            return F.linear(h, self.w2)

    torch.manual_seed(0)
    m = Functional()
    x = torch.randn(2, 2, 7, 7)
    g = to_neural_graph(m)
    torch.testing.assert_close(execute(g, x), m(x), atol=1e-5, rtol=1e-5)
    assert_state_equal(m, from_neural_graph(g, m))


def test_a_forward_set_on_the_instance_is_traced_not_claimed():
    """``m.forward = ...`` on an instance redefines what it computes as a subclass would: the module is traced into
    (here a Linear, a GELU and a conv, each scaled by 2, convert exactly), never converted by its class's rule
    (before: silently the unscaled layer)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 5), nn.GELU())
    for layer in (m[0], m[2], m[3]):
        forward = layer.forward
        layer.forward = lambda t, forward=forward: forward(t) * 2
    x = torch.randn(2, 3, 4, 4)
    g = to_neural_graph(m, example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x), m(x), atol=1e-5, rtol=1e-4)


def test_forward_hooks_are_traced_with_their_module():
    """A forward hook may replace a module's output (or a pre-hook its input): the module is traced with its hooks,
    not converted by its class's rule without them (before: silently the layer alone, 0.4 relative error), also when
    a plan of the hook-free model is cached; timm's Swin block with a hook is refused, saying why it was traced."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    to_neural_graph(m)  # cached plan of the model without hooks
    handles = [m[0].register_forward_hook(lambda mod, inp, out: out * 2),
               m[2].register_forward_pre_hook(lambda mod, args: (args[0] + 1,))]
    with torch.no_grad():
        torch.testing.assert_close(execute(to_neural_graph(m), x), m(x), atol=1e-5, rtol=1e-4)
    for h in handles:
        h.remove()
    with torch.no_grad():
        torch.testing.assert_close(execute(to_neural_graph(m), x), m(x), atol=1e-5, rtol=1e-4)


def test_a_root_with_its_own_forward_or_hooks_is_refused_or_wrapped():
    """torch.fx traces the class's forward of the model itself, without a forward set on the instance or its hooks
    (before: silently dropped, 0.5 relative error): refused, naming the fix; wrapped in nn.Sequential it converts."""
    torch.manual_seed(0)
    x = torch.randn(4, 3)
    hooked = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    hooked.register_forward_hook(lambda mod, inp, out: out * 2)
    own = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    forward = own.forward
    own.forward = lambda t: forward(t) * 2
    layer = nn.Linear(3, 2)
    layer.register_forward_pre_hook(lambda mod, args: (args[0] * 2,))
    for m in (hooked, own, layer):
        with pytest.raises(UnsupportedModuleError, match=r"<root> .*forward hooks.*nn\.Sequential\(model\)"):
            to_neural_graph(m)
        wrapped = nn.Sequential(m)
        with torch.no_grad():
            torch.testing.assert_close(execute(to_neural_graph(wrapped, example_input=x), x), wrapped(x), atol=1e-5,
                                       rtol=1e-4)
