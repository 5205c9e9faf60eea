"""Token files: split by document, dtypes, memmaps, meta.json, prepare()."""

import json
import os

import numpy as np
import pytest

from data_tools import (DOC_SEPARATOR, CharTokenizer, DataToolsError, iter_documents, load_meta, load_split,
                        load_tokenizer, prepare, tokenize, write_token_files)
from data_tools.tokens import DocumentSplitter
from test_data_helpers import row, write_posts


def corpus_file(path, documents):
    path.write_text("".join(d + "\n" + DOC_SEPARATOR + "\n" for d in documents), encoding="utf-8")
    return path


def decode_documents(data_dir, split):
    tokenizer = load_tokenizer(os.path.join(data_dir, "tokenizer.json"))
    ids = np.asarray(load_split(data_dir, split))
    text = tokenizer.decode(ids)
    assert text == "" or text.endswith(DOC_SEPARATOR)
    return [d for d in text.split(DOC_SEPARATOR)][:-1] if text else []


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_every_document_lands_whole_in_exactly_one_split(tmp_path, kind):
    documents = [f"Document {i}: $x_{i} < {i + 1}$\nline two" for i in range(45)]
    meta = tokenize(corpus_file(tmp_path / "corpus.txt", documents), tmp_path / "data", kind,
                    300 if kind == "bpe" else None)
    found = {split: decode_documents(tmp_path / "data", split) for split in ("train", "val", "test")}
    assert sorted(sum(found.values(), [])) == sorted(documents)
    assert [len(found[s]) for s in ("train", "val", "test")] == [39, 3, 3]
    assert meta["documents"] == {split: len(docs) for split, docs in found.items()}
    for split in ("train", "val", "test"):
        assert meta["tokens"][split] == len(load_split(tmp_path / "data", split))


def test_three_documents_give_non_empty_val_and_test(tmp_path):
    tokenize(corpus_file(tmp_path / "c.txt", ["one", "two", "three"]), tmp_path / "d")
    assert [decode_documents(tmp_path / "d", s) for s in ("train", "val", "test")] == [["one"], ["two"], ["three"]]


def test_splitter_fractions_and_small_corpora():
    splitter = DocumentSplitter(0.1, 0.2)
    splits = [splitter.next_split() for _ in range(10001)]
    assert splits.count("val") == 1000 and splits.count("test") == 2000
    for n, expected in ((1, ["train"]), (2, ["train", "val"])):
        splitter = DocumentSplitter()
        assert [splitter.next_split() for _ in range(n)] == expected
    with pytest.raises(DataToolsError):
        DocumentSplitter(0.6, 0.5)


def test_load_split_is_a_read_only_memmap_with_meta_dtype(tmp_path):
    tokenize(corpus_file(tmp_path / "c.txt", ["abc", "de", "fgh", "ij"]), tmp_path / "d")
    train = load_split(tmp_path / "d", "train")
    meta = load_meta(tmp_path / "d")
    assert isinstance(train, np.memmap) and train.dtype == np.uint16 and meta["dtype"] == "uint16"
    assert not train.flags.writeable
    with pytest.raises(ValueError):
        train[0] = 1
    assert meta["tokenizer"] == "char" and meta["tokenizer_file"] == "tokenizer.json"
    assert meta["vocab_size"] == load_tokenizer(tmp_path / "d" / "tokenizer.json").vocab_size
    with pytest.raises(DataToolsError):
        load_split(tmp_path / "d", "training")
    with pytest.raises(DataToolsError):
        load_meta(tmp_path)


def test_large_vocabulary_uses_uint32(tmp_path):
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 70000) if not 0xD800 <= c < 0xE000 and c != 0xFFFD]
    tokenizer = CharTokenizer(chars + ["\ufffd"])
    meta = write_token_files(tmp_path / "d", tokenizer, ["\u4e00\u4e01", chars[-1]])
    ids = load_split(tmp_path / "d", "train")
    assert meta["dtype"] == "uint32" and ids.dtype == np.uint32
    assert tokenizer.decode(ids) == "\u4e00\u4e01<|endoftext|>"


def test_failed_tokenize_leaves_existing_data_dir_untouched(tmp_path):
    tokenize(corpus_file(tmp_path / "c.txt", ["abc", "de", "fgh"]), tmp_path / "d")
    before = {name: (tmp_path / "d" / name).read_bytes() for name in os.listdir(tmp_path / "d")}

    def documents():
        yield "first"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_token_files(tmp_path / "d", CharTokenizer.train("xyz"), documents())
    after = {name: (tmp_path / "d" / name).read_bytes() for name in os.listdir(tmp_path / "d")}
    assert after == before
    with pytest.raises(DataToolsError):
        write_token_files(tmp_path / "new", CharTokenizer.train("xyz"), [])
    assert not (tmp_path / "new").exists()


def test_text_file_without_separator_splits_at_blank_lines(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("First para\nline two\n\n\n  \nSecond para\n\nThird\n", encoding="utf-8")
    assert list(iter_documents(path)) == ["First para\nline two", "Second para", "Third"]


def test_iter_documents_streams_across_chunk_boundaries(tmp_path, monkeypatch):
    import data_tools.corpus as corpus_module
    monkeypatch.setattr(corpus_module, "_READ_CHUNK_BYTES", 5)
    documents = ["alpha \u03b1\u03b2", "beta\n\nwith blank", "gamma"]
    assert list(iter_documents(corpus_file(tmp_path / "c.txt", documents))) == documents
    (tmp_path / "t.txt").write_text("aa\n\nbb b\n\n\ncc", encoding="utf-8")
    assert list(iter_documents(tmp_path / "t.txt")) == ["aa", "bb b", "cc"]


def test_iter_documents_rejects_non_utf8(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"fine\n\n\xff\xfe bad")
    with pytest.raises(DataToolsError, match="UTF-8"):
        list(iter_documents(tmp_path / "bad.txt"))


def test_prepare_posts_xml_with_bpe(tmp_path):
    rows = []
    for q in range(6):
        rows.append(row(10 * q + 1, 1, f"<p>Why is $a_{q}&lt;b$?</p>", title=f"Question {q}"))
        rows.append(row(10 * q + 2, 2, "<p>Because $b-a&gt;0$.</p>", parent=10 * q + 1, score=q))
    posts = write_posts(tmp_path / "Posts.xml", rows)
    out = prepare(posts, tmp_path / "data", tokenizer="bpe", vocab_size=300, workers=1, progress=False,
                  max_answers=1)
    assert out == str(tmp_path / "data")
    meta = load_meta(out)
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] <= 300 and meta["options"]["max_answers"] == 1
    assert sorted(os.listdir(out)) == ["corpus.txt", "meta.json", "test.bin", "tokenizer.json", "train.bin", "val.bin"]
    documents = sum((decode_documents(out, s) for s in ("train", "val", "test")), [])
    assert sorted(documents) == sorted(iter_documents(os.path.join(out, "corpus.txt")))
    assert "Question 3\n\nWhy is $a_3<b$?\n\nAnswer (score 3):\nBecause $b-a>0$." in documents


def test_prepare_plain_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("one\n\ntwo\n\nthree\n\nfour\n", encoding="utf-8")
    prepare(path, tmp_path / "data")
    meta = load_meta(tmp_path / "data")
    assert meta["documents"] == {"train": 2, "val": 1, "test": 1}
    with pytest.raises(DataToolsError, match="min_score"):
        prepare(path, tmp_path / "data2", min_score=3)
    assert not (tmp_path / "data2").exists()


def test_meta_json_is_plain_json(tmp_path):
    tokenize(corpus_file(tmp_path / "c.txt", ["a", "b", "c"]), tmp_path / "d")
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert set(meta) >= {"tokenizer_file", "tokenizer", "vocab_size", "dtype", "tokens", "source", "options"}


def test_token_files_identical_for_1_and_2_workers(tmp_path):
    documents = [f"Doc {i}: let $x_{i} < y$ and\n    code {i}" * (1 + i % 3) for i in range(300)]
    corpus = corpus_file(tmp_path / "c.txt", documents)
    tokenize(corpus, tmp_path / "one", "bpe", 300, workers=1)
    tokenize(corpus, tmp_path / "two", "bpe", 300, workers=2)
    for name in ("train.bin", "val.bin", "test.bin", "tokenizer.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert len(decode_documents(tmp_path / "two", "train")) == 270
