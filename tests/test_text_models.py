"""Token models and SGT on tokens: padding as packed sequences honour it, the shared trunk, the
embedding dropout, and which tokens SGT may mask."""

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from sgtool.cli import app
from sgtool.config import make_config
from sgtool.errors import UsageError
from sgtool.models import build
from sgtool.sgt import SGTLoss
from tests.conftest import exited_cleanly

runner = CliRunner()


def test_sgt_masks_document_tokens_only_on_a_pair_task(tmp_path):
    torch.manual_seed(0)
    model = build("bilstm", "synthetic-text", vocab_size=40, width=8).train()
    ids = torch.tensor([[5, 6, 2, 7, 8, 9, 10, 0], [11, 2, 12, 13, 14, 15, 16, 17]])
    valid = torch.tensor([[False, False, False, True, True, True, True, False],
                          [False, False, True, True, True, True, True, True]])  # query and <sep> first
    seen = []
    real = model.forward_embedded
    model.forward_embedded = lambda e, m: seen.append(e.detach().clone()) or real(e, m)
    loss = SGTLoss(mask_frac=0.5, layout="tokens")(model, ids, torch.tensor([0, 1]), valid)
    loss.backward()
    clean, masked = model.embed(ids).detach(), seen[-1]
    changed = (masked != clean).any(-1)  # (B, L)
    assert not (changed & ~valid).any()  # the query, <sep> and padding never change
    assert changed.sum(1).tolist() == [2, 3]  # floor(0.5 x 4) and floor(0.5 x 6) document tokens


def test_bilstm_honours_padding_as_packed_sequences_do():
    """The BiLSTM's outputs on real tokens equal a packed bidirectional LSTM's with the same
    weights, and do not depend on what (or how much) padding follows."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    model = build("bilstm", "synthetic-text", vocab_size=30, width=6).eval()
    ref = nn.LSTM(model.emb.embedding_dim, 6, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(ref, name).copy_(getattr(model.fwd, name))
            getattr(ref, name + "_reverse").copy_(getattr(model.bwd, name))
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    e, mask = model.embed(ids), ids != 0
    seen = []
    model.drop.register_forward_hook(lambda m, i, o: seen.append(o))
    model.forward_embedded(e, mask)
    packed, _ = ref(pack_padded_sequence(e, mask.sum(1), batch_first=True, enforce_sorted=False))
    want, _ = pad_packed_sequence(packed, batch_first=True, total_length=5)
    torch.testing.assert_close(seen[0][mask], want[mask])
    longer = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
    torch.testing.assert_close(model(longer), model(ids))


@pytest.mark.parametrize("name, embed_dropout", [("bilstm", None), ("textcnn", None), ("bilstm", 0.3)])
def test_sgt_shares_the_token_models_trunk_with_the_same_numbers(name, embed_dropout, monkeypatch):
    """SGT's eval-mode saliency and its train-mode loss share one pass through the trunk (the
    LSTMs, the convolutions): the loss, its parts and every parameter gradient equal those of two
    whole passes, dropout active, with one trunk pass less. Embedding dropout acts on the input
    (X is the noisy embedding), so it leaves the trunk shareable."""
    import copy

    import sgtool.sgt as sgt

    torch.manual_seed(0)
    model = build(name, "synthetic-text", vocab_size=40, width=8, embed_dropout=embed_dropout).train()
    ids = torch.randint(3, 40, (6, 12))
    ids[2, 7:] = 0
    ids[4, 9:] = 0  # padding at the end
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    calls = []
    trunk = model.fwd if name == "bilstm" else model.convs[0]
    trunk.register_forward_hook(lambda *a: calls.append(1))

    def step(shared):
        monkeypatch.setattr(sgt, "has_trunk", lambda b: shared)
        m = copy.deepcopy(model)
        calls.clear()
        torch.manual_seed(1)  # the same dropout draws
        loss = SGTLoss(mask_frac=0.5, layout="tokens")(m, ids, y)
        loss.backward()
        assert m.training
        return loss, len(calls), {k: p.grad for k, p in m.named_parameters() if p.grad is not None}

    (a, n_a, ga), (b, n_b, gb) = step(True), step(False)
    assert (n_a, n_b) == (2, 3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a.parts, b.parts, rtol=0, atol=0)
    assert ga.keys() == gb.keys() and len(ga) > 3
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=0, atol=0, msg=k)


def test_embed_dropout_noises_the_word_vectors_in_training_only(tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(3, 40, (4, 30))
    model = build("bilstm", "synthetic-text", vocab_size=40, width=8, embed_dropout=0.5)
    clean = model.emb(ids)
    noisy = model.train().embed(ids)
    dropped = noisy == 0
    assert 0.3 < dropped.float().mean() < 0.7  # about half of the (token, dim) entries
    torch.testing.assert_close(noisy[~dropped], 2 * clean[~dropped])  # the rest scaled by 1 / (1 - p)
    torch.testing.assert_close(model.eval().embed(ids), clean, rtol=0, atol=0)
    # p = 0 (the default) draws nothing: training consumes the random stream exactly as before
    plain = build("bilstm", "synthetic-text", vocab_size=40, width=8).train()
    state = torch.get_rng_state()
    torch.testing.assert_close(plain.embed(ids), plain.emb(ids), rtol=0, atol=0)
    assert torch.equal(state, torch.get_rng_state())
    # the config: text only, [0, 1), and 0 hashes as if it were not given
    from sgtool.config import config_hash

    base = config_hash(make_config(dataset="synthetic-text"))
    assert config_hash(make_config(dataset="synthetic-text", embed_dropout=0.0)) == base
    assert config_hash(make_config(dataset="synthetic-text", embed_dropout=0.2)) != base
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(UsageError, match=r"--embed-dropout must be in \[0, 1\)"):
            make_config(dataset="synthetic-text", embed_dropout=bad)
    r = runner.invoke(app, ["train", "--dataset", "synthetic-text", "--embed-dropout", "1.5",
                            "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code != 0 and "--embed-dropout must be in [0, 1), got 1.5" in r.output
    assert exited_cleanly(r) and not (tmp_path / "runs").exists()
