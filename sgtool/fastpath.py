"""CPU-only speed-ups, behind one switch. Everything here computes what plain PyTorch computes
(bit for bit where stated, else to float rounding, and tested either way); it is only faster on a
CPU. Nothing here runs on another device, another dtype, under autocast, or on layers it does
not recognise: those take plain autograd.

The switch: `active(x)` is true for a float32 CPU tensor outside autocast while the module-level
ENABLED holds (env SGTOOL_FASTPATH=0 or `set_enabled(False)` turns it off). Each piece asks it:

- `MaxPool2d` / `max_pool2d`: nn.MaxPool2d's numbers through the vectorised channels-last kernel;
- `Linear` / `linear_input_grad`: nn.Linear's numbers, with the input gradient through oneDNN;
- the trunk sharing (`eval_pass`, `shared_pass`): SGT's eval-mode saliency and train-mode forward
  share the model's leading mode-free layers, and the saliency's backward through the leading
  convolutions, ReLUs and max-pools is finished by hand (`saliency_start`, `conv_input_grad`).
  It applies to an nn.Sequential (sgtool's image models, or anyone's) whose trunk it can read;
  `sgt.saliency_pass` falls back to the plain passes for everything else.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .nnutil import Normalize, label_log_prob

ENABLED = os.environ.get("SGTOOL_FASTPATH", "1") != "0"


def set_enabled(on: bool) -> None:
    """Turn every CPU speed-up on or off (for A/B checks; the numbers must not change)."""
    global ENABLED
    ENABLED = bool(on)


def active(x: torch.Tensor) -> bool:
    """Whether the speed-ups may run on x: the switch is on, x is a float32 CPU tensor, and no
    autocast is active (under autocast the layers' outputs change dtype, which they do not handle)."""
    return (ENABLED and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu"))


# --------------------------------------------------------------------------- max-pool


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

    On CPU, PyTorch's NCHW max-pool kernel is scalar and branches on every comparison, and SGT's
    randomly filled X~ defeats its branch prediction. The channels-last kernel is vectorised and
    costs the same on any data, so an NCHW CPU input goes through it, two layout copies included
    (benchmarks/train_speed.py measures the step)."""
    args = pool_args(pool)
    if active(h) and h.dim() == 4 and h.is_contiguous():
        return _PoolViaChannelsLast.apply(h, *args)
    return F.max_pool2d_with_indices(h, *args)


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d with the same outputs and gradients, faster on CPU (see `max_pool2d`)."""

    def forward(self, h):
        return super().forward(h) if self.return_indices else max_pool2d(self, h)[0]


# --------------------------------------------------------------------------- linear


def _onednn_linear_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_LINEAR = _onednn_linear_available()


def linear_input_grad(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """g (N, out) -> g @ weight (N, in): the input gradient of x -> x @ weight.T + b.

    PyTorch sends this product to MKL's sgemm; oneDNN's matmul was about twice as fast for
    mnist-cnn's fc1 where it was tuned. On mnist-cnn's two layers it gave the same bits as sgemm
    on every draw tried; on other shapes the two differ by float rounding.
    SGT takes this gradient three times a step (saliency, clean and masked branch) where standard
    training takes it once. Under create_graph (grad mode on in a backward) the differentiable
    g.mm(weight) runs."""
    if (_ONEDNN_LINEAR and active(g) and weight.dtype == torch.float32 and not torch.is_grad_enabled()):
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
    wants only the input gradient, would otherwise pay for the weight's, as costly as the input's."""

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
    """nn.Linear with the same outputs and gradients, its input gradient faster on CPU. Anything
    but a 2-D float32 CPU input that requires grad, outside autocast, takes nn.Linear's path."""

    def forward(self, x):
        if x.dim() != 2 or not x.requires_grad or not active(x) or self.weight.dtype != torch.float32:
            return super().forward(x)
        w = self.weight.view_as(self.weight) if self.weight.requires_grad else self.weight
        return _LinearFn.apply(x, w, self.bias)


# --------------------------------------------------------------------------- trunk sharing

# Layers that compute the same thing in train and eval mode. A model's leading run of them (its
# "trunk") gives the same activations in both modes, so the eval-mode saliency pass and the
# train-mode forward can share it.
MODE_FREE = (Normalize, nn.Conv1d, nn.Conv2d, nn.Linear, nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid,
             nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveMaxPool2d,
             nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity)


def split_trunk(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(trunk, head): the model's layers (nested Sequentials flattened) cut before the first
    layer that is not mode-free (Dropout, BatchNorm, any custom module). Running trunk then
    head is running the model."""
    flat: list[nn.Module] = []

    def walk(m):
        if type(m) is nn.Sequential:
            for child in m:
                walk(child)
        else:
            flat.append(m)

    walk(model)
    i = next((j for j, m in enumerate(flat) if not isinstance(m, MODE_FREE)), len(flat))
    return flat[:i], flat[i:]


def applies(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the trunk-sharing passes serve this model and batch: the switch holds for x, and
    the model is an nn.Sequential that opens with at least one mode-free layer. Wrapped,
    compiled or custom models (RNNs, embeddings, ...) get the plain passes."""
    return active(x) and type(model) is nn.Sequential and bool(split_trunk(model)[0])


def _run(layers: list[nn.Module], h: torch.Tensor) -> torch.Tensor:
    for m in layers:
        h = m(h)
    return h


def conv_input_grad(conv: nn.Conv2d, g: torch.Tensor, in_hw: tuple[int, int]) -> torch.Tensor:
    """(B, C_in, H, W): the gradient of <g, conv(x)> with respect to x for g (B, C_out, H', W'),
    i.e. conv's transposed convolution, as one matrix product and kh*kw strided adds (a col2im).
    oneDNN's own input gradient is slow when the input has few channels (mnist-cnn's first layer:
    about 2.5 times this one's time). It equals autograd's to float rounding."""
    b, c_out, ho, wo = g.shape
    kh, kw = conv.kernel_size
    (sh, sw), (dh, dw), (ph, pw) = conv.stride, conv.dilation, conv.padding
    h, w = in_hw
    wt = conv.weight.detach().reshape(c_out, -1).t()  # (C_in*kh*kw, C_out)
    cols = torch.matmul(wt, g.reshape(b, c_out, ho * wo)).view(b, conv.in_channels, kh, kw, ho, wo)
    out = g.new_zeros(b, conv.in_channels, h + 2 * ph, w + 2 * pw)  # the padded input
    for i in range(kh):  # a loop over the kernel's taps, not over samples
        for j in range(kw):
            out[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw] += cols[:, :, i, j]
    return out[:, :, ph: ph + h, pw: pw + w]


def _plain_conv(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros"
            and isinstance(m.padding, tuple))


def _plain_pool(m: nn.Module | None) -> bool:
    return type(m) in (nn.MaxPool2d, MaxPool2d) and not m.return_indices


def _conv_vjp(conv: nn.Conv2d, inp: torch.Tensor):
    """g (B, C_out, H', W') -> d<g, conv(inp)>/d inp: the data half of the convolution backward,
    the call autograd itself makes when only the input gradient is wanted."""
    w = conv.weight.detach()
    return lambda g: torch.ops.aten.convolution_backward(
        g, inp, w, None, conv.stride, conv.padding, conv.dilation, False, (0, 0), 1,
        (True, False, False))[0]


def _pool_vjp(pool: nn.MaxPool2d, inp: torch.Tensor, idx: torch.Tensor):
    """g (B, C, h, w) at the pooled output -> (B, C, H, W) at its input, by the argmax indices."""
    args = pool_args(pool)
    return lambda g: torch.ops.aten.max_pool2d_with_indices_backward(g, inp, *args, idx)


def _relu_vjp(out: torch.Tensor):
    """g -> g where the ReLU's output is > 0, else 0: what autograd's ReluBackward does."""
    return lambda g: torch.ops.aten.threshold_backward(g, out, 0)


def saliency_start(trunk: list[nn.Module], x: torch.Tensor):
    """(h, rest, to_input): where the saliency's autograd backward may stop, and how to finish
    it by hand. Both passes use it, so SGT and ASGT both get it.

    A trunk that opens with [Normalize,] Conv2d (mnist-cnn, small-cnn, the ResNets' stem) runs
    that convolution, then any run of plain Conv2d, ReLU and MaxPool2d layers after it, here:
    with their graph, which the loss's backward uses, and a record of what each layer's input
    gradient needs. h is the last of these outputs and rest the trunk after it. to_input maps
    d/dh to d/dx with the same kernels autograd calls, except in two places:
    - the first convolution's input is the constant x, so autograd never takes its input
      gradient; `conv_input_grad` does, one matrix product and a col2im, because oneDNN's is slow
      for few input channels;
    - a ReLU followed by a max-pool applies its mask at the pooled size. The pooled value is the
      ReLU output at the argmax, so zeroing the pooled gradient where it is <= 0 zeroes exactly
      what the ReLU's own backward would: the same numbers, on 4x fewer values on mnist-cnn.
    Any other trunk gives h = x itself, requiring grad, and autograd does all the work."""
    i, pre, std = 0, x.detach(), None
    if trunk and isinstance(trunk[0], Normalize):
        pre, std, i = trunk[0](pre), trunk[0].std, 1  # (B, C, H, W), std (1, C, 1, 1)
    if i >= len(trunk) or not _plain_conv(trunk[i]):
        xr = x.detach().requires_grad_(True)
        return xr, trunk, lambda g: g
    conv, hw = trunk[i], tuple(x.shape[-2:])
    h = conv(pre)  # (B, C_out, H', W')
    vjps = []  # the input-gradient step of each layer after the first convolution, in order
    i += 1
    while i < len(trunk):
        m = trunk[i]
        nxt = trunk[i + 1] if i + 1 < len(trunk) else None
        if type(m) is nn.ReLU and _plain_pool(nxt):
            r = m(h)
            h, idx = max_pool2d(nxt, r)
            relu, pool = _relu_vjp(h.detach()), _pool_vjp(nxt, r.detach(), idx)
            vjps.append(lambda g, relu=relu, pool=pool: pool(relu(g)))
            i += 2
            continue
        if type(m) is nn.ReLU:
            h = m(h)
            vjps.append(_relu_vjp(h.detach()))
        elif _plain_pool(m):
            inp = h
            h, idx = max_pool2d(m, inp)
            vjps.append(_pool_vjp(m, inp.detach(), idx))
        elif _plain_conv(m):
            inp = h
            h = m(inp)
            vjps.append(_conv_vjp(m, inp.detach()))
        else:
            break
        i += 1
    if not h.requires_grad:  # a frozen prefix: h is then where the graph starts
        h.requires_grad_(True)

    def to_input(g: torch.Tensor) -> torch.Tensor:
        for vjp in reversed(vjps):
            g = vjp(g)
        gx = conv_input_grad(conv, g, hw)
        return gx / std if std is not None else gx

    return h, trunk[i:], to_input


def label_grad(logits: torch.Tensor, y: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """d sum_i log p(y_i | x_i) / d at, keeping the graph for the loss's own backward."""
    return torch.autograd.grad(label_log_prob(logits, y), at, retain_graph=True)[0]


def eval_pass(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode saliency with a shared trunk: (g, logits), g = d log p(y|x)/dx with the
    model in eval mode (the authors' saliency, dropout off) and the train-mode logits of x,
    sharing one forward pass of the model's mode-free trunk (on mnist-cnn: both convolutions and
    the max-pool, nearly all of its cost). Only the head runs twice, once per mode. The numbers
    are those of a separate eval pass followed by a train-mode forward (tested)."""
    trunk, head = split_trunk(model)
    start, rest, to_input = saliency_start(trunk, x)
    h = _run(rest, start)  # (B, ...) shared by both modes, with its graph
    modes = [m.training for m in head]
    for m in head:
        m.eval()
    logits_eval = _run(head, h)  # (B, classes)
    for m, mode in zip(head, modes):
        m.train(mode)
    return to_input(label_grad(logits_eval, y, start)), _run(head, h)


def shared_forward(model, x: torch.Tensor):
    """(start, logits, to_input): shared_pass's train-mode forward, before its saliency backward
    `to_input(label_grad(logits, y, start))`."""
    trunk, head = split_trunk(model)
    start, rest, to_input = saliency_start(trunk, x)
    return start, _run(head, _run(rest, start)), to_input  # logits (B, classes), train mode


def shared_pass(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The saliency from the training forward pass itself (dropout active), with the leading
    convolutions finished by hand: (g, logits)."""
    start, logits, to_input = shared_forward(model, x)
    return to_input(label_grad(logits, y, start)), logits


PASSES = {"eval": eval_pass, "shared": shared_pass}
