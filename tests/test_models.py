import pytest
import torch

from sgtool.data import DATASETS
from sgtool.models import build, models_for

# Every image model on every image dataset (resnet18 is heavy: checked on one shape only). The
# series and text models have their own tests (test_series.py, test_text.py).
CASES = [(m, d) for m in models_for("image") for d in DATASETS
         if DATASETS[d].layout == "image" and not (m == "resnet18" and d != "cifar10")]


@pytest.mark.parametrize("name, dataset", CASES)
def test_forward_backward(name, dataset):
    torch.manual_seed(0)
    spec = DATASETS[dataset]
    model = build(name, dataset)
    x = torch.rand(2, *spec.shape, requires_grad=True)
    out = model(x)
    assert out.shape == (2, spec.num_classes)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_normalisation_is_first_layer():
    model = build("mlp", "mnist")
    x = torch.full((1, 1, 28, 28), 0.1307)
    assert torch.allclose(model[0](x), torch.zeros_like(x), atol=1e-6)


def test_unknown_model_lists_names():
    from sgtool.errors import UsageError

    with pytest.raises(UsageError, match="mnist-cnn"):
        build("nope", "mnist")


def test_mnist_cnn_is_the_authors_network():
    net = build("mnist-cnn", "mnist")[1]
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Dropout", "Flatten", "Linear", "ReLU",
                     "Dropout", "Linear"]
    assert net[0].out_channels == 32 and net[2].out_channels == 64 and net[7].out_features == 128
    assert net[5].p == 0.25 and net[9].p == 0.5


@pytest.mark.parametrize("name, dataset", [("mnist-cnn", "mnist"), ("resnet20", "cifar10")])
def test_freeze_keeps_outputs_and_input_gradients(name, dataset):
    """freeze: no parameter requires grad, convolution weights are channels-last, and logits and
    input gradients match the unfrozen model to float rounding."""
    import copy

    from sgtool.models import freeze
    from sgtool.saliency import input_gradient

    torch.manual_seed(0)
    model = build(name, dataset).eval()
    frozen = freeze(copy.deepcopy(model))
    assert not any(p.requires_grad for p in frozen.parameters())
    conv = next(m for m in frozen.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(4, *DATASETS[dataset].shape, generator=torch.Generator().manual_seed(1))
    y = torch.arange(4)
    torch.testing.assert_close(frozen(x), model(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(input_gradient(frozen, x, y), input_gradient(model, x, y), rtol=1e-3, atol=1e-6)


def _pool_inputs():
    """Inputs that stress the max-pool's tie-breaking and NaN rules: random values, a ReLU's many
    exact zeros (ties), whole windows of -inf, and NaNs."""
    torch.manual_seed(0)
    r = torch.randn(3, 5, 13, 11)
    ties = torch.relu(r).round()  # many equal values in a window
    special = r.clone()
    special[0, :, :4, :4] = float("-inf")
    special[1, 2, 5, 5] = float("nan")
    special[2, 1, 3:5, 3:5] = float("nan")
    return {"random": r, "ties": ties, "special": special}


@pytest.mark.parametrize("kind", ["random", "ties", "special"])
@pytest.mark.parametrize("args", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
                                  dict(kernel_size=2, stride=1, dilation=2), dict(kernel_size=(3, 2), stride=(1, 2))])
def test_max_pool2d_equals_torch_in_values_indices_and_gradients(kind, args):
    """sgtool's MaxPool2d (the channels-last kernel on CPU) gives bit for bit nn.MaxPool2d's
    outputs, argmax indices and input gradients, and really takes its own path."""
    from sgtool.fastpath import MaxPool2d, max_pool2d

    x = _pool_inputs()[kind]
    ours, ref = MaxPool2d(**args), torch.nn.MaxPool2d(**args)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    a, b = ours(xa), ref(xb)
    assert type(a.grad_fn).__name__ == "_PoolViaChannelsLastBackward"
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    idx_a = max_pool2d(ours, x)[1]
    idx_b = torch.nn.functional.max_pool2d(x, return_indices=True, **args)[1]
    assert torch.equal(idx_a, idx_b) and idx_a.is_contiguous()
    g = torch.randn_like(a)
    a.backward(g)
    b.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=0, equal_nan=True)


def test_max_pool2d_keeps_other_layouts_and_return_indices_on_torchs_path():
    from sgtool.fastpath import MaxPool2d

    x = torch.rand(2, 4, 8, 8)
    cl = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = MaxPool2d(2)(cl)
    assert "Channels" not in type(out.grad_fn).__name__
    assert torch.equal(out, torch.nn.MaxPool2d(2)(x))
    vals, idx = MaxPool2d(2, return_indices=True)(x)
    ref = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(vals, ref[0]) and torch.equal(idx, ref[1])


def test_max_pool2d_supports_double_backward_like_torch():
    """input_gradient(..., create_graph=True) through mnist-cnn's pool: the gradient of a
    gradient norm equals the one through nn.MaxPool2d."""
    model, plain = _mnist_cnn_and_copy()
    plain[1][4] = torch.nn.MaxPool2d(2)
    for a, b in zip(_grad_of_gradient_norm(model, "input"), _grad_of_gradient_norm(plain, "input")):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _mnist_cnn_and_copy():
    import copy

    torch.manual_seed(0)
    model = build("mnist-cnn", "mnist").eval()
    return model, copy.deepcopy(model)


def _grad_of_gradient_norm(model, wrt: str) -> tuple[torch.Tensor, ...]:
    """d/dparameters of the squared norm of a first gradient of log p(y|x), taken with
    create_graph: the input gradient (wrt="input") or the parameter gradients."""
    from sgtool.saliency import input_gradient, label_log_prob

    x, y = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2, 3])
    params = list(model.parameters())
    if wrt == "input":
        first = [input_gradient(model, x, y, create_graph=True)]
    else:
        first = torch.autograd.grad(label_log_prob(model(x), y), params, create_graph=True)
    return torch.autograd.grad(sum(g.pow(2).sum() for g in first), params)


@pytest.mark.parametrize("shape", [(512, 9216, 128), (64, 128, 10), (7, 30, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_torch_in_values_and_gradients(shape, bias):
    """sgtool's Linear gives nn.Linear's outputs, weight and bias gradients bit for bit (the same
    kernels), and its input gradient through its own kernel, to float rounding (bit for bit on
    mnist-cnn's shapes on the machines measured, but not promised)."""
    from sgtool.fastpath import Linear

    n, i, o = shape
    torch.manual_seed(0)
    ref, ours = torch.nn.Linear(i, o, bias=bias), Linear(i, o, bias=bias)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(n, i).relu()
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    a, b = ours(xa), ref(xb)
    assert type(a.grad_fn).__name__ == "_LinearFnBackward"
    assert torch.equal(a, b)
    g = torch.randn(n, o)
    a.backward(g)
    b.backward(g)
    assert torch.equal(ours.weight.grad, ref.weight.grad)
    if bias:
        assert torch.equal(ours.bias.grad, ref.bias.grad)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)


def test_linear_input_gradient_takes_its_own_kernel(monkeypatch):
    """The backward's input gradient is linear_input_grad's (not autograd's addmm backward), and
    linear_input_grad without oneDNN is the plain product."""
    from sgtool import fastpath as models

    calls = []
    real = models.linear_input_grad
    monkeypatch.setattr(models, "linear_input_grad", lambda g, w: calls.append(g.shape) or real(g, w))
    x = torch.randn(6, 20, requires_grad=True)
    models.Linear(20, 3)(x).sum().backward()
    assert calls == [(6, 3)]
    monkeypatch.setattr(models, "_ONEDNN_LINEAR", False)
    g, w = torch.randn(6, 3), torch.randn(3, 20)
    assert torch.equal(real(g, w), g.mm(w))


def test_linear_keeps_torchs_path_off_its_fast_case():
    """3-D inputs, and inputs that need no gradient, run nn.Linear's own forward."""
    from sgtool.fastpath import Linear

    lin = Linear(5, 4)
    x = torch.randn(2, 3, 5, requires_grad=True)
    assert "_LinearFn" not in type(lin(x).grad_fn).__name__
    assert torch.equal(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias))
    assert type(lin(x[0].detach()).grad_fn).__name__ == "AddmmBackward0"


@pytest.mark.parametrize("wrt", ["input", "parameters"])
def test_linear_supports_double_backward_like_torch(wrt):
    """A gradient norm's gradient through mnist-cnn's Linear layers equals the one through
    nn.Linear to float rounding, for the input gradient (input_gradient(..., create_graph=True))
    and for the parameter gradients, whose second derivative runs back through the saved input.
    The backward then runs differentiable ops, which autograd orders differently from addmm's."""
    model, plain = _mnist_cnn_and_copy()
    for j in (7, 10):
        lin = plain[1][j]
        plain[1][j] = torch.nn.Linear(lin.in_features, lin.out_features)
        plain[1][j].load_state_dict(lin.state_dict())
    for a, b in zip(_grad_of_gradient_norm(model, wrt), _grad_of_gradient_norm(plain, wrt)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * b.abs().max().item())


def test_linear_skips_the_weight_gradient_when_only_the_input_gradient_is_wanted(monkeypatch):
    """torch.autograd.grad(..., x), as the saliency pass calls it, leaves the weight gradient
    uncomputed; a backward into the parameters computes it."""
    from sgtool import fastpath as models

    seen = []
    real = models._wanted
    monkeypatch.setattr(models, "_wanted", lambda node: seen.append(real(node)) or seen[-1])
    lin = models.Linear(8, 3)
    x = torch.randn(4, 8, requires_grad=True)
    torch.autograd.grad(lin(x).sum(), x)
    assert lin.weight.grad is None
    lin(x).sum().backward()
    assert seen == [False, True] and lin.weight.grad is not None


@pytest.mark.parametrize("layout", ["expanded", "expanded-row", "transposed", "sliced", "offset", "weight-t"])
def test_linear_input_grad_takes_any_strides(layout):
    """Gradients reach the backward in any layout (a .sum() sends an expanded one); the oneDNN
    product must equal g @ W for each, as must a non-contiguous weight."""
    from sgtool.fastpath import linear_input_grad

    torch.manual_seed(0)
    w = torch.randn(7, 20)
    g = {"expanded": torch.ones(1, 1).expand(6, 7), "expanded-row": torch.randn(1, 7).expand(6, 7),
         "transposed": torch.randn(7, 6).t(), "sliced": torch.randn(6, 14)[:, ::2],
         "offset": torch.randn(8, 7)[2:], "weight-t": torch.randn(6, 7)}[layout]
    if layout == "weight-t":
        w = torch.randn(20, 7).t()
    with torch.no_grad():
        torch.testing.assert_close(linear_input_grad(g, w), g.mm(w), rtol=1e-5, atol=1e-6)
