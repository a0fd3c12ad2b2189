"""Helpers of the text tests: ERASER-layout datasets written by the tests themselves."""

import json
import tarfile
from pathlib import Path

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


def sorted_movies(root, n: int = 6):
    """A Movies-layout set sorted by class as the real one is: n negative reviews, then n positive,
    in every split."""
    docs, splits = {}, {}
    for split in ("train", "val", "test"):
        anns = []
        for label, word in (("NEG", "dull"), ("POS", "great")):
            for i in range(n):
                docid = f"{split}_{label}_{i}.txt"
                docs[docid] = [f"a {word} film , {word} indeed"]
                anns.append({"annotation_id": docid, "classification": label, "query": "",
                             "evidences": [[ev(docid, 1, 2)]]})
        splits[split] = anns
    return write_eraser(root, "movies", docs, splits)
