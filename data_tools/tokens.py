"""Token files: a data directory the training script reads with memory maps.

A data directory holds
    train.bin, val.bin, test.bin   flat token ids, native byte order, uint16 when the vocabulary
                                   fits in 65536 ids, else uint32; every document is followed by
                                   the tokenizer's <|endoftext|> id
    tokenizer.json                 the tokenizer (load with tokenizers.load_tokenizer)
    meta.json                      tokenizer file and kind, vocab_size, eot_id, dtype, token and
                                   document counts per split, source, options

Split by document, deterministic and streaming (no seed, no shuffling). Document 0 goes to train.
The documents after it are numbered k = 0, 1, ...; with fractions v and t, document k goes to val
when ceil((k + 1) * v) > ceil(k * v), i.e. k = 0, 20, 40, ... for v = 0.05; those not taken are
numbered r = 0, 1, ... and the same rule with t / (1 - v) sends r = 0, 19, 38, ... to test. Val
and test are thus spread evenly over the corpus (which is in question order, i.e. by time); any
corpus of 3 or more documents has non-empty train, val and test splits, and 1 document is train.
"""

import contextlib
import json
import os
import sys

import numpy as np

from .atomic import atomic_output
from .corpus import iter_documents
from .errors import DataToolsError
from .parallel import ProgressBar, batched, ordered_map
from .tokenizers import BPETokenizer, CharTokenizer

SPLITS = ("train", "val", "test")
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"
DEFAULT_BPE_VOCAB_SIZE = 4096
DEFAULT_BPE_TRAIN_CHARS = 5_000_000
_FRACTION_SCALE = 1_000_000
_FLUSH_TOKENS = 1 << 20


class DocumentSplitter:
    """Assigns documents, in order, to "train", "val" or "test" (see the module docstring)."""

    def __init__(self, val_fraction=0.05, test_fraction=0.05):
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise DataToolsError(
                f"split fractions must be >= 0 and leave some training data, got val {val_fraction}, "
                f"test {test_fraction}")
        # Fractions as integers per million, so the rule is exact arithmetic.
        self._val = round(val_fraction * _FRACTION_SCALE)
        self._test = round(test_fraction / (1 - val_fraction) * _FRACTION_SCALE)
        self._index = -1
        self._rest_index = 0

    @staticmethod
    def _takes(index, per_million):
        ceil_after = -(-(index + 1) * per_million // _FRACTION_SCALE)
        ceil_before = -(-index * per_million // _FRACTION_SCALE)
        return ceil_after > ceil_before

    def next_split(self):
        index = self._index
        self._index += 1
        if index < 0:
            return "train"
        if self._takes(index, self._val):
            return "val"
        rest = self._rest_index
        self._rest_index += 1
        return "test" if self._takes(rest, self._test) else "train"


def write_token_files(out_dir, tokenizer, documents, *, val_fraction=0.05, test_fraction=0.05,
                      source=None, options=None, workers=1, progress=None):
    """Encode `documents` (an iterable of strings) into a data directory; return the meta dict.

    workers: processes encoding documents (None: one per CPU); the files do not depend on it.
    progress: show a progress bar on stderr (None: only when stderr is a terminal).

    All files are written to temporary names and renamed into place only once everything is
    encoded, meta.json last; a failed or interrupted run leaves an existing directory as it was
    (and removes the directory if this call created it and it is still empty).
    """
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataToolsError("output exists and is not a directory", out_dir)
    splitter = DocumentSplitter(val_fraction, test_fraction)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise DataToolsError(f"workers must be an integer >= 1, got {workers!r}")
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    created = not os.path.exists(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    try:
        with contextlib.ExitStack() as outputs:
            # Entered first, renamed last: meta.json appears only when the other files are there.
            meta_temp = outputs.enter_context(atomic_output(os.path.join(out_dir, META_FILE)))
            tokenizer_temp = outputs.enter_context(atomic_output(os.path.join(out_dir, TOKENIZER_FILE)))
            files = {}
            for split in SPLITS:
                temp = outputs.enter_context(atomic_output(os.path.join(out_dir, split + ".bin")))
                files[split] = outputs.enter_context(open(temp, "wb"))
            tokens = dict.fromkeys(SPLITS, 0)
            document_counts = dict.fromkeys(SPLITS, 0)
            buffers = {split: [] for split in SPLITS}
            buffered = dict.fromkeys(SPLITS, 0)
            eot = np.array([tokenizer.eot_id], dtype=np.int64)
            bar = ProgressBar(desc="tokenize", unit=" docs", file=sys.stderr, dynamic_ncols=True,
                       disable=(None if progress is None else not progress))
            encoded = _encode_in_order(tokenizer, documents, workers or os.cpu_count() or 1)
            for ids in encoded:
                bar.update()
                split = splitter.next_split()
                buffers[split] += (ids, eot)
                buffered[split] += len(ids) + 1
                document_counts[split] += 1
                if buffered[split] >= _FLUSH_TOKENS:
                    tokens[split] += _flush(buffers[split], files[split], dtype)
                    buffered[split] = 0
            bar.close()
            for split in SPLITS:
                tokens[split] += _flush(buffers[split], files[split], dtype)
                files[split].close()
            if document_counts["train"] == 0:
                raise DataToolsError("no documents to tokenize", source)
            tokenizer.save(tokenizer_temp)
            meta = {
                "format": 1,
                "tokenizer_file": TOKENIZER_FILE,
                "tokenizer": tokenizer.kind,
                "vocab_size": tokenizer.vocab_size,
                "eot_id": tokenizer.eot_id,
                "dtype": dtype.name,
                "tokens": tokens,
                "documents": document_counts,
                "split": {"val_fraction": val_fraction, "test_fraction": test_fraction,
                          "rule": "by document, interleaved; see data_tools/tokens.py"},
                "source": None if source is None else str(source),
                "options": options or {},
            }
            with open(meta_temp, "w", encoding="utf-8") as file:
                json.dump(meta, file, indent=2)
                file.write("\n")
        return meta
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)
        raise


_ENCODE_CHUNK_DOCUMENTS = 64
_worker_tokenizer = None


def _set_worker_tokenizer(tokenizer):
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_documents(documents):
    return [_worker_tokenizer.encode_array(document) for document in documents]


def _encode_in_order(tokenizer, documents, workers):
    """Yield the id array of each document, in order, encoded in `workers` processes."""
    chunks = batched(documents, _ENCODE_CHUNK_DOCUMENTS)
    encoded = ordered_map(_encode_documents, chunks, workers, _set_worker_tokenizer, (tokenizer,))
    try:
        for arrays in encoded:
            yield from arrays
    finally:
        encoded.close()


def _flush(arrays, file, dtype):
    if not arrays:
        return 0
    ids = np.concatenate(arrays)
    arrays.clear()
    ids.astype(dtype).tofile(file)
    return len(ids)


def train_tokenizer(corpus_path, kind="char", vocab_size=None, train_chars=None):
    """Train a tokenizer on the documents of `corpus_path`.

    char: on every document (vocab_size, if given, caps the vocabulary by frequency).
    bpe: on the first `train_chars` characters' worth of documents (default 5 million), with
    vocab_size ids (default 4096).
    """
    if kind == "char":
        limit = train_chars
    elif kind == "bpe":
        limit = DEFAULT_BPE_TRAIN_CHARS if train_chars is None else train_chars
        vocab_size = DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size
        if vocab_size < 257:
            raise DataToolsError(f"bpe vocab_size must be at least 257, got {vocab_size}")
    else:
        raise DataToolsError(f"unknown tokenizer {kind!r}; choose char or bpe")
    texts = _first_chars(iter_documents(corpus_path), limit)
    if kind == "char":
        return CharTokenizer.train(texts, vocab_size)
    return BPETokenizer.train(list(texts), vocab_size)


def _first_chars(documents, limit):
    total = 0
    for document in documents:
        if limit is not None and total >= limit:
            return
        total += len(document)
        yield document


def tokenize(corpus_path, out_dir, tokenizer="char", vocab_size=None, *, train_chars=None,
             val_fraction=0.05, test_fraction=0.05, source=None, options=None, workers=None,
             progress=None):
    """The `tokenize` step: train a tokenizer on a corpus file and write the data directory.

    corpus_path: a corpus written by `clean`, or any UTF-8 text (see corpus.iter_documents).
    Returns the meta dict written to meta.json.
    """
    trained = train_tokenizer(corpus_path, tokenizer, vocab_size, train_chars)
    all_options = {"tokenizer": tokenizer, "vocab_size": vocab_size, "train_chars": train_chars}
    all_options.update(options or {})
    return write_token_files(out_dir, trained, iter_documents(corpus_path), val_fraction=val_fraction,
                             test_fraction=test_fraction, source=source or corpus_path,
                             options=all_options, workers=workers, progress=progress)


def load_meta(data_dir):
    """The meta.json of a data directory as a dict."""
    path = os.path.join(os.fspath(data_dir), META_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError:
        raise DataToolsError("no meta.json: not a data directory written by data_tools", data_dir) from None
    except (OSError, ValueError) as exc:
        raise DataToolsError(f"cannot read meta.json: {exc}", path) from None


def load_split(data_dir, split):
    """The token ids of one split ("train", "val" or "test") as a read-only memory map.

    An empty split comes back as a read-only empty array of the same dtype (a file of length zero
    cannot be memory-mapped).
    """
    if split not in SPLITS:
        raise DataToolsError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    meta = load_meta(data_dir)
    dtype = np.dtype(meta["dtype"])
    path = os.path.join(os.fspath(data_dir), split + ".bin")
    if not os.path.exists(path):
        raise DataToolsError("missing token file", path)
    if os.path.getsize(path) == 0:
        empty = np.zeros(0, dtype=dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=dtype, mode="r")
