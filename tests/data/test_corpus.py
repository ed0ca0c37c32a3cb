"""Corpora from files, folders and in-memory datasets; clear errors for bad input."""

import json

import datasets
import pytest

import saekit as sk
from saekit.data.corpus import Corpus
from saekit.errors import DataError


def test_local_files_of_each_format(tmp_path, docs):
    (tmp_path / "a.txt").write_text("\n".join(docs[:5]).replace("\n\n", "\n"))
    text = sk.load_corpus(tmp_path / "a.txt")
    assert text.text_column == "text" and len(text) > 0
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": d, "n": i}) for i, d in enumerate(docs[:7])))
    with pytest.raises(DataError, match=r"text_column='text' is not a column.*\['body', 'n'\]"):
        sk.load_corpus(jsonl, text_column="text")
    body = sk.load_corpus(jsonl)  # the only string column is found
    assert body.text_column == "body" and body.texts(0, 2) == docs[:2]
    csv = tmp_path / "c.csv"
    csv.write_text("title,content\n" + "\n".join(f"t{i},doc {i}" for i in range(4)))
    with pytest.raises(DataError, match=r"no 'text' column.*\['title', 'content'\]"):
        sk.load_corpus(csv)
    assert sk.load_corpus(csv, text_column="content").texts() == [f"doc {i}" for i in range(4)]
    builder = sk.load_corpus("json", data_files=[str(jsonl)], text_column="body")
    assert len(builder) == 7


def test_folder_and_split_selection(tmp_path, docs):
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        (folder / f"part{i}.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs[i * 4:(i + 1) * 4]))
    corpus = sk.load_corpus(folder)
    assert len(corpus) == 12 and sorted(corpus.texts()) == sorted(docs[:12])


def test_in_memory_dataset_is_saved_by_content(ws, docs):
    data = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs[:20]}),
                                 "test": datasets.Dataset.from_dict({"text": docs[20:25]})})
    corpus = sk.load_corpus(data)
    assert corpus.split_names == ["train", "test"] and len(corpus) == 25
    assert corpus.split_of() == [("train", 0, 20), ("test", 20, 25)]
    assert corpus.texts(18, 22) == docs[18:22]
    spec = corpus.spec(ws)
    assert spec["ref"]["saved"] and (ws.path / "corpora" / corpus.fingerprint).is_dir()
    reloaded = Corpus.from_spec(spec)
    assert reloaded.texts() == docs[:25]
    same = sk.load_corpus(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs[:20]}),
                                                "test": datasets.Dataset.from_dict({"text": docs[20:25]})}))
    assert same.fingerprint == corpus.fingerprint
    assert sk.load_corpus(data, split="test").texts() == docs[20:25]


def test_changed_files_are_refused_by_a_later_job(tmp_path, docs):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs[:5]))
    spec = sk.load_corpus(path).spec()
    import os
    import time

    time.sleep(0.01)
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs[5:9]))
    os.utime(path, (time.time() + 5, time.time() + 5))
    with pytest.raises(DataError, match="changed since the job was submitted"):
        Corpus.from_spec(spec)


def test_bad_corpora(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        sk.load_corpus(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError):
        sk.load_corpus(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="no documents"):
        sk.load_corpus(datasets.Dataset.from_dict({"text": []}))
    with pytest.raises(DataError, match="data_files"):
        sk.load_corpus("json", data_files=[str(tmp_path / "nope.jsonl")])
    with pytest.raises(DataError, match="offline"):
        sk.load_corpus("no-such-user/no-such-dataset")


def test_loading_a_corpus_shows_no_progress_bars_of_its_own(tmp_path):
    """In a fresh process (datasets not imported yet), sk.load_corpus prints none of datasets' bars
    ("Generating train split"): saekit shows its own progress."""
    import subprocess
    import sys

    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(50)))
    code = f"import saekit as sk; print(len(sk.load_corpus({str(path)!r})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "50", done.stderr[-2000:]
    assert "Generating" not in done.stderr and "examples/s" not in done.stderr, done.stderr[-2000:]
