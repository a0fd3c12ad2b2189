"""The ERASER loader on files the tests write (Movies-style, FEVER-style with a query, the
docs.jsonl variant), truncation, its errors, the synthetic text task, and the real Movies files."""

import pytest

from sgtool.data import get_dataset, load
from sgtool.data.text import make_synthetic_text
from sgtool.errors import SgtoolError, UsageError
from sgtool.layout import LAYOUTS
from tests.text_fixtures import SHARED, ev, movies_like, write_eraser


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


def test_synthetic_text_plants_its_class_words():
    ids, y, gt = make_synthetic_text(100, seed=0)
    assert (gt.sum(1) == 4).all() and ((ids != 0).sum(1) >= 20).all()
    cue_neg, cue_pos = 3 + 300, 3 + 300 + 8
    planted = ids[gt]
    cls = y.repeat_interleave(4)
    assert ((planted >= cue_neg + 8 * cls) & (planted < cue_neg + 8 * (cls + 1))).all()
    assert get_dataset("synthetic-text").layout == "tokens" and cue_pos == 311


def test_real_movies(tmp_path):
    if not (SHARED / "eraser" / "movies.tar.gz").is_file():
        pytest.skip(f"the ERASER Movies archive is not at {SHARED / 'eraser'}")
    d = load("eraser-movies", SHARED)
    assert len(d.x_train) == 1600 and len(d.x_test) == 199 and d.x_train.shape[1] == 2809
    assert d.extras["rationale_fraction"] == pytest.approx(0.0935, abs=5e-4)
    assert LAYOUTS["tokens"].n_features((d.x_train.shape[1],)) == 2809
