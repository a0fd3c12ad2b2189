"""MODELS registry: name -> factory(shape, num_classes) -> nn.Module returning logits.

`build(name, dataset)` wraps the network so that the dataset's mean/std normalisation is its
first layer. Everything outside the model (saliency, masking, attacks) then works in pixel
space, on images in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import unknown_name


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):  # (B, C, H, W) in [0, 1]
        return (x - self.mean) / self.std


class _PoolViaChannelsLast(torch.autograd.Function):
    """F.max_pool2d_with_indices of an NCHW CPU tensor, computed by the channels-last kernel.
    Outputs and indices are NCHW and equal to the NCHW kernel's; the backward is the call autograd
    makes for max_pool2d_with_indices, on the same input and indices."""

    @staticmethod
    def forward(ctx, h, kernel, stride, padding, dilation, ceil_mode):
        out, idx = F.max_pool2d_with_indices(h.contiguous(memory_format=torch.channels_last), kernel,
                                             stride, padding, dilation, ceil_mode)
        out, idx = out.contiguous(), idx.contiguous()  # (B, C, H', W') each
        ctx.save_for_backward(h, idx)
        ctx.args = (kernel, stride, padding, dilation, ceil_mode)
        ctx.mark_non_differentiable(idx)
        return out, idx

    @staticmethod
    def backward(ctx, g, _):  # differentiable itself: create_graph=True works as with nn.MaxPool2d
        h, idx = ctx.saved_tensors
        return (torch.ops.aten.max_pool2d_with_indices_backward(g, h, *ctx.args, idx),
                None, None, None, None, None)


def pool_args(pool: nn.MaxPool2d) -> tuple:
    """(kernel, stride, padding, dilation, ceil_mode) as the max_pool2d_with_indices ops take them."""
    pair = nn.modules.utils._pair
    return (pair(pool.kernel_size), pair(pool.stride), pair(pool.padding), pair(pool.dilation),
            pool.ceil_mode)


def max_pool2d(pool: nn.MaxPool2d, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pool(h) and its argmax indices, with the numbers and gradients of F.max_pool2d.

    On CPU, PyTorch's NCHW max-pool kernel is scalar and branches on every comparison: 37 ms for
    mnist-cnn's pool at batch 512, and 10 to 13 ms more on SGT's randomly filled X~, whose
    comparisons defeat branch prediction. The channels-last kernel is vectorised, so an NCHW CPU
    input goes through it: about 20 ms on any data, with the two layout copies."""
    args = pool_args(pool)
    if h.device.type == "cpu" and h.dim() == 4 and h.is_contiguous() and h.is_floating_point():
        return _PoolViaChannelsLast.apply(h, *args)
    return F.max_pool2d_with_indices(h, *args)


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d with the same outputs and gradients, faster on CPU (see `max_pool2d`)."""

    def forward(self, h):
        return super().forward(h) if self.return_indices else max_pool2d(self, h)[0]


def _onednn_linear_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_LINEAR = _onednn_linear_available()


def linear_input_grad(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """g (N, out) -> g @ weight (N, in): the input gradient of x -> x @ weight.T + b.

    PyTorch sends this product to MKL's sgemm. oneDNN's matmul does it in about half the time
    here (mnist-cnn's fc1 at batch 512: 3.7 ms against 7.9). On mnist-cnn's two layers it gave
    the same bits as sgemm on every draw tried; on other shapes the two differ by float rounding.
    SGT takes this gradient three times a step (saliency, clean and masked branch) where standard
    training takes it once. Under create_graph (grad mode on in a backward) the differentiable
    g.mm(weight) runs."""
    if (_ONEDNN_LINEAR and g.device.type == "cpu" and g.dtype == torch.float32
            and weight.dtype == torch.float32 and not torch.is_grad_enabled()):
        return torch.ops.mkldnn._linear_pointwise(g, weight.t(), None, "none", [], "")
    return g.mm(weight)


def _wanted(node) -> bool:
    """Whether the running backward will execute `node` (a non-leaf grad_fn): False when, say,
    torch.autograd.grad asks only for an input gradient and `node` leads only to parameters."""
    try:
        return node is not None and torch._C._will_engine_execute_node(node)
    except (AttributeError, RuntimeError):  # a private call: when it is missing, compute it
        return node is not None


class _LinearFn(torch.autograd.Function):
    """F.linear of a 2-D input, with the gradients autograd gives nn.Linear; only the input
    gradient's kernel differs (`linear_input_grad`). The weight comes in as a view, a non-leaf
    node, so that the backward can ask the engine whether its gradient is wanted: a custom
    Function's needs_input_grad is fixed at the forward, and the saliency's backward, which
    wants only the input gradient, would otherwise pay for the weight's (7 to 9 ms on fc1)."""

    @staticmethod
    def forward(ctx, x, weight_view, bias):
        ctx.save_for_backward(x, weight_view)
        ctx.has_bias = bias is not None
        return F.linear(x, weight_view, bias)  # (N, out)

    @staticmethod
    def backward(ctx, g):  # g (N, out); differentiable itself, for create_graph=True
        x, weight = ctx.saved_tensors
        gx = linear_input_grad(g, weight) if ctx.needs_input_grad[0] else None
        # autograd's addmm backward for a weight stored (out, in), as nn.Linear stores it
        gw = g.t().mm(x) if ctx.needs_input_grad[1] and _wanted(ctx.next_functions[1][0]) else None
        gb = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


class Linear(nn.Linear):
    """nn.Linear with the same outputs and gradients, its input gradient faster on CPU."""

    def forward(self, x):
        if x.dim() != 2 or x.device.type != "cpu" or not x.requires_grad:
            return super().forward(x)
        w = self.weight.view_as(self.weight) if self.weight.requires_grad else self.weight
        return _LinearFn.apply(x, w, self.bias)


def mnist_cnn(shape, num_classes):
    """The SGT authors' MNIST network (the PyTorch MNIST example)."""
    c, h, w = shape
    flat = 64 * ((h - 4) // 2) * ((w - 4) // 2)
    return nn.Sequential(
        nn.Conv2d(c, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.ReLU(),
        MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
        Linear(flat, 128), nn.ReLU(), nn.Dropout(0.5),
        Linear(128, num_classes),
    )


def small_cnn(shape, num_classes):
    """A fast CNN for the synthetic task: global max pooling finds a pattern anywhere."""
    c = shape[0]
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def mlp(shape, num_classes):
    c, h, w = shape
    return nn.Sequential(
        nn.Flatten(), nn.Linear(c * h * w, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, num_classes),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        # ReLU modules, not F.relu, and one per use: DeepLift and GuidedBackprop override the
        # gradient of nn.ReLU modules only. They hold no weights, so stored runs load unchanged.
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-form ResNet: 3x3 stem, no max-pool, global average pool."""

    def __init__(self, in_ch, widths, blocks, num_classes):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        layers, cin = [], widths[0]
        for i, (wd, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, wd, 2 if (i > 0 and j == 0) else 1))
                cin = wd
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet20(shape, num_classes):
    return ResNet(shape[0], (16, 32, 64), (3, 3, 3), num_classes)


def resnet18(shape, num_classes):
    return ResNet(shape[0], (64, 128, 256, 512), (2, 2, 2, 2), num_classes)


MODELS = {
    "mnist-cnn": mnist_cnn,
    "small-cnn": small_cnn,
    "mlp": mlp,
    "resnet20": resnet20,
    "resnet18": resnet18,
}


def freeze(model: nn.Module) -> nn.Module:
    """`model` made ready for work that needs input gradients only (saliency, attacks), in place:
    parameters frozen, so autograd neither tracks nor saves what their gradients would need, and
    the channels-last layout, in which oneDNN's CPU convolutions run faster (mnist-cnn: forward
    ~1.4x, DeepLift ~1.5x, PGD ~1.2x); results agree with the default layout to float rounding."""
    return model.requires_grad_(False).to(memory_format=torch.channels_last)


def build(name: str, dataset: str) -> nn.Module:
    """Model `name` for `dataset`, with normalisation as layer 0: Sequential(Normalize, net)."""
    from .data import get_dataset

    if name not in MODELS:
        raise unknown_name("model", name, MODELS)
    spec = get_dataset(dataset)
    return nn.Sequential(Normalize(spec.mean, spec.std), MODELS[name](spec.shape, spec.num_classes))
