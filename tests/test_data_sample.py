"""The bundled sample dump (data_tools/sample/Posts.xml) through clean and prepare."""

import os
import re

import pytest

from data_tools import clean, iter_documents, load_meta, prepare, sample_path

ANSWER_HEADER = re.compile(r"^Answer \(score (-?\d+)\):$", re.MULTILINE)


@pytest.fixture(scope="module")
def sample_documents(tmp_path_factory):
    assert os.path.isfile(sample_path()), "the bundled sample Posts.xml is missing"
    out = tmp_path_factory.mktemp("sample") / "corpus.txt"
    stats = clean(sample_path(), out, workers=2, progress=False)
    return stats, list(iter_documents(out))


def test_sample_path_points_into_the_package():
    assert sample_path().endswith(os.path.join("data_tools", "sample", "Posts.xml"))


def test_sample_gives_at_least_100_questions_and_250_answers(sample_documents):
    stats, documents = sample_documents
    assert len(documents) == stats.documents >= 100
    assert stats.answers_written >= 250


def test_sample_answers_are_numerically_sorted(sample_documents):
    _, documents = sample_documents
    string_order_would_differ = False
    for document in documents:
        scores = [int(s) for s in ANSWER_HEADER.findall(document)]
        assert scores == sorted(scores, reverse=True), document[:200]
        if [str(s) for s in scores] != sorted((str(s) for s in scores), reverse=True):
            string_order_would_differ = True
    assert string_order_would_differ  # the sample exercises the "9" above "10" trap


def test_sample_keeps_math_with_less_than_and_has_no_html_left(sample_documents):
    _, documents = sample_documents
    text = "\n".join(documents)
    assert re.search(r"\$[^$\n]*<[^$\n]*\$", text), "no inline math containing '<'"
    assert "&lt;" not in text and "&amp;" not in text and "<p>" not in text and "</li>" not in text


def test_sample_prepares_into_a_data_directory(tmp_path):
    prepare(sample_path(), tmp_path / "data", workers=1, progress=False)
    meta = load_meta(tmp_path / "data")
    assert all(meta["tokens"][split] > 0 for split in ("train", "val", "test"))
