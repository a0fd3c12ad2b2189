"""Word vectors: the GloVe reader, the embedding matrix of a vocabulary, the rule for words without a vector."""

import gzip

import pytest
from typer.testing import CliRunner

from sgtool.cli import app
from sgtool.config import make_config
from sgtool.data import load
from sgtool.data.glove import read_glove
from sgtool.errors import SgtoolError
from tests.text_fixtures import movies_like

runner = CliRunner()


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
