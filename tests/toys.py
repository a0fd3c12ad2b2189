"""Small models the tests use as "anyone's model": not sgtool's, and simple enough to compute by hand."""

import torch
import torch.nn as nn


class ToyTokens(nn.Module):
    """A token model: an embedding, then logits = sum_l W_l e_l over the real tokens (+ b).
    Per-position weights make every token's gradient different, so the ranking is known."""

    pad_id, unk_id, first_word_id = 0, 1, 2

    def __init__(self, vocab=12, dim=3, length=6, classes=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(vocab, dim)
        self.w = nn.Parameter(torch.randn(classes, length, dim, generator=g))
        self.b = nn.Parameter(torch.randn(classes, generator=g) * 0.1)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(vocab, dim, generator=g))
        self.vocab_size = vocab

    def embed(self, ids):  # (B, L) -> (B, L, D)
        return self.emb(ids)

    def forward_embedded(self, e, mask):  # (B, L, D), (B, L) -> (B, classes)
        return torch.einsum("bld,cld->bc", e * mask[..., None].to(e.dtype), self.w[:, : e.shape[1]]) + self.b

    def forward(self, ids):
        return self.forward_embedded(self.embed(ids), ids != self.pad_id)


class ToySeries(nn.Module):
    """A series model: logits = <W_c, x> + b_c over (T, F) cells."""

    def __init__(self, t=4, f=3, classes=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(classes, t, f, generator=g))
        self.b = nn.Parameter(torch.randn(classes, generator=g) * 0.1)

    def forward(self, x):  # (B, T, F)
        return torch.einsum("btf,ctf->bc", x, self.w) + self.b


class ConvNet(nn.Module):
    """An image classifier written as a class (not an nn.Sequential): fastpath never applies."""

    def __init__(self, c=1, classes=3, batchnorm=False, dropout=0.0):
        super().__init__()
        self.conv = nn.Conv2d(c, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if batchnorm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(h.amax(dim=(2, 3))))


def conv_factory(shape, num_classes):
    """A `--model tests.toys:conv_factory` factory: (input_shape, num_classes) -> nn.Module."""
    return ConvNet(shape[0], num_classes)


def not_a_module(shape, num_classes):
    return "a string"


class Linear2x2(nn.Module):
    """logits = W @ x.flatten() for a 1x2x2 image: the input gradient is known in closed form."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x):
        return x.flatten(1) @ self.w.T


def wrong_logits(shape, num_classes):
    """A factory whose model returns 4 more logits than the data has classes."""
    c, h, w = shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes + 4))


def exits(shape, num_classes):
    """A factory that calls sys.exit(0) instead of returning a model."""
    raise SystemExit(0)


class GoesNaN(nn.Module):
    """Finite logits for the first `after` training forwards, then NaN: a training that diverges."""

    def __init__(self, features, num_classes, after):
        super().__init__()
        self.fc = nn.Linear(features, num_classes)
        self.after, self.calls = after, 0

    def forward(self, x):
        out = self.fc(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return out * float("nan")
        return out


def nan_in_epoch_two(shape, num_classes):
    """Diverges on the first batch of the second epoch of a one-batch-per-epoch run."""
    c, h, w = shape
    return GoesNaN(c * h * w, num_classes, after=1)
