"""Series models: factory((T, F), num_classes, width=None, heads=None) -> nn.Module mapping
(B, T, F) to logits. The architectures of the time-series benchmark (Ismail et al. 2020,
Scripts/Models/), with one change everywhere: they end in logits. The benchmark's models end in
softmax and are trained with cross-entropy, which applies a second softmax; sgtool's do not.

    lstm         1-layer LSTM, the last step's hidden state -> linear (benchmark: hidden 5)
    lstm-ica     LSTM with input-cell attention (Ismail et al. 2019): r = 10 attention hops of
                 d_a = 50 over the steps so far, averaged, feed the LSTM cell
    tcn          weight-normalised dilated causal convolutions, kernel 4, dilations 1, 2, 4,
                 dropout 0.1, residual blocks, max-pool over time -> linear
    transformer  d_model = the feature count, 6 pre-norm layers, 5 heads, d_ff 400, causal
                 attention, sinusoidal positions, max-pool over time -> linear
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UsageError
from .registry import register_model

DROPOUT = 0.1


class LSTMClassifier(nn.Module):
    def __init__(self, features: int, num_classes: int, hidden: int):
        super().__init__()
        self.drop_in, self.drop_out = nn.Dropout(DROPOUT), nn.Dropout(DROPOUT)
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):  # (B, T, F)
        out, _ = self.lstm(self.drop_in(x))  # (B, T, H)
        return self.fc(self.drop_out(out[:, -1]))


class InputCellAttention(nn.Module):
    """For every step t: A_t = softmax over the steps j <= t of W2 tanh(W1 x_j) (r hops), and
    M_t = the mean over hops of sum_j A_t[j] x_j. The scores of step j do not depend on t, so all
    T summaries come from one causally masked softmax: (B, T, F) -> (B, T, F)."""

    def __init__(self, features: int, r: int = 10, d_a: int = 50):
        super().__init__()
        self.w1 = nn.Linear(features, d_a, bias=False)
        self.w2 = nn.Linear(d_a, r, bias=False)

    def forward(self, x):
        t = x.shape[1]
        s = self.w2(torch.tanh(self.w1(x)))  # (B, T_j, r)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()  # [t, j]: j <= t
        a = s[:, None].masked_fill(~causal[None, :, :, None], float("-inf")).softmax(dim=2)  # (B, T_t, T_j, r)
        return torch.einsum("btjr,bjf->btf", a, x) / s.shape[-1]


class LSTMICA(nn.Module):
    """The benchmark's LSTMWithInputCellAttention: the cell's input at step t is M_t, so the
    recurrence is an ordinary LSTM over the attention summaries."""

    def __init__(self, features: int, num_classes: int, hidden: int, r: int = 10, d_a: int = 50):
        super().__init__()
        self.drop_in, self.drop_out = nn.Dropout(DROPOUT), nn.Dropout(DROPOUT)
        self.attention = InputCellAttention(features, r, d_a)
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)
        for _name, p in self.named_parameters():  # the benchmark's init: xavier, zero biases
            if p.dim() >= 2:
                nn.init.xavier_uniform_(p)
            else:
                nn.init.zeros_(p)

    def forward(self, x):
        out, _ = self.lstm(self.attention(self.drop_in(x)))
        return self.fc(self.drop_out(out[:, -1]))


class CausalConv(nn.Module):
    """A weight-normalised dilated Conv1d padded on the left only: output t sees inputs <= t."""

    def __init__(self, cin, cout, kernel, dilation):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(cin, cout, kernel, dilation=dilation))

    def forward(self, x):  # (B, C, T)
        return self.conv(F.pad(x, (self.pad, 0)))


class TemporalBlock(nn.Module):
    def __init__(self, cin, cout, kernel, dilation):
        super().__init__()
        self.net = nn.Sequential(CausalConv(cin, cout, kernel, dilation), nn.ReLU(), nn.Dropout(DROPOUT),
                                 CausalConv(cout, cout, kernel, dilation), nn.ReLU(), nn.Dropout(DROPOUT))
        self.res = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.net(x) + self.res(x))


class TCN(nn.Module):
    def __init__(self, features, num_classes, width, kernel=4, levels=3):
        super().__init__()
        chans = [features] + [width] * levels
        self.blocks = nn.Sequential(*[TemporalBlock(chans[i], chans[i + 1], kernel, 2 ** i) for i in range(levels)])
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):  # (B, T, F)
        h = self.blocks(x.transpose(1, 2))  # (B, C, T)
        return self.fc(h.amax(dim=2))  # max-pool over time


def sinusoid(t: int, d: int) -> torch.Tensor:
    """The standard sinusoidal positions (Vaswani et al.): (T, d). The benchmark's own variant
    used a slightly different exponent; sgtool uses the standard one."""
    pos = torch.arange(t, dtype=torch.float32)[:, None]
    i = torch.arange(0, d, 2, dtype=torch.float32)
    angle = pos / torch.pow(10000.0, i / d)
    pe = torch.zeros(t, d)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d // 2])
    return pe


class SeriesTransformer(nn.Module):
    """The raw features are d_model (no input embedding), scaled by sqrt(d) plus positions;
    pre-norm encoder layers with causal attention; max-pool over time."""

    def __init__(self, t, features, num_classes, heads=5, layers=6, d_ff=400):
        super().__init__()
        self.scale = math.sqrt(features)
        self.register_buffer("pe", sinusoid(t, features), persistent=False)
        self.drop = nn.Dropout(DROPOUT)
        layer = nn.TransformerEncoderLayer(features, heads, d_ff, DROPOUT, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(features), enable_nested_tensor=False)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(t), persistent=False)
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x):  # (B, T, F)
        t = x.shape[1]
        h = self.drop(x * self.scale + self.pe[:t])
        h = self.encoder(h, mask=self.causal[:t, :t], is_causal=True)
        return self.fc(h.amax(dim=1))


def lstm(shape, num_classes, width=None):
    return LSTMClassifier(shape[1], num_classes, width or 32)


def lstm_ica(shape, num_classes, width=None):
    return LSTMICA(shape[1], num_classes, width or 32)


def tcn(shape, num_classes, width=None):
    return TCN(shape[1], num_classes, width or 32)


def transformer(shape, num_classes, width=None, heads=None):
    t, f = shape
    heads = heads or 5
    if f % heads:
        divisors = [h for h in range(1, f + 1) if f % h == 0 and h <= 16]
        raise UsageError(f"transformer: {heads} heads do not divide the {f} features (d_model = features); "
                         f"pass --heads with one of {', '.join(map(str, divisors))}")
    return SeriesTransformer(t, f, num_classes, heads=heads)


for name, fn in [("lstm", lstm), ("lstm-ica", lstm_ica), ("tcn", tcn), ("transformer", transformer)]:
    register_model(name, fn, "series")

