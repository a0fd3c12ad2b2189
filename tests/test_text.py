"""Text: the ERASER loader on files the tests write (Movies-style, FEVER-style with a query, the
docs.jsonl variant), the vocabulary and padding, the GloVe reader, SGT on tokens, ERASER's metrics
against hand computations, the results export, the CLI, and the real Movies files."""

import gzip
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from sgtool.cli import app
from sgtool.config import make_config, mask_eval_config
from sgtool.data import get_dataset, load
from sgtool.data.glove import read_glove
from sgtool.data.text import make_synthetic_text
from sgtool.errors import SgtoolError, UsageError
from sgtool.evaluate.eraser import auprc, delete, faithfulness, iou_f1, plausibility, top_tokens
from sgtool.layout import LAYOUTS
from sgtool.models import MODEL_LAYOUTS, MODELS, build, register_model
from sgtool.saliency import SALIENCY
from sgtool.sgt import SGTLoss
from sgtool.train import train_run
from tests.conftest import exited_cleanly, train_standard_and_sgt

runner = CliRunner()
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_eraser(root: Path, name: str, docs: dict, splits: dict, jsonl_docs=False, tar=False) -> Path:
    """An ERASER dataset in the benchmark's layout: docs/<docid> (or docs.jsonl) and split files.
    docs: docid -> list of sentences (strings); splits: split -> list of annotation dicts."""
    d = root / "eraser" / name
    (d / "docs").mkdir(parents=True) if not jsonl_docs else d.mkdir(parents=True)
    for docid, sentences in docs.items():
        if jsonl_docs:
            with open(d / "docs.jsonl", "a") as f:
                f.write(json.dumps({"docid": docid, "document": "\n".join(sentences)}) + "\n")
        else:
            (d / "docs" / docid).write_text("\n".join(sentences) + "\n")
    for split, anns in splits.items():
        (d / f"{split}.jsonl").write_text("".join(json.dumps(a) + "\n" for a in anns))
    if tar:
        with tarfile.open(root / "eraser" / f"{name}.tar.gz", "w:gz") as t:
            t.add(d, arcname=name)
        import shutil

        shutil.rmtree(d)
    return root


def ev(docid, start, end):
    return {"docid": docid, "start_token": start, "end_token": end, "start_sentence": -1, "end_sentence": -1,
            "text": ""}


def movies_like(root, tar=False):
    docs = {"a.txt": ["a Great movie .", "truly great"], "b.txt": ["a dull , dull film"],
            "c.txt": ["great fun"], "d.txt": ["so dull"]}
    train = [{"annotation_id": "a.txt", "classification": "POS", "query": "What is the sentiment?",
              "evidences": [[ev("a.txt", 1, 2)], [ev("a.txt", 5, 6)]], "docids": None},
             {"annotation_id": "b.txt", "classification": "NEG", "query": "What is the sentiment?",
              "evidences": [[ev("b.txt", 2, 4)]], "docids": None}]
    test = [{"annotation_id": "c.txt", "classification": "POS", "query": "", "evidences": [[ev("c.txt", 0, 1)]]},
            {"annotation_id": "d.txt", "classification": "NEG", "query": "", "evidences": []}]
    return write_eraser(root, "movies", docs, {"train": train, "val": test, "test": test}, tar=tar)


@pytest.mark.parametrize("tar", [False, True])
def test_movies_style_loader(tmp_path, tar):
    root = movies_like(tmp_path, tar)
    d = load("eraser-movies", root)
    v = d.extras["vocab"]
    assert v[:3] == ["<pad>", "<unk>", "<sep>"] and v[3:5] == ["a", "dull"]  # by frequency, ties alphabetical
    assert d.classes == ["NEG", "POS"] and d.y_train.tolist() == [1, 0]
    # lowercased, tokens of both sentences, padding at the end; Movies' fixed question is not fed
    words = [v[i] for i in d.x_train[0][d.x_train[0] != 0]]
    assert words == ["a", "great", "movie", ".", "truly", "great"]
    assert d.gt_train[0].nonzero().flatten().tolist() == [1, 5]  # evidence groups unioned
    assert d.valid_train[1].tolist()[:5] == [True] * 5 and not d.valid_train[1, 5:].any()
    assert d.x_test[0].tolist()[:2] == [v.index("great"), 1]  # "fun" is not in the training vocabulary
    assert d.extras["ids_test"] == ["c.txt", "d.txt"]
    assert d.extras["rationale_fraction"] == pytest.approx((2 / 6 + 2 / 5) / 2)


def test_pair_task_feeds_query_sep_document_and_marks_the_document(tmp_path):
    docs = {"Paris": ["paris is the capital of france ."]}
    ann = [{"annotation_id": "1", "classification": "SUPPORTS", "query": "Paris is in France",
            "evidences": [[ev("Paris", 4, 6)]], "docids": ["Paris"]},
           {"annotation_id": "2", "classification": "REFUTES", "query": "Paris is in Spain",
            "evidences": [[ev("Paris", 0, 1)]], "docids": ["Paris"]}]
    root = write_eraser(tmp_path, "fever", docs, {"train": ann, "val": ann, "test": ann})
    d = load("eraser-fever", root)
    v = d.extras["vocab"]
    words = [v[i] for i in d.x_train[0][d.x_train[0] != 0]]
    assert words == ["paris", "is", "in", "france", "<sep>", "paris", "is", "the", "capital", "of", "france", "."]
    assert d.valid_train[0].tolist()[:12] == [False] * 5 + [True] * 7  # the query and <sep> are not features
    assert d.gt_train[0].nonzero().flatten().tolist() == [9, 10]  # evidence 4:6 of the document, after the query
    assert d.extras["segments_test"][0] == [["Paris", 5, 7, 7]]


def test_docs_jsonl_with_two_documents_per_annotation(tmp_path):
    docs = {"x_premise": ["a man sleeps"], "x_hypothesis": ["a man is awake"]}
    ann = [{"annotation_id": "x", "classification": "contradiction", "query": "",
            "evidences": [[ev("x_premise", 2, 3), ev("x_hypothesis", 3, 4)]]}]
    root = write_eraser(tmp_path, "esnli", docs, {"train": ann, "val": ann, "test": ann}, jsonl_docs=True)
    d = load("eraser-esnli", root)
    v = d.extras["vocab"]
    words = [v[i] for i in d.x_train[0][d.x_train[0] != 0]]
    # documents in sorted docid order, joined by <sep>
    assert words == ["a", "man", "is", "awake", "<sep>", "a", "man", "sleeps"]
    assert d.gt_train[0].nonzero().flatten().tolist() == [3, 7]
    assert d.valid_train[0].tolist()[:8] == [True] * 4 + [False] + [True] * 3


def test_max_len_truncates_and_counts_the_lost_rationale(tmp_path):
    d = load("eraser-movies", movies_like(tmp_path), max_len=4)
    assert d.x_train.shape[1] == 4 and d.extras["truncated_rationale"][0] == 1  # "great" at 5 was cut


def test_loader_errors_are_one_line(tmp_path):
    root = movies_like(tmp_path)
    (root / "eraser" / "movies" / "docs" / "b.txt").unlink()
    with pytest.raises(SgtoolError, match="train.jsonl names document 'b.txt', which is not in"):
        load("eraser-movies", root)
    with pytest.raises(UsageError, match="unknown test split 'dev'; choose from: test, val"):
        load("eraser-movies", root, test_split="dev")
    with pytest.raises(SgtoolError, match=r"missing file movies.tar.gz in .* pass --data-dir"):
        load("eraser-movies", tmp_path / "nowhere")


# --------------------------------------------------------------------------- GloVe


@pytest.mark.parametrize("suffix", [".txt", ".gz"])
def test_glove_reader(tmp_path, suffix):
    text = "the 0.1 0.2 0.3\ngreat 1 2 3\n"
    p = tmp_path / f"g{suffix}"
    p.write_bytes(gzip.compress(text.encode()) if suffix == ".gz" else text.encode())
    vectors, dim = read_glove(p)
    assert dim == 3 and vectors["great"].tolist() == [1, 2, 3]
    bad = tmp_path / "bad.txt"
    bad.write_text("the 0.1 0.2 0.3\ngreat 1 2\n")
    with pytest.raises(SgtoolError, match="bad.txt, line 2: 2 values, the first line has 3"):
        read_glove(bad)


def test_embeddings_initialise_known_words_and_hash_the_file(tmp_path):
    root = movies_like(tmp_path)
    g = tmp_path / "glove.txt"
    g.write_text("great 1 2 3 4\ndull -1 -2 -3 -4\n")
    d = load("eraser-movies", root, embeddings=str(g))
    v = d.extras["vocab"]
    assert d.extras["vectors"].shape == (len(v), 4) and d.extras["vectors"][v.index("great")].tolist() == [1, 2, 3, 4]
    assert d.extras["coverage"] == pytest.approx(2 / (len(v) - 3))
    c1 = make_config(dataset="eraser-movies", embeddings=str(g), data_dir=str(root))
    g.write_text("great 1 2 3 5\ndull -1 -2 -3 -4\n")
    c2 = make_config(dataset="eraser-movies", embeddings=str(g), data_dir=str(root))
    assert c1.embeddings_sha256 != c2.embeddings_sha256
    from sgtool.config import config_hash

    assert config_hash(c1) != config_hash(c2)


def test_oov_unk_gives_words_without_a_vector_the_mean_vector_as_erasers_baselines_do(tmp_path):
    root = movies_like(tmp_path)
    g = tmp_path / "glove.txt"
    g.write_text("great 1 2 3 4\ndull -1 -2 -1 -4\n")
    v = load("eraser-movies", root, embeddings=str(g))
    u = load("eraser-movies", root, embeddings=str(g), oov="unk")
    vocab, x, y = u.extras["vocab"], v.extras["vectors"], u.extras["vectors"]
    missing = [i for i, w in enumerate(vocab) if i > 2 and w not in ("great", "dull")]
    assert missing and vocab[1] == "<unk>"
    for i in (vocab.index("great"), vocab.index("dull"), 0, 2):  # GloVe's rows, <pad> zero, <sep> its own
        assert y[i].tolist() == x[i].tolist()
    assert y[[1, *missing]].tolist() == [[0, 0, 1, 0]] * (1 + len(missing))  # all read as <unk>
    assert len({tuple(r) for r in x[[1, *missing]].tolist()}) == 1 + len(missing)  # random: each its own
    c = make_config(dataset="eraser-movies", embeddings=str(g), data_dir=str(root))
    from sgtool.config import config_hash

    assert config_hash(make_config(dataset="eraser-movies", embeddings=str(g), data_dir=str(root), oov="random")) \
        == config_hash(c) != config_hash(make_config(dataset="eraser-movies", embeddings=str(g), data_dir=str(root),
                                                     oov="unk"))
    for flags, says in ((["--oov", "mean", "--embeddings", str(g)],
                         "unknown rule for words without a vector 'mean'; choose from: random, unk"),
                        (["--oov", "unk"], "--oov says which vectors the words missing from")):
        r = runner.invoke(app, ["train", "--dataset", "eraser-movies", "--data-dir", str(root),
                                "--runs-dir", str(tmp_path / "runs"), *flags])
        assert r.exit_code == 2 and says in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


# --------------------------------------------------------------------------- SGT on tokens


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


def test_word_vectors_for_a_dataset_that_cannot_read_them_are_refused_in_one_line(tmp_path):
    g = tmp_path / "glove.txt"
    g.write_text("w1 1 2\n")
    r = runner.invoke(app, ["train", "--dataset", "synthetic-text", "--embeddings", str(g), "--runs-dir",
                            str(tmp_path / "runs")])
    assert r.exit_code == 2 and r.output.strip() == ("error: synthetic-text does not read word vectors (its words "
                                                     "are its own); leave out --embeddings")
    assert not (tmp_path / "runs").exists()


def test_oov_for_a_loader_that_cannot_take_it_is_refused(tmp_path):
    from sgtool.data import DATASETS, register_dataset

    g = tmp_path / "glove.txt"
    g.write_text("w1 1 2\n")
    register_dataset("own-vectors", lambda data_dir, train_size, test_size, embeddings=None: None, layout="tokens",
                     shape=(None,), num_classes=2, bounds=None,
                     defaults=dict(model="bilstm", epochs=1, batch_size=8, optimizer="adam", lr=1e-3))
    try:
        make_config(dataset="own-vectors", embeddings=str(g))  # the loader reads vectors: fine
        with pytest.raises(UsageError, match="own-vectors's loader gives the words without a vector their own"):
            make_config(dataset="own-vectors", embeddings=str(g), oov="unk")
    finally:
        DATASETS.pop("own-vectors")


def test_asgt_on_text_is_refused_in_one_line(tmp_path):
    r = runner.invoke(app, ["train", "--dataset", "synthetic-text", "--trainer", "asgt", "--runs-dir", str(tmp_path)])
    assert r.exit_code == 2 and "--trainer asgt is for images and series" in r.output
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- metrics by hand


class Bag(nn.Module):
    """logits = sum of the real tokens' 2-d embeddings: p(class | x) depends on which tokens
    remain, not where, so comprehensiveness and sufficiency can be computed by hand."""

    pad_id, unk_id, first_word_id = 0, 1, 3

    def __init__(self, table):
        super().__init__()
        self.emb = nn.Embedding(len(table), 2)
        with torch.no_grad():
            self.emb.weight.copy_(torch.tensor(table))
        self.vocab_size = len(table)

    def embed(self, ids):
        return self.emb(ids)

    def forward_embedded(self, e, mask):
        return (e * mask[..., None]).sum(1)

    def forward(self, ids):
        return self.forward_embedded(self.embed(ids), ids != 0)


TABLE = [[0, 0], [0, 0], [0, 0], [2.0, 0], [0, 1.5], [0.5, 0], [0, 0.2], [1.0, 1.0]]


def softmax(z):
    z = np.asarray(z, dtype=float)
    e = np.exp(z - z.max())
    return e / e.sum()


def test_comprehensiveness_sufficiency_and_deletion_by_hand():
    model = Bag(TABLE)
    ids = torch.tensor([[3, 5, 6, 7, 4], [4, 6, 6, 0, 0], [2, 5, 3, 4, 0]])  # doc 3: a "query" token 2 first
    valid = (ids != 0) & (ids != 2)
    score = torch.tensor([[5.0, 1, 2, 3, 4], [3, 1, 2, 0, 0], [0, 1, 3, 2, 0]])
    # top at t = 0.5: ceil(0.5 n): doc 1: 3 of 5 -> tokens 0, 4, 3; doc 2: 2 of 3 -> 0, 2; doc 3: 2 of 3 -> 2, 3
    top = top_tokens(score, valid, 0.5)
    assert top.tolist() == [[True, False, False, True, True], [True, False, True, False, False],
                            [False, False, True, True, False]]
    assert delete(ids, ~top & (ids != 0)).tolist() == [[5, 6, 0, 0, 0], [6, 0, 0, 0, 0], [2, 5, 0, 0, 0]]
    comp, suff, _, _ = faithfulness(model, ids, valid, score, [0.5])
    t = np.asarray(TABLE)
    for i, (keep_c, keep_s) in enumerate([([5, 6], [3, 7, 4]), ([6], [4, 6]), ([2, 5], [2, 3, 4])]):
        p = softmax(t[[x for x in ids[i].tolist() if x]].sum(0))
        y = p.argmax()
        pc = softmax(t[keep_c].sum(0))
        ps = softmax(t[keep_s].sum(0))
        assert comp[i, 0].item() == pytest.approx(p[y] - pc[y], abs=1e-6)
        assert suff[i, 0].item() == pytest.approx(p[y] - ps[y], abs=1e-6)


def test_auprc_iou_and_token_f1_by_hand():
    # scores 0.9, 0.8, 0.8 (a tie), 0.1; truth 1, 0, 1, 0. Cut points: {0.9}, {0.9, 0.8 x2}, all.
    # (recall, precision): (0.5, 1), (1, 2/3), (1, 1/2), plus (0, 1): area = 0.5 * 1 + 0.5 * (1 + 2/3) / 2
    assert auprc(np.array([0.9, 0.8, 0.8, 0.1]), np.array([1, 0, 1, 0], dtype=bool)) == pytest.approx(0.5 + 5 / 12)
    # one document: gold spans (0, 2), (5, 8); predicted (0, 3) (IOU 2/3) and (6, 7) (IOU 1/3)
    assert iou_f1([[(0, 3), (6, 7)]], [[(0, 2), (5, 8)]]) == pytest.approx(0.5)  # p = 1/2, r = 1/2
    res = plausibility([np.array([0.9, 0.1, 0.8, 0.2])], [np.array([True, False, False, True])], 0.5)
    # the top ceil(0.5 x 4) = 2 tokens: 0 and 2; one is in the truth
    assert res["token_precision"] == 0.5 and res["token_recall"] == 0.5 and res["token_f1"] == 0.5
    assert res["hard"] == [[(0, 1), (2, 3)]]


@pytest.fixture
def bag_run(tmp_path, monkeypatch):
    """A trained-in-name-only run of the Bag model on a three-document ERASER set (lr 1e-30: the
    weights stay TABLE's) and a probe saliency method whose token scores are known."""
    docs = {"a": ["x y z w"], "b": ["w z"], "c": ["y y x"]}
    words = {"x": 3, "y": 4, "z": 5, "w": 6}
    ann = lambda i, c, e: {"annotation_id": i, "classification": c, "query": "", "evidences": [[ev(i, *e)]]}  # noqa
    train = [ann("a", "P", (0, 1)), ann("b", "N", (0, 2)), ann("c", "P", (1, 2))]
    root = write_eraser(tmp_path, "bagset", docs, {"train": train, "val": train, "test": train})
    register_model("bag", lambda shape, k, vocab_size=None, **kw: Bag(TABLE[:vocab_size]), "tokens")
    monkeypatch.setitem(SALIENCY, "probe", lambda model, x, target, **kw: _probe_scores(x))
    yield root, words
    del MODELS["bag"], MODEL_LAYOUTS["bag"]


def _probe_scores(e):
    """Attributions (B, L, 2) whose sum over the embedding is the token's position + 1: later
    tokens rank higher."""
    attr = torch.zeros_like(e)
    attr[..., 0] = torch.arange(1, e.shape[1] + 1, dtype=e.dtype)
    return attr


def test_eraser_eval_end_to_end_and_export_by_hand(bag_run, tmp_path):
    root, _ = bag_run
    runs = tmp_path / "runs"
    r = runner.invoke(app, ["train", "--dataset", "eraser:bagset", "--model", "bag", "--trainer", "standard",
                            "--optimizer", "sgd", "--lr", "1e-30", "--epochs", "1", "--data-dir", str(root),
                            "--runs-dir", str(runs)])
    assert r.exit_code == 0, r.output
    (rid,) = [p.name for p in runs.iterdir()]
    from sgtool.evaluate import mask_eval
    from sgtool.store import find_run

    cfg = mask_eval_config(methods="probe", fractions="0.5", data_dir=str(root))
    res = mask_eval(find_run(runs, rid), cfg)
    d = load("eraser:bagset", root)
    vocab = d.extras["vocab"]
    assert vocab[3:] == ["y", "w", "x", "z"]  # by frequency, ties alphabetical
    t = np.asarray(TABLE[: len(vocab)])  # the model's embedding row of each token id
    comps, suffs = [], []
    for doc in (["x", "y", "z", "w"], ["w", "z"], ["y", "y", "x"]):
        idx = [vocab.index(w) for w in doc]
        p = softmax(t[idx].sum(0))
        y = p.argmax()
        k = math.ceil(0.5 * len(doc))
        top = idx[-k:]  # the probe ranks later tokens higher
        comps.append(p[y] - softmax(t[idx[:-k]].sum(0))[y])
        suffs.append(p[y] - softmax(t[top].sum(0))[y])
    row = res["summary"][0]
    assert row["comprehensiveness"] == pytest.approx(np.mean(comps), abs=1e-5)
    assert row["sufficiency"] == pytest.approx(np.mean(suffs), abs=1e-5)
    lines = [json.loads(x) for x in (res["path"].with_name(f"{res['id']}.probe.eraser.jsonl")).read_text().splitlines()]
    assert [x["annotation_id"] for x in lines] == ["a", "b", "c"]
    first = lines[0]
    assert set(first) >= {"annotation_id", "rationales", "classification", "classification_scores",
                          "comprehensiveness_classification_scores", "sufficiency_classification_scores",
                          "thresholded_scores"}
    assert first["rationales"][0]["docid"] == "a" and len(first["rationales"][0]["soft_rationale_predictions"]) == 4
    assert first["rationales"][0]["soft_rationale_predictions"] == [1.0, 2.0, 3.0, 4.0]
    assert [x["threshold"] for x in first["thresholded_scores"]] == [0.5]
    assert sum(first["classification_scores"].values()) == pytest.approx(1.0)


# --------------------------------------------------------------------------- the synthetic set and the CLI


def test_synthetic_text_plants_its_class_words():
    ids, y, gt = make_synthetic_text(100, seed=0)
    assert (gt.sum(1) == 4).all() and ((ids != 0).sum(1) >= 20).all()
    cue_neg, cue_pos = 3 + 300, 3 + 300 + 8
    planted = ids[gt]
    cls = y.repeat_interleave(4)
    assert ((planted >= cue_neg + 8 * cls) & (planted < cue_neg + 8 * (cls + 1))).all()
    assert get_dataset("synthetic-text").layout == "tokens" and cue_pos == 311


def test_cli_text_train_mask_eval_explain_report(tmp_path):
    runs = ["--runs-dir", str(tmp_path / "runs")]
    ids = train_standard_and_sgt(tmp_path / "runs", "--dataset", "synthetic-text", "--train-size", "200",
                                 "--test-size", "40", "--epochs", "1", "--width", "8")
    r = runner.invoke(app, ["mask-eval", *ids, "--method", "grad,random", "--random-seeds", "2", *runs])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "comprehensiveness" in out and "AUPRC" in out and "IOU F1" in out
    r = runner.invoke(app, ["explain", *ids, "--method", "grad", "--n", "2", "--out", str(tmp_path / "t.png"), *runs])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "t.html").read_text()
    assert html.startswith("<!doctype html>") and "text-decoration:underline" in html
    r = runner.invoke(app, ["report", *runs])
    assert r.exit_code == 0 and "Table 1 (text)" in r.output and "plausibility" in r.output


@pytest.mark.parametrize("select, epoch, test_acc", [(None, "1", 0.3), ("val-loss", "1", 0.3), ("val", "2", 0.4)])
def test_eraser_runs_keep_the_best_validation_epoch(tmp_path, monkeypatch, select, epoch, test_acc):
    """ERASER's default --select val-loss keeps the first epoch with the lowest validation NLL;
    --select val the first with the best validation accuracy. Both log val_acc and val_loss, keep
    that epoch's weights and report its test accuracy. The scores are scripted so that the two
    picks differ (val-loss 1, val 2), neither is the best test epoch (3) nor the last (4), and
    each criterion ties with epoch 4, which must lose to the earlier epoch."""
    import csv

    from safetensors import safe_open
    from safetensors.torch import load_file

    import sgtool.train as train_mod

    movies_like(tmp_path)
    script = {"acc": iter([0.2, 0.9, 0.5, 0.9]), "loss": iter([0.3, 0.5, 0.4, 0.3]),
              "test": iter([0.3, 0.4, 0.8, 0.1])}
    real = train_mod.split_scores

    def scripted(model, x, y, *a, **kw):
        real(model, x, y, *a, **kw)  # the real pass still runs
        if x is data_seen["val"]:
            return {"acc": next(script["acc"]), "loss": next(script["loss"])}
        return {"acc": next(script["test"]), "loss": 9.0}

    monkeypatch.setattr(train_mod, "split_scores", scripted)
    data_seen = {}
    real_load = train_mod.load_data
    monkeypatch.setattr(train_mod, "load_data", lambda *a, **kw: data_seen.update(
        val=(d := real_load(*a, **kw)).extras["x_val"]) or d)
    cfg = make_config(dataset="eraser-movies", trainer="standard", epochs=4, width=4, data_dir=str(tmp_path),
                      runs_dir=str(tmp_path / "runs"), select=select)
    assert cfg.select == (select or "val-loss") and make_config(dataset="synthetic-text").select is None
    res = train_run(cfg)
    run = res["dir"]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["val_acc"] for r in rows] == ["0.2", "0.9", "0.5", "0.9"]
    assert [r["val_loss"] for r in rows] == ["0.3", "0.5", "0.4", "0.3"]
    with safe_open(str(run / "best.safetensors"), "pt") as f:
        assert f.metadata()["epoch"] == epoch
    final, best = load_file(run / "model.safetensors"), load_file(run / "best.safetensors")
    assert all(torch.equal(final[k], best[k]) for k in final)
    assert res["test_acc"] == test_acc and json.loads((run / "run.json").read_text())["test_acc"] == test_acc
    monkeypatch.undo()
    # selecting on the validation split with it as the test split is refused; --test-split val alone is fine
    sel = select or "val-loss"
    with pytest.raises(UsageError, match=f"--select {sel} keeps an epoch chosen on the validation split"):
        make_config(dataset="eraser-movies", select=sel, test_split="val", data_dir=str(tmp_path))
    assert make_config(dataset="eraser-movies", test_split="val", data_dir=str(tmp_path)).select == "last"
    r = runner.invoke(app, ["train", "--dataset", "synthetic-text", "--select", sel, "--runs-dir", str(tmp_path / "r2")])
    assert r.exit_code == 1 and f"--select {sel} needs a validation split" in r.output
    assert not (tmp_path / "r2").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--dataset", "synthetic-text", "--model", "mnist-cnn"], "model 'mnist-cnn' takes image data"),
    (["--dataset", "mnist", "--embeddings", "x.txt"], "--embeddings, --max-len, --freeze-embeddings, --pooling and --embed-dropout are for text"),
    (["--dataset", "mnist", "--embed-dropout", "0.2"], "--embed-dropout are for text; mnist is image data"),
    (["--dataset", "synthetic-text", "--mask-frac", "0.01"], "masks 0 features of the shortest sample"),
    (["--dataset", "synthetic-text", "--test-split", "dev"], "unknown test split 'dev'"),
])
def test_cli_text_bad_input(tmp_path, args, fragment):
    r = runner.invoke(app, ["train", *args, "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code != 0 and fragment in " ".join(r.output.split()) and exited_cleanly(r)
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- real data


def test_real_movies(tmp_path):
    if not (SHARED / "eraser" / "movies.tar.gz").is_file():
        pytest.skip(f"the ERASER Movies archive is not at {SHARED / 'eraser'}")
    d = load("eraser-movies", SHARED)
    assert len(d.x_train) == 1600 and len(d.x_test) == 199 and d.x_train.shape[1] == 2809
    assert d.extras["rationale_fraction"] == pytest.approx(0.0935, abs=5e-4)
    assert LAYOUTS["tokens"].n_features((d.x_train.shape[1],)) == 2809


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


def test_eraser_defaults_to_erasers_embedding_dropout_and_old_runs_keep_their_ids_and_models(tmp_path):
    import dataclasses

    from sgtool import find_run, runs_root
    from sgtool.config import config_hash, from_dict, to_dict
    from sgtool.runs import build_model, load_data, load_model

    root = movies_like(tmp_path)
    cfg = make_config(dataset="eraser-movies", trainer="standard", epochs=1, width=4, data_dir=str(root),
                      runs_dir=str(tmp_path / "runs"))
    assert cfg.embed_dropout == 0.2 and make_config(dataset="synthetic-text").embed_dropout is None
    # --embed-dropout 0 is the run a config without the field (sgtool before this default) named
    old = dataclasses.replace(cfg, embed_dropout=None)
    assert config_hash(make_config(dataset="eraser-movies", trainer="standard", epochs=1, width=4,
                                   data_dir=str(root), embed_dropout=0.0)) == config_hash(old) != config_hash(cfg)
    # a stored config is read as it was written, never re-resolved: an old run still builds p = 0
    assert build_model(from_dict(to_dict(old)), load_data(cfg)).embed_drop.p == 0
    run = find_run(runs_root(cfg.runs_dir), train_run(cfg)["id"])
    assert run["config"]["embed_dropout"] == 0.2 and "embed_dropout: 0.2" in (run["dir"] / "config.yaml").read_text()
    assert load_model(run)[0].embed_drop.p == 0.2


def _benchmark(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_eraser_table1_paired_interval_resamples_documents_and_then_seeds():
    """benchmarks/eraser_table1.py's interval of SGT-minus-standard accuracy: a sure gain has a
    point interval; seeds that disagree widen it only when seeds are resampled; and a half-and-half
    gain over 400 documents has the binomial width (2 x 1.96 x sqrt(.25 / 400) = 0.098)."""
    paired_interval = _benchmark("eraser_table1").paired_interval
    assert paired_interval(torch.ones(3, 50)) == (1.0, 1.0)
    split = torch.stack([-torch.ones(50), torch.ones(50)])  # seed 0 loses everywhere, seed 1 gains
    assert paired_interval(split) == (0.0, 0.0)
    lo, hi = paired_interval(split, seeds_too=True)
    assert lo == -1.0 and hi == 1.0
    half = (torch.arange(400) % 2).float()[None]  # (1, 400)
    lo, hi = paired_interval(half)
    assert lo < 0.5 < hi and 0.08 < hi - lo < 0.12
