"""Character and byte-level BPE tokenizers: round trips, the special token, save/load."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_tools import BPETokenizer, CharTokenizer, DataToolsError, load_tokenizer, tokenizers

TRAINING_TEXT = ("Let $f(x) = x^2 < 4$ for all $x$ in the interval. Then the integral converges.\n\n"
                 "    def f(x):\n        return x * x\n\nThe the the then there these. 12345 + 67890 = 80235\n") * 20


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(TRAINING_TEXT, 300)


def test_char_round_trip_on_in_vocabulary_text():
    tokenizer = CharTokenizer.train(TRAINING_TEXT)
    ids = tokenizer.encode(TRAINING_TEXT)
    assert len(ids) == len(TRAINING_TEXT)
    assert tokenizer.decode(ids) == TRAINING_TEXT


def test_char_unknown_characters_map_to_replacement_character():
    tokenizer = CharTokenizer.train("abc")
    ids = tokenizer.encode("a\u03b5c")
    assert ids[1] == tokenizer.unknown_id and tokenizer.decode(ids) == "a\ufffdc"


def test_char_vocab_size_keeps_most_frequent_characters():
    tokenizer = CharTokenizer.train("aaaabbbcc d", vocab_size=5)
    assert tokenizer.vocab_size == 5
    assert tokenizer.decode(tokenizer.encode("abcd")) == "abc\ufffd"


def test_end_of_text_is_one_id_in_both_tokenizers(bpe):
    for tokenizer in (CharTokenizer.train(TRAINING_TEXT), bpe):
        ids = tokenizer.encode("the<|endoftext|>the")
        assert ids.count(tokenizer.eot_id) == 1
        assert tokenizer.encode("<|endoftext|>") == [tokenizer.eot_id]
        assert tokenizer.decode(ids) == "the<|endoftext|>the"
        assert 0 <= tokenizer.eot_id < tokenizer.vocab_size


def test_bpe_learns_merges_that_shorten_text(bpe):
    assert bpe.vocab_size == 300
    ids = bpe.encode(TRAINING_TEXT)
    assert len(ids) < len(TRAINING_TEXT.encode()) / 1.8
    assert max(ids) < bpe.vocab_size and bpe.decode(ids) == TRAINING_TEXT


def test_bpe_training_is_deterministic():
    assert BPETokenizer.train(TRAINING_TEXT, 300).merges == BPETokenizer.train(TRAINING_TEXT, 300).merges


def test_bpe_merges_most_frequent_pair_first():
    tokenizer = BPETokenizer.train("aaab aaab aaab xy", 258)
    assert tokenizer.merges == [(ord("a"), ord("a"))]


def test_bpe_stops_when_no_pairs_are_left():
    assert BPETokenizer.train("ab", 1000).vocab_size == 258


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=200))
def test_bpe_round_trips_any_string(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=300), st.integers(257, 320))
def test_bpe_trained_on_arbitrary_text_round_trips_it(text, vocab_size):
    tokenizer = BPETokenizer.train(text, vocab_size)
    assert tokenizer.decode(tokenizer.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_char_round_trips_the_text_it_was_trained_on(text):
    tokenizer = CharTokenizer.train(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_save_load_round_trip_and_load_tokenizer_picks_the_class(tmp_path, bpe):
    char = CharTokenizer.train(TRAINING_TEXT + "\ud800\udc00")
    for tokenizer, cls in ((char, CharTokenizer), (bpe, BPETokenizer)):
        path = tmp_path / f"{cls.kind}.json"
        tokenizer.save(path)
        assert json.loads(path.read_text())["kind"] == cls.kind
        for loaded in (cls.load(path), load_tokenizer(path)):
            assert type(loaded) is cls and loaded.vocab_size == tokenizer.vocab_size
            assert loaded.encode(TRAINING_TEXT) == tokenizer.encode(TRAINING_TEXT)
    with pytest.raises(DataToolsError):
        CharTokenizer.load(tmp_path / "bpe.json")


def test_load_tokenizer_rejects_bad_files(tmp_path):
    (tmp_path / "bad.json").write_text('{"kind": "wordpiece"}')
    (tmp_path / "broken.json").write_text('{"kind": "bpe", "merges": [[999, 1]]}')
    (tmp_path / "notjson.json").write_text("not json")
    for name in ("bad.json", "broken.json", "notjson.json", "missing.json"):
        with pytest.raises(DataToolsError):
            load_tokenizer(tmp_path / name)


def test_decode_accepts_numpy_arrays_and_rejects_out_of_range(bpe):
    assert bpe.decode(np.array(bpe.encode("limit"), dtype=np.uint16)) == "limit"
    with pytest.raises(ValueError):
        bpe.decode([bpe.vocab_size])
    with pytest.raises(DataToolsError):
        BPETokenizer.train("abc", 100)


def test_a_failed_save_leaves_the_existing_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "tok.json"
    CharTokenizer.train("abc").save(path)
    before = path.read_bytes()

    def broken_dump(obj, file, **kwargs):
        file.write('{"kind": "ch')     # half a file, then the failure
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenizers.json, "dump", broken_dump)
    with pytest.raises(KeyboardInterrupt):
        CharTokenizer.train("xyz").save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.json"]
