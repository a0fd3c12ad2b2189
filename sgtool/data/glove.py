"""Word vectors for text models: GloVe's text format (`word v1 ... vD` a line, as .txt, .gz or
the GloVe .zip), the embedding matrix of a vocabulary, and the file's sha256 for the run's id."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import SgtoolError
from .download import file_hash

SPECIALS_COUNT = 3  # <pad>, <unk>, <sep>: the first ids of every vocabulary (text.SPECIALS)


def read_glove(path: Path) -> tuple[dict[str, np.ndarray], int]:
    """GloVe text vectors (`word v1 ... vD` a line) from .txt, .gz or the GloVe .zip: (word ->
    vector, D). Lines of another width than the first are one error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise SgtoolError(f"embeddings file {path} not found; give --embeddings PATH to GloVe vectors")
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as z:
                name = next(n for n in z.namelist() if n.endswith(".txt"))
                text = io.TextIOWrapper(z.open(name), encoding="utf-8")
                return _parse_glove(text, path)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            return _parse_glove(f, path)
    except (OSError, EOFError, UnicodeDecodeError, StopIteration, zipfile.BadZipFile) as e:
        raise SgtoolError(f"embeddings file {path} is unreadable ({type(e).__name__}: {e})") from None


def _parse_glove(lines, path) -> tuple[dict[str, np.ndarray], int]:
    vectors, dim = {}, None
    for no, line in enumerate(lines, 1):
        parts = line.rstrip("\n").rstrip().split(" ")
        if len(parts) < 2:
            continue
        if dim is None:
            dim = len(parts) - 1
        if len(parts) - 1 != dim:
            raise SgtoolError(f"embeddings file {path}, line {no}: {len(parts) - 1} values, the first line has {dim}")
        try:
            vec = np.asarray(parts[1:], dtype=np.float32)
        except ValueError:
            raise SgtoolError(f"embeddings file {path}, line {no}: a value is not a number") from None
        if not np.isfinite(vec).all():
            raise SgtoolError(f"embeddings file {path}, line {no}: a value is NaN or infinite")
        vectors[parts[0]] = vec
    if dim is None:
        raise SgtoolError(f"embeddings file {path} holds no vectors")
    return vectors, dim


def embedding_matrix(vocab: list[str], path: Path | None, dim: int = 50, seed: int = 0, oov: str | None = None):
    """(vectors (V, D), coverage): GloVe rows for the words it has, zeros for <pad>, and for the
    rest (<unk> included) by `oov`: "random" (None), N(0, GloVe's std) per word (seeded); "unk",
    the mean GloVe vector, so that with frozen vectors every such word reads as <unk>, as in
    ERASER's baselines (model_utils.extract_embeddings). Without a file: all random, D = dim."""
    g = np.random.default_rng(seed)
    if path is None:
        m = g.normal(0, 0.3, (len(vocab), dim)).astype(np.float32)
        m[0] = 0
        return torch.from_numpy(m), None
    glove, d = read_glove(path)
    std = float(np.std(np.stack(list(glove.values())[:5000])))
    m = g.normal(0, std, (len(vocab), d)).astype(np.float32)
    words = vocab[SPECIALS_COUNT:]
    hit = [i for i, w in enumerate(words, SPECIALS_COUNT) if w in glove]
    for i in hit:
        m[i] = glove[vocab[i]]
    if oov == "unk":  # <unk> and the words without a vector; <sep> keeps a vector of its own
        have = set(hit)
        m[[1, *(i for i in range(SPECIALS_COUNT, len(vocab)) if i not in have)]] = np.mean(np.stack(list(glove.values())), 0)
    m[0] = 0
    return torch.from_numpy(m), len(hit) / max(len(words), 1)


def resolve_embeddings(path: str | None, data_dir: Path | None) -> Path | None:
    """An embeddings path as given, or relative to the data dir (experiments.yaml's `glove/...`)."""
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.is_file() and data_dir is not None and (Path(data_dir) / p).is_file():
        p = Path(data_dir) / p
    if not p.is_file():
        raise SgtoolError(f"embeddings file {path} not found (also not under --data-dir {data_dir}); "
                          f"give --embeddings PATH to GloVe vectors")
    return p


def embeddings_sha256(path: str | None, data_dir) -> str | None:
    p = resolve_embeddings(path, Path(data_dir) if data_dir else None)
    return None if p is None else file_hash(p, "sha256")
