"""Character and byte-level BPE tokenizers, both with one special token, "<|endoftext|>".

In both, "<|endoftext|>" in the text encodes to the single id `eot_id`, and decode gives it back.

CharTokenizer: one id per character. `CharTokenizer.train(texts, vocab_size=None)` takes the
vocabulary from the training text (all characters, or the most frequent ones so the vocabulary
has at most `vocab_size` entries). Id 0 is <|endoftext|>; the characters follow in code-point
order. Unknown characters: the replacement character U+FFFD is always in the vocabulary and every
character the vocabulary lacks encodes to its id (so decode gives U+FFFD there). Text made only of
known characters round-trips exactly.

BPETokenizer: ids 0-255 are the bytes of UTF-8, 256 is <|endoftext|>, and each learned merge adds
one id from 257 on. Text is first cut into pre-tokens (letters, a single digit, punctuation,
whitespace runs; a leading space stays with the word after it) and merges never cross a pre-token
boundary. Any string round-trips exactly (lone surrogates too, via "surrogatepass").
`BPETokenizer.train(texts, vocab_size)` learns vocab_size - 257 merges (fewer if the text runs out
of pairs), always merging the most frequent adjacent pair, ties broken by the smaller pair of ids.

Both save to / load from JSON (`save(path)`, `Class.load(path)`); `load_tokenizer(path)` picks
the class from the file's "kind".
"""

import collections
import heapq
import json
import re

import numpy as np

from .atomic import atomic_output
from .errors import DataToolsError

EOT = "<|endoftext|>"
UNKNOWN_CHAR = "\ufffd"

_PRETOKEN = re.compile(r" ?[^\W\d_]+| ?\d| ?[^\w\s]+|_+|\s+(?!\S)|\s+")


def _as_texts(texts):
    return [texts] if isinstance(texts, str) else texts


class _JsonFile:
    """`save(path)` and `Class.load(path)` through the subclass's to_json / from_json."""

    def save(self, path):
        """Write the tokenizer as JSON; an existing file is replaced only when writing succeeded."""
        _write_json(path, self.to_json())

    @classmethod
    def load(cls, path):
        return _load_as(path, cls)


class CharTokenizer(_JsonFile):
    kind = "char"

    def __init__(self, chars):
        """chars: the vocabulary's characters in id order, from id 1 (id 0 is <|endoftext|>)."""
        chars = list(chars)
        if UNKNOWN_CHAR not in chars:
            raise ValueError("the character vocabulary must contain U+FFFD")
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("the character vocabulary must be distinct single characters")
        self.chars = chars
        self.eot_id = 0
        self.vocab_size = len(chars) + 1
        self.unknown_id = chars.index(UNKNOWN_CHAR) + 1
        # Encoding looks code points up in a sorted array: fast on megabytes of text.
        code_points = np.array([ord(c) for c in chars], dtype=np.int64)
        order = np.argsort(code_points, kind="stable")
        self._sorted_code_points = code_points[order]
        self._ids_of_sorted = (order + 1).astype(np.int64)
        self._decode_table = [EOT] + chars

    @classmethod
    def train(cls, texts, vocab_size=None):
        """Vocabulary of the characters in `texts` (a string or an iterable of strings).

        With vocab_size, only the vocab_size - 2 most frequent characters are kept (ties by code
        point), the other two ids being <|endoftext|> and U+FFFD.
        """
        counts = collections.Counter()
        for text in _as_texts(texts):
            counts.update(text.replace(EOT, ""))
        counts.pop(UNKNOWN_CHAR, None)
        chars = sorted(counts)
        if vocab_size is not None:
            if vocab_size < 3:
                raise DataToolsError(f"a character vocabulary needs vocab_size >= 3, got {vocab_size}")
            chars = sorted(sorted(chars, key=lambda c: -counts[c])[: vocab_size - 2])
        return cls(sorted(chars + [UNKNOWN_CHAR]))

    def encode(self, text):
        return self.encode_array(text).tolist()

    def encode_array(self, text):
        """The ids of `text` as an int64 array."""
        pieces = text.split(EOT)
        arrays = []
        for number, piece in enumerate(pieces):
            if number:
                arrays.append(np.zeros(1, dtype=np.int64))
            if piece:
                arrays.append(self._ids_of(piece))
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)

    def _ids_of(self, piece):
        code_points = np.frombuffer(piece.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
        slots = np.searchsorted(self._sorted_code_points, code_points)
        slots = np.minimum(slots, len(self._sorted_code_points) - 1)
        known = self._sorted_code_points[slots] == code_points
        return np.where(known, self._ids_of_sorted[slots], self.unknown_id)

    def decode(self, ids):
        table = self._decode_table
        try:
            return "".join([table[i] for i in np.asarray(ids, dtype=np.int64).tolist()])
        except IndexError:
            raise ValueError(f"token id out of range for vocab_size {self.vocab_size}") from None

    def to_json(self):
        return {"kind": self.kind, "eot": EOT, "eot_id": self.eot_id, "unknown": UNKNOWN_CHAR,
                "chars": self.chars}

    @classmethod
    def from_json(cls, data):
        return cls(data["chars"])


class BPETokenizer(_JsonFile):
    kind = "bpe"
    eot_id = 256

    def __init__(self, merges):
        """merges: (left id, right id) pairs in the order learned; merge k makes id 257 + k."""
        self.merges = [tuple(int(i) for i in pair) for pair in merges]
        self.vocab_size = 257 + len(self.merges)
        self._rank = {pair: rank for rank, pair in enumerate(self.merges)}
        self._bytes_of = [bytes([b]) for b in range(256)] + [EOT.encode()]
        for left, right in self.merges:
            if not (0 <= left < len(self._bytes_of) and 0 <= right < len(self._bytes_of)) \
                    or self.eot_id in (left, right):
                raise ValueError(f"merge ({left}, {right}) refers to an id not defined before it")
            self._bytes_of.append(self._bytes_of[left] + self._bytes_of[right])
        self._cache = {}

    @classmethod
    def train(cls, texts, vocab_size):
        """Learn merges from `texts` (a string or an iterable of strings) up to `vocab_size` ids."""
        if vocab_size is None or vocab_size < 257:
            raise DataToolsError(f"a byte-level BPE vocabulary needs vocab_size >= 257, got {vocab_size}")
        word_counts = collections.Counter()
        for text in _as_texts(texts):
            for piece in text.split(EOT):
                word_counts.update(_PRETOKEN.findall(piece))
        words = []
        counts = []
        for word, count in word_counts.items():
            encoded = word.encode("utf-8", "surrogatepass")
            if len(encoded) > 1:
                words.append(list(encoded))
                counts.append(count)
        del word_counts

        pair_counts = collections.defaultdict(int)
        words_with = collections.defaultdict(set)
        for index, (word, count) in enumerate(zip(words, counts)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += count
                words_with[pair].add(index)
        heap = [(-count, pair) for pair, count in pair_counts.items()]
        heapq.heapify(heap)

        merges = []
        while len(merges) < vocab_size - 257 and heap:
            negative_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) != -negative_count or negative_count == 0:
                continue  # a stale heap entry; the pair's current count was pushed separately
            new_id = 257 + len(merges)
            merges.append(pair)
            changed = set()
            for index in words_with.pop(pair):
                word = words[index]
                merged = _merge_pair(word, pair, new_id)
                if len(merged) == len(word):
                    continue
                count = counts[index]
                for old in zip(word, word[1:]):
                    pair_counts[old] -= count
                    changed.add(old)
                for new in zip(merged, merged[1:]):
                    pair_counts[new] += count
                    words_with[new].add(index)
                    changed.add(new)
                words[index] = merged
            for changed_pair in changed:
                count = pair_counts[changed_pair]
                if count > 0:
                    heapq.heappush(heap, (-count, changed_pair))
                else:
                    del pair_counts[changed_pair]
                    words_with.pop(changed_pair, None)
        return cls(merges)

    def encode(self, text):
        ids = []
        pieces = text.split(EOT)
        for number, piece in enumerate(pieces):
            if number:
                ids.append(self.eot_id)
            for word in _PRETOKEN.findall(piece):
                cached = self._cache.get(word)
                if cached is None:
                    cached = self._encode_word(word)
                    if len(self._cache) >= 1 << 20:
                        self._cache.clear()
                    self._cache[word] = cached
                ids.extend(cached)
        return ids

    def encode_array(self, text):
        return np.array(self.encode(text), dtype=np.int64)

    def _encode_word(self, word):
        ids = list(word.encode("utf-8", "surrogatepass"))
        rank = self._rank
        while len(ids) > 1:
            best = min(zip(ids, ids[1:]), key=lambda pair: rank.get(pair, 1 << 60))
            if best not in rank:
                break
            ids = _merge_pair(ids, best, 257 + rank[best])
        return tuple(ids)

    def decode(self, ids):
        table = self._bytes_of
        try:
            data = b"".join([table[i] for i in np.asarray(ids, dtype=np.int64).tolist()])
        except IndexError:
            raise ValueError(f"token id out of range for vocab_size {self.vocab_size}") from None
        try:
            return data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:  # ids that did not come from encode may split a character
            return data.decode("utf-8", "replace")

    def to_json(self):
        return {"kind": self.kind, "eot": EOT, "eot_id": self.eot_id,
                "pretokenizer": _PRETOKEN.pattern, "merges": [list(pair) for pair in self.merges]}

    @classmethod
    def from_json(cls, data):
        if data.get("pretokenizer", _PRETOKEN.pattern) != _PRETOKEN.pattern:
            raise ValueError("tokenizer file was made with a different pre-tokenizer")
        return cls(data["merges"])


def _merge_pair(ids, pair, new_id):
    """`ids` with each non-overlapping occurrence of `pair`, left to right, replaced by new_id."""
    left, right = pair
    merged = []
    i = 0
    last = len(ids) - 1
    while i <= last:
        if i < last and ids[i] == left and ids[i + 1] == right:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


TOKENIZER_CLASSES = {CharTokenizer.kind: CharTokenizer, BPETokenizer.kind: BPETokenizer}


def load_tokenizer(path):
    """A CharTokenizer or BPETokenizer from a JSON file written by `save`."""
    data = _read_json(path)
    cls = TOKENIZER_CLASSES.get(data.get("kind"))
    if cls is None:
        raise DataToolsError(f"unknown tokenizer kind {data.get('kind')!r}", path)
    return _from_json(cls, data, path)


def _load_as(path, cls):
    data = _read_json(path)
    if data.get("kind") != cls.kind:
        raise DataToolsError(f"not a {cls.kind} tokenizer file (kind {data.get('kind')!r})", path)
    return _from_json(cls, data, path)


def _from_json(cls, data, path):
    try:
        return cls.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataToolsError(f"bad tokenizer file: {exc}", path) from None


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        raise DataToolsError("no such file", path) from None
    except (OSError, ValueError) as exc:
        raise DataToolsError(f"cannot read tokenizer JSON: {exc}", path) from None
    if not isinstance(data, dict):
        raise DataToolsError("tokenizer file must hold a JSON object", path)
    return data


def _write_json(path, data):
    with atomic_output(path) as temp_path, open(temp_path, "w", encoding="utf-8") as file:
        json.dump(data, file, ensure_ascii=True)
        file.write("\n")
