"""Text datasets, (N, L) token ids with a (N, L) mask of the document's tokens: the ERASER
benchmark (DeYoung et al. 2020) with its human rationales, and a built-in synthetic task.

ERASER (`eraser-movies`, `eraser-fever`, `eraser-esnli`, or `eraser:NAME` for any dataset in
the benchmark's layout under --data-dir): <NAME>/docs/<docid> (one tokenised sentence a line)
or <NAME>/docs.jsonl ({"docid", "document"}), and <NAME>/{train,val,test}.jsonl, whose lines hold
annotation_id, classification, query, docids and evidences (groups of {docid, start_token,
end_token (exclusive), ...}). The folder, or the .tar.gz the ERASER site distributes, is looked
for under DIR/eraser/ and DIR/. No checksum is published: a download is checked by its layout.

- An annotation's documents are its evidences' docids (sorted), else its `docids`, else its
  annotation_id (ERASER's Movies names each review's file by its annotation id).
- Tokens are the files' own tokens, split on spaces, lowercased; empty lines and tokens are
  dropped in both layouts (the official docs.jsonl reader keeps them; sgtool reads both alike).
- Pair tasks (a non-empty query, as FEVER's claim; Movies' fixed question is not fed): the input
  is `query <sep> document [<sep> document ...]`, and only the documents' tokens are valid
  features: the query is never ranked, masked or removed.
- The vocabulary comes from the training split: <pad> 0, <unk> 1, <sep> 2, then the words by
  frequency (ties alphabetical). The ground truth (N, L) marks the human rationales' tokens (all
  evidence groups, unioned, as ERASER's scorer does). `--max-len` truncates; the tokens past it
  are counted in extras["truncated_rationale"].
- `--embeddings PATH`: GloVe text vectors (.txt, .gz, or the GloVe .zip); words without a
  vector start random (seeded), and the file's sha256 is part of the run's hash.

`synthetic-text`: filler words with class words planted at random places; the ground truth is
the planted words of the document's class.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..errors import SgtoolError, UsageError, unknown_name
from .download import download, file_hash, offline
from .glove import embedding_matrix, resolve_embeddings
from .registry import PREFIXES, UNSET, Data, DatasetSpec, default_data_dir, register_dataset, stratified

PAD, UNK, SEP = "<pad>", "<unk>", "<sep>"
SPECIALS = (PAD, UNK, SEP)
SPLITS = ("train", "val", "test")
ERASER_MIRROR = ["https://www.eraserbenchmark.com/zipped/"]


# --------------------------------------------------------------------------- reading ERASER


class _Folder:
    """An ERASER dataset, from its folder or from inside its .tar.gz: name -> bytes."""

    def __init__(self, name: str, data_dir: Path):
        self.name, self.where = name, None
        for d in (data_dir / "eraser" / name, data_dir / name):
            if (d / "train.jsonl").is_file():
                self.where, self.kind = d, "dir"
                return
        for d in (data_dir / "eraser", data_dir):
            if (d / f"{name}.tar.gz").is_file():
                self._open_tar(d / f"{name}.tar.gz")
                return
        if not offline():
            try:
                path = download(f"eraser:{name}", f"{name}.tar.gz", ERASER_MIRROR, data_dir / "eraser",
                                check=lambda p: self._check_tar(p))
                self._open_tar(path)
                return
            except SgtoolError:
                pass
        raise SgtoolError(f"eraser:{name}: missing file {name}.tar.gz in {data_dir / 'eraser'} "
                          f"({'offline' if offline() else 'download failed'}); put it (or its extracted "
                          f"{name}/ folder) there or pass --data-dir DIR")

    def _check_tar(self, path) -> bool:
        with tarfile.open(path, "r:gz") as tar:
            names = {m.name.split("/", 1)[-1] for m in tar.getmembers()}
        return "train.jsonl" in names and "test.jsonl" in names

    def _open_tar(self, path: Path):
        try:
            with tarfile.open(path, "r:gz") as tar:
                self.files = {}
                for m in tar.getmembers():
                    if m.isfile():
                        rel = m.name.split("/", 1)[1] if "/" in m.name else m.name
                        self.files[rel] = tar.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise SgtoolError(f"corrupt ERASER archive {path}: {e}; delete it to download again") from None
        self.where, self.kind = path, "tar"

    def read(self, rel: str) -> bytes | None:
        if self.kind == "dir":
            p = self.where / rel
            return p.read_bytes() if p.is_file() else None
        return self.files.get(rel)

    def has_dir(self, rel: str) -> bool:
        if self.kind == "dir":
            return (self.where / rel).is_dir()
        return any(k.startswith(rel + "/") for k in self.files)

    def label(self, rel: str) -> str:
        return f"{self.where}{'/' if self.kind == 'dir' else ':'}{rel}"


def _tokens(text: str) -> list[str]:
    return [t.lower() for line in text.splitlines() for t in line.strip().split(" ") if t]


def read_annotations(folder: _Folder, split: str) -> list[dict]:
    if split not in SPLITS:
        raise unknown_name("ERASER split", split, SPLITS)
    raw = folder.read(f"{split}.jsonl")
    if raw is None:
        raise SgtoolError(f"eraser:{folder.name}: no {split}.jsonl in {folder.where}")
    out = []
    for no, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            a = json.loads(line)
            ev = [e for group in a.get("evidences") or [] for e in group]
            out.append({"id": str(a["annotation_id"]), "label": str(a["classification"]),
                        "query": str(a.get("query") or ""), "docids": a.get("docids"),
                        "evidences": [(str(e["docid"]), int(e["start_token"]), int(e["end_token"])) for e in ev]})
        except (ValueError, KeyError, TypeError) as e:
            raise SgtoolError(f"{folder.label(f'{split}.jsonl')}, line {no}: not an ERASER annotation ({e})") from None
    return out


def read_documents(folder: _Folder, docids: set[str], where: str) -> dict[str, list[str]]:
    """docid -> its lowercased tokens, from docs/ or docs.jsonl; a missing docid is one line."""
    docs = {}
    if folder.has_dir("docs"):
        for d in sorted(docids):
            raw = folder.read(f"docs/{d}")
            if raw is None:
                raise SgtoolError(f"eraser:{folder.name}: {where} names document '{d}', which is not in "
                                  f"{folder.label('docs')}")
            docs[d] = _tokens(raw.decode("utf-8"))
        return docs
    raw = folder.read("docs.jsonl")
    if raw is None:
        raise SgtoolError(f"eraser:{folder.name}: neither docs/ nor docs.jsonl in {folder.where}")
    for line in raw.decode("utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            if str(d["docid"]) in docids:
                docs[str(d["docid"])] = _tokens(str(d["document"]))
    missing = sorted(docids - set(docs))
    if missing:
        raise SgtoolError(f"eraser:{folder.name}: {where} names document '{missing[0]}', which is not in "
                          f"{folder.label('docs.jsonl')}")
    return docs


def _doc_ids(a: dict) -> list[str]:
    ids = sorted({d for d, _, _ in a["evidences"]})
    if ids:
        return ids
    if a["docids"]:
        return sorted(str(d) for d in a["docids"])
    return [a["id"]]


# --------------------------------------------------------------------------- vocabulary


def build_vocab(token_lists) -> list[str]:
    counts = Counter(t for toks in token_lists for t in toks)
    return [*SPECIALS, *sorted((w for w in counts if w not in SPECIALS), key=lambda w: (-counts[w], w))]


# --------------------------------------------------------------------------- encoding


def encode(examples: list[dict], vocab: dict[str, int], max_len: int | None):
    """examples [{"query": [tokens], "docs": [(docid, [tokens])], "gt": {docid: set of positions}}] ->
    ids (N, L), valid (N, L) (the documents' tokens), gt (N, L), segments (per example, the
    documents' (docid, input start, tokens kept, document length)), and the rationale tokens
    that truncation dropped. Padding at the end."""
    rows, valid, gts, segments, lost = [], [], [], [], 0
    sep = vocab[SEP]
    for ex in examples:
        ids, v, gt, seg = [], [], [], []
        if ex["query"]:
            ids += [vocab.get(t, 1) for t in ex["query"]] + [sep]
            v += [False] * (len(ex["query"]) + 1)
            gt += [False] * (len(ex["query"]) + 1)
        for j, (docid, toks) in enumerate(ex["docs"]):
            if j:
                ids.append(sep)
                v.append(False)
                gt.append(False)
            seg.append([docid, len(ids), len(toks), len(toks)])
            ids += [vocab.get(t, 1) for t in toks]
            v += [True] * len(toks)
            marks = ex["gt"].get(docid, set())
            gt += [i in marks for i in range(len(toks))]
        if max_len is not None and len(ids) > max_len:
            lost += sum(gt[max_len:])
            ids, v, gt = ids[:max_len], v[:max_len], gt[:max_len]
            for s in seg:
                s[2] = max(0, min(s[2], max_len - s[1]))
        rows.append(ids)
        valid.append(v)
        gts.append(gt)
        segments.append(seg)
    length = max(len(r) for r in rows)
    x = torch.zeros(len(rows), length, dtype=torch.long)
    vm = torch.zeros(len(rows), length, dtype=torch.bool)
    gm = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, (r, v, gt) in enumerate(zip(rows, valid, gts)):  # a loop over documents at load time, not a batch
        x[i, : len(r)] = torch.tensor(r)
        vm[i, : len(v)] = torch.tensor(v)
        gm[i, : len(gt)] = torch.tensor(gt)
    return x, vm, gm, segments, lost


def _examples(folder: _Folder, split: str, use_query: bool) -> list[dict]:
    anns = read_annotations(folder, split)
    docs = read_documents(folder, {d for a in anns for d in _doc_ids(a)}, f"{split}.jsonl")
    out = []
    for a in anns:
        ids = _doc_ids(a)
        gt = {}
        for d, s, e in a["evidences"]:
            if d in docs and not (0 <= s <= e <= len(docs[d])):
                raise SgtoolError(f"eraser:{folder.name}: {split}.jsonl annotation {a['id']}: evidence tokens "
                                  f"{s}:{e} lie outside document {d} ({len(docs[d])} tokens)")
            gt.setdefault(d, set()).update(range(s, e))
        out.append({"id": a["id"], "label": a["label"], "query": _tokens(a["query"]) if use_query else [],
                    "docs": [(d, docs[d]) for d in ids], "gt": gt})
    return out


def eraser_loader(name: str, use_query: bool):
    def load(data_dir, train_size, test_size, max_len=None, embeddings=None, embeddings_sha256=None,
             test_split="test", oov=None, subset=None, run_train_size=UNSET) -> Data:
        if test_split not in ("test", "val"):
            raise unknown_name("test split", test_split, ("test", "val"))
        folder = _Folder(name, Path(data_dir))
        every = _examples(folder, "train", use_query)
        # The classes are the whole training file's: a subset that lacks one keeps its place.
        classes = sorted({e["label"] for e in every})
        index = {c: i for i, c in enumerate(classes)}

        def take(examples, n):  # the first n, or with subset "stratified" the first of each class in turn
            if subset != "stratified" or n is None:
                return examples[:n]
            order = stratified(torch.tensor([index.get(e["label"], -1) for e in examples]), n)
            return [examples[i] for i in order.tolist()]

        # The vocabulary is the run's training split's, also when an evaluation asks for the test split only.
        fit = take(every, train_size if run_train_size is UNSET else run_train_size)
        train = take(every, train_size)
        test = take(_examples(folder, test_split, use_query), test_size)
        unknown = [e["label"] for e in test if e["label"] not in index]
        if unknown:
            raise SgtoolError(f"eraser:{name}: {test_split} label '{unknown[0]}' never occurs in train.jsonl")
        vocab = build_vocab([*e["query"], *(t for _, toks in e["docs"] for t in toks)] for e in fit)
        lookup = {w: i for i, w in enumerate(vocab)}
        xtr, vtr, gtr, _, lost_tr = encode(train, lookup, max_len)
        xte, vte, gte, seg_te, lost_te = encode(test, lookup, max_len)
        val = {}
        if test_split == "test" and folder.read("val.jsonl") is not None:  # for choosing the epoch
            ex = [e for e in _examples(folder, "val", use_query) if e["label"] in index]
            val = {"x_val": encode(ex, lookup, max_len)[0], "y_val": torch.tensor([index[e["label"]] for e in ex])}
        path = resolve_embeddings(embeddings, Path(data_dir))
        if path is not None and embeddings_sha256 and file_hash(path, "sha256") != embeddings_sha256:
            raise SgtoolError(f"embeddings file {path} has changed since this run was trained; restore it, or train "
                              f"a new run")
        vectors, coverage = embedding_matrix(vocab, path, oov=oov)
        rationale = [sum(len(v) for v in e["gt"].values()) / max(sum(len(t) for _, t in e["docs"]), 1)
                     for e in fit if e["gt"]]
        return Data(xtr, torch.tensor([index[e["label"]] for e in train]), xte,
                    torch.tensor([index[e["label"]] for e in test]), classes, gtr, gte, vtr, vte,
                    extras={"vocab": vocab, "vocab_size": len(vocab), "vectors": vectors, "pad_id": 0, "unk_id": 1,
                            "first_word_id": len(SPECIALS), "coverage": coverage,
                            "rationale_fraction": float(np.mean(rationale)) if rationale else None,
                            "truncated_rationale": (lost_tr, lost_te),
                            "ids_test": [e["id"] for e in test], "segments_test": seg_te, **val})

    return load


TEXT_DEFAULTS = dict(model="bilstm", epochs=10, batch_size=32, optimizer="adam", lr=1e-3)
# ERASER: GloVe vectors (when --embeddings gives them) stay fixed, the run keeps the epoch with the
# lowest validation loss, and 0.2 of the word vectors are dropped in training, as ERASER's
# baselines do. On Movies tuned 50-d vectors overfitted where frozen ones did not, and the
# dropout lifted both trainers' test accuracy (docs/text.md says what each choice costs).
# Their files are sorted by class (Movies: 800 negative reviews, then 800 positive), so the first N
# of a split can hold one class: --train-size and --test-size take the first of each class in turn.
ERASER_DEFAULTS = {**TEXT_DEFAULTS, "epochs": 15, "select": "val-loss", "freeze_embeddings": True,
                   "embed_dropout": 0.2, "subset": "stratified"}
ERASER_SETS = {"eraser-movies": ("movies", False, 2, "ERASER Movie Reviews (sentiment) with human rationales"),
               "eraser-fever": ("fever", True, 2, "ERASER FEVER (claim + Wikipedia passage) with rationales"),
               "eraser-esnli": ("esnli", True, 3, "ERASER e-SNLI (premise and hypothesis) with rationales")}
for _name, (_folder, _query, _classes, _what) in ERASER_SETS.items():
    register_dataset(_name, eraser_loader(_folder, _query), layout="tokens", shape=(None,), num_classes=_classes,
                     defaults=ERASER_DEFAULTS, bounds=None, has_gt=True, description=_what)


def _eraser_spec(name: str, data_dir=None) -> DatasetSpec:
    """eraser:NAME: any ERASER dataset by its folder name; its classes come from train.jsonl."""
    sub = name.split(":", 1)[1]
    if not sub or "/" in sub:
        raise UsageError(f"--dataset {name}: give eraser:NAME with the dataset's folder name, e.g. eraser:boolq")
    folder = _Folder(sub, Path(data_dir) if data_dir else default_data_dir())
    anns = read_annotations(folder, "train")
    use_query = any(a["query"] for a in anns) and sub != "movies"
    classes = sorted({a["label"] for a in anns})
    return DatasetSpec(eraser_loader(sub, use_query), (None,), len(classes), defaults=ERASER_DEFAULTS, layout="tokens",
                       bounds=None, has_gt=True, description=f"ERASER {sub}")


PREFIXES["eraser"] = _eraser_spec


# --------------------------------------------------------------------------- synthetic text

N_FILLER, N_CUE, SYNTH_LEN = 300, 8, (20, 60)


def make_synthetic_text(n: int, seed: int):
    """Documents of 20 to 59 filler words with 4 words of their class planted at random places,
    and 1 word of the other class (a distractor, not ground truth). Returns ids (n, 60) with
    padding 0 at the end, labels (n,), gt (n, 60): the planted words of the document's class.
    Ids: 0-2 the specials, 3.. the fillers, then N_CUE cue words per class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    lengths = torch.randint(*SYNTH_LEN, (n,), generator=g)
    ids = torch.randint(3, 3 + N_FILLER, (n, SYNTH_LEN[1]), generator=g)
    ids[torch.arange(SYNTH_LEN[1])[None] >= lengths[:, None]] = 0
    # 5 distinct planted positions per document: the first 4 get the class's cues, the last the other's
    pos = (torch.rand(n, SYNTH_LEN[1], generator=g) * (torch.arange(SYNTH_LEN[1])[None] < lengths[:, None])).topk(5).indices
    cue = lambda cls, k: 3 + N_FILLER + cls * N_CUE + torch.randint(0, N_CUE, (n, k), generator=g)  # noqa: E731
    rows = torch.arange(n)[:, None]
    ids[rows, pos[:, :4]] = cue(y[:, None], 4)
    ids[rows, pos[:, 4:]] = cue(1 - y[:, None], 1)
    gt = torch.zeros(n, SYNTH_LEN[1], dtype=torch.bool)
    gt[rows, pos[:, :4]] = True
    return ids, y, gt


def _synthetic_text(data_dir, train_size, test_size) -> Data:
    xtr, ytr, gtr = make_synthetic_text(train_size or 2000, seed=1)
    xte, yte, gte = make_synthetic_text(test_size or 500, seed=2)
    vocab = [*SPECIALS, *(f"w{i}" for i in range(N_FILLER)), *(f"neg{i}" for i in range(N_CUE)),
             *(f"pos{i}" for i in range(N_CUE))]
    vectors, _ = embedding_matrix(vocab, None, dim=16)
    fraction = float((gtr.sum(1) / (xtr != 0).sum(1)).mean())
    return Data(xtr, ytr, xte, yte, ["neg", "pos"], gtr, gte, xtr != 0, xte != 0,
                extras={"vocab": vocab, "vocab_size": len(vocab), "vectors": vectors, "pad_id": 0, "unk_id": 1,
                        "first_word_id": 3, "rationale_fraction": fraction,
                        "ids_test": [f"synthetic_{i}" for i in range(len(xte))],
                        "segments_test": [[[f"synthetic_{i}", 0, int(n), int(n)]] for i, n in
                                          enumerate((xte != 0).sum(1).tolist())]})


register_dataset("synthetic-text", _synthetic_text, layout="tokens", shape=(SYNTH_LEN[1],), num_classes=2,
                 defaults=dict(model="bilstm", epochs=3, batch_size=64, optimizer="adam", lr=3e-3, width=32),
                 bounds=None, has_gt=True,
                 description="built in: filler words with 4 class words planted (the ground truth)")

