"""Everything the converter cannot represent fails loudly, naming the culprit and the fix."""
import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from neuralgraph import UnsupportedModuleError, execute, from_neural_graph, to_neural_graph
from neuralgraph.convert import activation_id, register_activation
from neuralgraph.data.graph import EDGE_KIND


class WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.encoder = nn.Module()
        self.encoder.rnn = nn.LSTM(4, 4)

    def forward(self, x):
        return self.encoder.rnn(self.fc(x))[0]


def test_lstm_names_path_type_and_supported_list():
    with pytest.raises(UnsupportedModuleError, match=r"encoder\.rnn \(torch\.nn\.modules\.rnn\.LSTM\) is not "
                                                     r"supported: recurrent layers.*; supported modules: Linear, "
                                                     r"Conv1d/2d/3d.*") as err:
        to_neural_graph(WithLSTM())
    assert len(str(err.value)) < 600   # a short summary, not every supported module


def test_unsupported_layer_names_the_closest_supported_one():
    class Fold(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.unfold, self.mix = nn.Linear(4, 4), nn.Unfold(2), nn.Bilinear(4, 4, 2)

        def forward(self, x):
            return self.mix(self.fc(x), self.fc(x))

    with pytest.raises(UnsupportedModuleError, match=r"^mix \(torch\.nn\.modules\.linear\.Bilinear\) is not "
                                                     r"supported \(no rule for it; the closest supported: Linear"):
        to_neural_graph(Fold())


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Branchy()

    def forward(self, x):
        return self.block(x)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        h = self.fc(x)
        if h.sum() > 0:  # control flow on a tensor value
            return h
        return -h


def test_untraceable_forward_names_the_module():
    with pytest.raises(UnsupportedModuleError, match=r"block \(.*Branchy\) cannot be traced by torch\.fx"):
        to_neural_graph(DataDependent())
    # a branch on tensor values stays refused when sizes are known: only sizes become numbers
    with pytest.raises(UnsupportedModuleError, match=r"block \(.*Branchy\) cannot be traced by torch\.fx"):
        to_neural_graph(DataDependent(), example_input=torch.randn(2, 3))


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.gate = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x):
        return torch.div(self.fc(x), torch.sigmoid(self.gate(x)), rounding_mode="floor")  # a rounded quotient


class UsesParameterDirectly(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.fc(x) + self.scale.exp()


def test_unsupported_operations_are_named():
    with pytest.raises(UnsupportedModuleError, match=r"only division of a neuron value by a non-zero Python "
                                                     r"number or by another neuron value"):
        to_neural_graph(Gated())
    with pytest.raises(UnsupportedModuleError, match=r"computes 'exp' on parameter 'scale' in forward"):
        to_neural_graph(UsesParameterDirectly())


def test_kernel_larger_than_max_kernel_converts_or_suggests_the_fix():
    m = nn.Sequential(nn.Conv2d(1, 2, 9), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 1))
    # decomposed (tests/convert/test_conv.py) at the default max_kernel; whole 81-tap kernels with max_kernel=(9, 9)
    assert (to_neural_graph(m).edge_kind == EDGE_KIND["subsample"]).sum() == 81
    assert to_neural_graph(m, max_kernel=(9, 9)).edge_attr.size(1) == 81
    m3 = nn.Sequential(nn.Conv3d(1, 2, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2, 1))
    with pytest.raises(UnsupportedModuleError, match=r"0 \(.*Conv3d\): a 3-d kernel \(3, 3, 3\) needs a 3-d "
                                                     r"max_kernel, got max_kernel=\(7, 7\).*max_kernel=\(3, 7, 7\)"):
        to_neural_graph(m3)


def test_bad_options_and_nan_parameters():
    m = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"unknown converter option\(s\) \['max_kernal'\]; valid options"):
        to_neural_graph(m, max_kernal=(3, 3))
    with pytest.raises(ValueError, match="flatten must be"):
        to_neural_graph(m, flatten="tile")
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"parameter '0.weight' contains NaN"):
        to_neural_graph(m)


def test_channel_mismatch_in_add():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 3, padding=1)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h) + h[:, :3]  # 2 and 3 channels (torch would not broadcast them either)

    with pytest.raises(UnsupportedModuleError, match=r"adds values with 2 and 3 channels; slice both"):
        to_neural_graph(M())  # (one channel broadcast over several converts: test_blocks.py)


def test_custom_activation_registration():
    class Sine(nn.Module):
        def forward(self, x):
            return torch.sin(30.0 * x)

    m = nn.Sequential(nn.Linear(2, 8), Sine(), nn.Linear(8, 1))
    traced = to_neural_graph(m)              # traced through: a scale layer (edges 30.0), then sin
    assert traced.num_nodes == 2 + 8 + 8 + 1 and (traced.node_act == activation_id("sin")).sum() == 8
    act = register_activation(Sine, "sine30")
    g = to_neural_graph(m)                   # a leaf activation: no extra layer
    assert g.num_nodes == 2 + 8 + 1 and g.node_act[2:10].eq(act).all()


class NoParameters(nn.Module):
    def forward(self, x):
        return torch.relu(x).mean((2, 3))


class UnusedParameters(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)  # never called

    def forward(self, x):
        return torch.relu(x)


def test_parameter_free_modules_have_nothing_to_convert():
    for m in (nn.Sequential(nn.ReLU()), nn.ReLU(), NoParameters(), nn.Sequential()):
        with pytest.raises(UnsupportedModuleError, match=r"has no parameters: there is nothing to convert"):
            to_neural_graph(m, example_input=torch.randn(2, 3, 4, 4))
    with pytest.raises(UnsupportedModuleError, match=r"UnusedParameters\) uses none of its parameters"):
        to_neural_graph(UnusedParameters(), example_input=torch.randn(2, 3))


def test_nonfinite_parameters_allowed_explicitly():
    from neuralgraph import from_neural_graph
    from neuralgraph.convert import get_plan
    from tests.helpers.permute import assert_state_equal

    m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    plan = get_plan(m)
    with torch.no_grad():
        m[0].weight[1, 0] = float("inf")
        m[2].bias[0] = float("nan")
    with pytest.raises(ValueError, match=r"parameter '0.weight' contains NaN or Inf.*allow_nonfinite=True"):
        to_neural_graph(m)
    g = to_neural_graph(m, allow_nonfinite=True)
    assert get_plan(m) is plan  # a check of the values, not a converter option: the plan is shared
    assert g.edge_attr.isinf().sum() == 1 and g.x.isnan().sum() == 1
    back = from_neural_graph(g, m, allow_nonfinite=True)
    for a, b in zip(m.parameters(), back.parameters()):
        assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan())
    with pytest.raises(ValueError, match="contains NaN"):  # the default is unchanged afterwards
        to_neural_graph(m)
    with pytest.raises(ValueError, match="contains NaN"):
        plan.graph(m)
    assert plan.graph(dict(m.named_parameters()), allow_nonfinite=True).x.isnan().any()
    del assert_state_equal


def _clip_window(window, size):
    """torchvision video Swin's ``_get_window_and_shift_size`` in small: it edits its list argument in place."""
    for i in range(2):
        if size[i] <= window[i]:
            window[i] = size[i]
    return window


torch.fx.wrap("_clip_window")


class SizedPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return F.avg_pool2d(self.conv(x), _clip_window([7, 7], [x.shape[2], x.shape[3]]))


def test_a_wrapped_function_editing_its_list_argument_runs_in_the_shape_pass():
    """The shape pass hands a wrapped function plain lists (it blamed the input: "pass an input of the shape the
    model expects"), so the refusal names the real cause: a pooling window computed from sizes in forward."""
    with pytest.raises(UnsupportedModuleError, match="pooling kernel_size is computed in forward"):
        to_neural_graph(SizedPool().eval(), example_input=torch.randn(2, 3, 4, 4))


class CachedBias(nn.Module):
    """timm EfficientViT (MSRA) / LeViT: an eval-mode cache keyed by ``str(x.device)`` filled in forward."""

    def __init__(self):
        super().__init__()
        self.fc, self.bias, self.cache = nn.Linear(4, 4), nn.Parameter(torch.randn(4)), {}
        self.register_buffer("idx", torch.tensor([1, 0, 3, 2]), persistent=False)

    def forward(self, x):
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = self.bias[self.idx]
        return self.fc(x) + self.cache[key]


def test_tracing_leaves_no_proxies_in_the_users_model():
    """The symbolic trace stored an fx Proxy under the key 'Proxy(...)' in the model's cache (and a second trace
    read it back); the conversion's refusal must leave the model as an eager forward would."""
    m = CachedBias().eval()
    with pytest.raises(UnsupportedModuleError, match="'getitem' on parameter 'bias'"):
        to_neural_graph(m, example_input=torch.randn(2, 4))
    assert all(isinstance(v, torch.Tensor) for v in m.cache.values()) and list(m.cache) in ([], ["cpu"])


class PlainTensorAttribute(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.shift = nn.Linear(4, 4), torch.ones(4)  # not registered: fx names it _tensor_constant0

    def forward(self, x):
        return self.fc(x) + self.shift


def test_an_unregistered_tensor_is_named_for_what_it_is():
    with pytest.raises(UnsupportedModuleError, match=r"neither a parameter nor a buffer .*register_buffer"):
        to_neural_graph(PlainTensorAttribute())


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_compiled_and_scripted_modules():
    """``torch.compile(model)`` converts as the module it wraps (same graph, read back into either); a TorchScript
    module has no Python forward left and is refused by name (a traced one crashed with a ValueError)."""
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    g = to_neural_graph(m)
    compiled = torch.compile(m)
    assert torch.equal(to_neural_graph(compiled).edge_attr, g.edge_attr)
    back = from_neural_graph(g, compiled)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), m.state_dict().values()))
    for scripted in (torch.jit.script(m), torch.jit.trace(m, torch.randn(2, 3))):
        with pytest.raises(UnsupportedModuleError, match="is a TorchScript module .* convert the nn.Module"):
            to_neural_graph(scripted)


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
def test_parametrized_weights_are_refused_with_the_fix():
    """weight_norm / spectral_norm compute the weight in forward: the refusal says how to remove each form."""
    new = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 2)))
    with pytest.raises(UnsupportedModuleError, match=r"its weight is parametrized.*remove_parametrizations\(module, "
                                                     r"'weight'\)"):
        to_neural_graph(new)
    old = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), torch.nn.utils.weight_norm(nn.Conv2d(4, 2, 3)))
    with pytest.raises(UnsupportedModuleError, match="computed in forward.*remove_weight_norm"):
        to_neural_graph(old)


class FunctionalDropout(nn.Module):
    def __init__(self, training_arg: bool):
        super().__init__()
        self.training_arg, self.a, self.b = training_arg, nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = F.dropout(h, 0.5, training=self.training) if self.training_arg else F.dropout(h, 0.5)
        return self.b(h)


def test_functional_dropout_that_drops_is_refused():
    """``F.dropout`` in training mode (or without ``training=``, whose default is True) zeroes values at random: it
    was converted silently as the identity (off by 0.36 from the train-mode module; found by the second sweep). In
    eval mode with ``training=self.training`` it is the identity."""
    with pytest.raises(UnsupportedModuleError, match=r"dropout\(p=0.5\) with training=True .* model.eval\(\)"):
        to_neural_graph(FunctionalDropout(True).train())
    with pytest.raises(UnsupportedModuleError, match="defaults to training=True"):
        to_neural_graph(FunctionalDropout(False).eval())
    m = FunctionalDropout(True).eval()
    x = torch.randn(5, 3)
    torch.testing.assert_close(execute(to_neural_graph(m), x), m(x))


class DropPathLike(nn.Module):
    """timm's DropPath: a per-sample keep mask drawn in forward (training mode)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        h = self.fc(x)
        if self.training:
            keep = h.new_empty((h.shape[0], 1)).bernoulli_(0.9)
            h = h * keep / 0.9
        return x + h


def test_random_operations_and_reductions_get_their_own_advice():
    """Random numbers drawn in training mode are refused with 'call model.eval()', a reduction without the
    advice to register it as an element-wise activation (both were told to register_activation)."""
    with pytest.raises(UnsupportedModuleError, match=r"'new_empty' .* draws random numbers .* model.eval\(\)"):
        to_neural_graph(DropPathLike().train())
    x = torch.randn(4, 3)
    m = DropPathLike().eval()
    torch.testing.assert_close(execute(to_neural_graph(m), x), m(x))

    class Var(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x).var(1, keepdim=True)

    with pytest.raises(UnsupportedModuleError, match="reduces over a dim") as err:
        to_neural_graph(Var())
    assert "register_activation" not in str(err.value)
