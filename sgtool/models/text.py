"""Text models: factory((L,), num_classes, vocab_size, vectors, ...) -> nn.Module over token ids.

Every token model exposes its embedding, which is what SGT and the saliency methods work on
(sgtool.layout's token layout): `embed(ids) -> (B, L, D)`, `forward_embedded(e, mask) -> logits`
with mask (B, L) true on real tokens, `forward(ids)`, and `pad_id`, `unk_id`, `first_word_id`,
`vocab_size`.

    bilstm   embedding -> BiLSTM (1 layer, 128 per direction, as ERASER's GloVe baseline) ->
             pooling -> feed-forward (128, ReLU, dropout 0.2) -> logits. Padding is honoured
             as packed sequences would honour it, without packing them (PyTorch's packed LSTM
             backward is some 70 times slower on a CPU): padding sits at the end, so the forward
             direction never sees it, and the backward direction runs over each document
             reversed within its own length. Pooling sees real tokens only: `attention`
             (additive, with a learned query vector, as ERASER's baseline; the default) or `max`.
    textcnn  embedding -> convolutions of widths 3, 4, 5 (100 filters each) -> max over the real
             tokens -> dropout 0.5 -> logits (Kim 2014): a cheap second architecture.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UsageError
from .registry import register_model

POOLINGS = ("attention", "max")


class TokenModel(nn.Module):
    """What every token model shares: the embedding, its special ids, and forward(ids)."""

    def __init__(self, vocab_size, vectors=None, dim=50, freeze=False, pad_id=0, unk_id=1, first_word_id=3,
                 embed_dropout=0.0):
        super().__init__()
        if vectors is not None:
            vocab_size, dim = vectors.shape
        self.emb = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        if vectors is not None:
            with torch.no_grad():
                self.emb.weight.copy_(vectors)
        self.emb.weight.requires_grad_(not freeze)
        self.vocab_size, self.pad_id, self.unk_id, self.first_word_id = vocab_size, pad_id, unk_id, first_word_id
        self.embed_drop = nn.Dropout(embed_dropout)

    def embed(self, ids):  # (B, L) -> (B, L, D)
        """The word vectors, with dropout in training (ERASER's GloVe baseline drops 0.2). It acts
        here, on the input, and not in the trunk: the noisy embedding is then SGT's X, whose
        saliency is taken in eval mode and whose trunk pass stays shared (sgt.trunk_pass)."""
        e = self.emb(ids)
        return self.embed_drop(e) if self.embed_drop.p > 0 else e  # p = 0 draws nothing: runs as before

    def forward(self, ids):
        return self.forward_embedded(self.embed(ids), ids != self.pad_id)


def reverse_within(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) gather indices that reverse each row's first n_b positions (n_b its real tokens)
    and leave the padding after them in place."""
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    n = mask.sum(1, keepdim=True)
    return torch.where(pos < n, n - 1 - pos, pos)


class BiLSTM(TokenModel):
    def __init__(self, vocab_size, num_classes, hidden=128, pooling="attention", **kw):
        super().__init__(vocab_size, **kw)
        if pooling not in POOLINGS:
            raise UsageError(f"unknown pooling '{pooling}'; choose from: {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.fwd = nn.LSTM(self.emb.embedding_dim, hidden, batch_first=True)
        self.bwd = nn.LSTM(self.emb.embedding_dim, hidden, batch_first=True)
        self.drop = nn.Dropout(0.2)
        if pooling == "attention":  # v^T tanh(W h_t + U q), q a learned vector: ERASER's baseline
            self.att_h = nn.Linear(2 * hidden, 2 * hidden, bias=False)
            self.att_q = nn.Parameter(torch.randn(2 * hidden) * 0.1)
            self.att_v = nn.Linear(2 * hidden, 1, bias=False)
        self.ff = nn.Sequential(nn.Linear(2 * hidden, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, num_classes))

    def forward_embedded(self, e, mask):  # (B, L, D), (B, L): real tokens first, then padding
        return self.forward_head(self.forward_trunk(e, mask), mask)

    def forward_trunk(self, e, mask):  # (B, L, D), (B, L) -> (B, L, 2H)
        """The two LSTMs: no layer here depends on the mode, so SGT's eval-mode saliency and
        its train-mode loss share one pass through them (sgt.trunk_pass)."""
        rev = reverse_within(mask)  # (B, L): each document's tokens in reverse, padding in place
        back = lambda t: t.gather(1, rev[:, :, None].expand_as(t))  # noqa: E731 (an involution)
        h_fwd, _ = self.fwd(e)  # (B, L, H): step t sees tokens <= t, never the padding after
        h_bwd, _ = self.bwd(back(e))  # the reversed document: step t sees tokens >= t of the original
        return torch.cat([h_fwd, back(h_bwd)], -1)

    def forward_head(self, h, mask):  # (B, L, 2H), (B, L) -> (B, classes): dropout, pooling, feed-forward
        h = self.drop(h)
        real = mask[:, :, None]
        if self.pooling == "max":
            pooled = h.masked_fill(~real, float("-inf")).amax(1)
        else:
            scores = self.att_v(torch.tanh(self.att_h(h) + self.att_q)).masked_fill(~real, float("-inf"))
            pooled = (scores.softmax(1) * h).sum(1)
        return self.ff(pooled)


class TextCNN(TokenModel):
    def __init__(self, vocab_size, num_classes, filters=100, widths=(3, 4, 5), **kw):
        super().__init__(vocab_size, **kw)
        d = self.emb.embedding_dim
        self.convs = nn.ModuleList(nn.Conv1d(d, filters, w, padding=w - 1) for w in widths)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(filters * len(widths), num_classes)

    def forward_embedded(self, e, mask):
        return self.forward_head(self.forward_trunk(e, mask), mask)

    def forward_trunk(self, e, mask):  # (B, L, D), (B, L) -> (B, filters x widths); mode-free
        x = (e * mask[..., None]).transpose(1, 2)  # (B, D, L)
        feats = []
        for conv in self.convs:
            h = F.relu(conv(x))[..., : e.shape[1]]  # (B, filters, L): each output sees tokens <= t
            feats.append(h.masked_fill(~mask[:, None, :], float("-inf")).amax(2))
        return torch.cat(feats, 1)

    def forward_head(self, h, mask):
        return self.fc(self.drop(h))


def _kw(vectors, freeze_embeddings, pad_id, unk_id, first_word_id, embed_dropout, width_dim=50):
    return dict(vectors=vectors, freeze=bool(freeze_embeddings), pad_id=pad_id, unk_id=unk_id,
                first_word_id=first_word_id, dim=width_dim, embed_dropout=embed_dropout or 0.0)


def bilstm(shape, num_classes, vocab_size=None, vectors=None, width=None, pooling=None, freeze_embeddings=False,
           pad_id=0, unk_id=1, first_word_id=3, embed_dropout=None):
    if vocab_size is None and vectors is None:
        raise UsageError("bilstm needs a text dataset's vocabulary")
    return BiLSTM(vocab_size, num_classes, hidden=width or 128, pooling=pooling or "attention",
                  **_kw(vectors, freeze_embeddings, pad_id, unk_id, first_word_id, embed_dropout))


def textcnn(shape, num_classes, vocab_size=None, vectors=None, width=None, freeze_embeddings=False, pad_id=0,
            unk_id=1, first_word_id=3, embed_dropout=None, **_):
    if vocab_size is None and vectors is None:
        raise UsageError("textcnn needs a text dataset's vocabulary")
    return TextCNN(vocab_size, num_classes, filters=width or 100,
                   **_kw(vectors, freeze_embeddings, pad_id, unk_id, first_word_id, embed_dropout))


register_model("bilstm", bilstm, "tokens")
register_model("textcnn", textcnn, "tokens")

