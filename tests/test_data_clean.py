"""Posts.xml -> corpus: grouping, numeric answer order, filters, determinism."""

import pytest

from data_tools import DOC_SEPARATOR, DataToolsError, clean, iter_documents
from data_tools.stackexchange import PostsSource, iter_posts, parse_tags
from test_data_helpers import row, write_posts


def clean_docs(tmp_path, rows, bom=False, **options):
    posts = write_posts(tmp_path / "Posts.xml", rows, bom=bom)
    out = tmp_path / "corpus.txt"
    options.setdefault("workers", 1)
    clean(posts, out, progress=False, **options)
    return list(iter_documents(out)), out.read_text(encoding="utf-8")


def test_answers_sorted_by_numeric_score_then_id(tmp_path):
    rows = [
        row(1, 1, "<p>Q</p>", title="T", score=5),
        row(2, 2, "<p>nine</p>", parent=1, score=9),
        row(3, 2, "<p>ten</p>", parent=1, score=10),
        row(4, 2, "<p>minus</p>", parent=1, score=-1),
        row(6, 2, "<p>hundred b</p>", parent=1, score=100),
        row(5, 2, "<p>hundred a</p>", parent=1, score=100),
    ]
    docs, _ = clean_docs(tmp_path, rows)
    assert docs == ["T\n\nQ\n\nAnswer (score 100):\nhundred a\n\nAnswer (score 100):\nhundred b\n\n"
                    "Answer (score 10):\nten\n\nAnswer (score 9):\nnine\n\nAnswer (score -1):\nminus"]


def test_file_layout_is_documents_each_followed_by_separator_line(tmp_path):
    rows = [row(1, 1, "<p>a</p>", title="A"), row(2, 1, "<p>b</p>", title="B")]
    _, text = clean_docs(tmp_path, rows)
    assert text == f"A\n\na\n{DOC_SEPARATOR}\nB\n\nb\n{DOC_SEPARATOR}\n"


def test_tag_wikis_with_title_and_other_types_are_not_questions(tmp_path):
    rows = [
        row(1, 4, "<p>excerpt</p>", title="wiki excerpt title"),
        row(2, 5, "<p>wiki body</p>", title="wiki title"),
        row(3, 1, "<p>real</p>", title="Real question"),
        row(4, 6, "<p>nomination</p>", title="x"),
        row(5, 2, "<p>answer to wiki</p>", parent=2, score=1),
    ]
    docs, _ = clean_docs(tmp_path, rows)
    assert docs == ["Real question\n\nreal"]


def test_mismatched_answer_count_is_still_emitted_with_answers_present(tmp_path):
    rows = [row(1, 1, "<p>Q</p>", title="T", answer_count=5), row(2, 2, "<p>only</p>", parent=1, score=1),
            row(3, 1, "<p>Q2</p>", title="U", answer_count=0), row(4, 2, "<p>surprise</p>", parent=3, score=2)]
    docs, _ = clean_docs(tmp_path, rows)
    assert docs == ["T\n\nQ\n\nAnswer (score 1):\nonly", "U\n\nQ2\n\nAnswer (score 2):\nsurprise"]


def test_orphan_answers_dropped_and_late_answers_grouped(tmp_path):
    rows = [
        row(1, 1, "<p>Q1</p>", title="one"),
        row(2, 1, "<p>Q2</p>", title="two"),
        row(3, 2, "<p>orphan</p>", parent=999, score=50),
        row(4, 2, "<p>no parent at all</p>", score=50),
        row(5, 2, "<p>for two</p>", parent=2, score=1),
        row(6, 1, "<p>Q3</p>", title="three"),
        row(7, 2, "<p>late for one</p>", parent=1, score=3),
    ]
    docs, text = clean_docs(tmp_path, rows)
    assert "orphan" not in text and "no parent" not in text
    assert docs == ["one\n\nQ1\n\nAnswer (score 3):\nlate for one", "two\n\nQ2\n\nAnswer (score 1):\nfor two",
                    "three\n\nQ3"]


def test_both_tag_formats_bom_and_missing_optional_attributes(tmp_path):
    rows = [
        row(1, 1, "<p>old</p>", title="Old", tags="<algebra><group-theory>"),
        row(2, 1, "<p>new</p>", title="New", tags="|calculus|limits|"),
        row(3, 1),  # no Score, Body text, Title or Tags
        row(4, 2, parent=1),  # answer without Score or Body
    ]
    docs, _ = clean_docs(tmp_path, rows, bom=True)
    assert docs == ["Old\nTags: algebra, group-theory\n\nold", "New\nTags: calculus, limits\n\nnew"]
    assert parse_tags("<a><b-c>") == ("a", "b-c") and parse_tags("|a|b-c|") == ("a", "b-c")
    assert parse_tags(None) == () and parse_tags("") == ()


def test_math_with_less_than_survives_the_xml_and_html_layers(tmp_path):
    # In the dump, "<" inside math is HTML-escaped and then XML-escaped: &amp;lt; in the file.
    rows = [row(1, 1, "<p>Show $a&lt;b$ and $c&gt;d$ &amp; $$x&lt;y$$</p>", title="Ineq $a<b$")]
    posts = write_posts(tmp_path / "Posts.xml", rows)
    assert "&amp;lt;" in open(posts, encoding="utf-8").read()
    docs, _ = clean_docs(tmp_path, rows)
    assert docs == ["Ineq $a<b$\n\nShow $a<b$ and $c>d$ & $$x<y$$"]


def test_options_min_score_max_answers_unanswered_limit(tmp_path):
    rows = [
        row(1, 1, "<p>Q1</p>", title="one"),
        row(2, 2, "<p>good</p>", parent=1, score=7),
        row(3, 2, "<p>ok</p>", parent=1, score=2),
        row(4, 2, "<p>bad</p>", parent=1, score=-3),
        row(5, 1, "<p>Q2</p>", title="two"),
        row(6, 2, "<p>weak</p>", parent=5, score=0),
        row(7, 1, "<p>Q3</p>", title="three"),
    ]
    docs, _ = clean_docs(tmp_path, rows, min_score=1)
    assert docs == ["one\n\nQ1\n\nAnswer (score 7):\ngood\n\nAnswer (score 2):\nok", "two\n\nQ2", "three\n\nQ3"]
    docs, _ = clean_docs(tmp_path, rows, max_answers=1)
    assert docs[0] == "one\n\nQ1\n\nAnswer (score 7):\ngood" and docs[1] == "two\n\nQ2\n\nAnswer (score 0):\nweak"
    docs, _ = clean_docs(tmp_path, rows, min_score=1, unanswered=False)
    assert [d.split("\n")[0] for d in docs] == ["one"]
    docs, _ = clean_docs(tmp_path, rows, unanswered=False)
    assert [d.split("\n")[0] for d in docs] == ["one", "two"]
    docs, _ = clean_docs(tmp_path, rows, limit=2)
    assert [d.split("\n")[0] for d in docs] == ["one", "two"]
    docs, _ = clean_docs(tmp_path, rows, limit=0)
    assert docs == []
    docs, _ = clean_docs(tmp_path, rows, limit=1, min_score=0, unanswered=False)
    assert [d.split("\n")[0] for d in docs] == ["one"]
    docs, _ = clean_docs(tmp_path, rows, limit=2, min_score=0, unanswered=False)
    assert [d.split("\n")[0] for d in docs] == ["one", "two"]


def test_bad_option_values_raise(tmp_path):
    posts = write_posts(tmp_path / "Posts.xml", [row(1, 1, "x", title="t")])
    for options in ({"max_answers": -1}, {"limit": -2}, {"workers": 0}, {"min_score": "3"}):
        with pytest.raises(DataToolsError):
            clean(posts, tmp_path / "out.txt", progress=False, **options)
    assert not (tmp_path / "out.txt").exists()


def test_separator_inside_a_post_cannot_split_a_document(tmp_path):
    docs, _ = clean_docs(tmp_path, [row(1, 1, "<p>see <|endoftext|> here</p>", title="T")])
    assert len(docs) == 1 and DOC_SEPARATOR not in docs[0]


def test_output_identical_for_1_and_2_workers_across_many_chunks(tmp_path, monkeypatch):
    import data_tools.clean_posts as clean_module
    monkeypatch.setattr(clean_module, "CHUNK_POSTS", 7)  # many chunks in flight at once
    rows = []
    post_id = 0
    for q in range(60):
        post_id += 1
        question = post_id
        rows.append(row(question, 1, f"<p>Question {q} with $x_{q}&lt;y$</p><ul><li>a</li></ul>", title=f"Q{q}"))
        for a in range(q % 4):
            post_id += 1
            rows.append(row(post_id, 2, f"<pre><code>  code {a}\n    more</code></pre><p>ans {a}</p>",
                            parent=question, score=(a * 7) % 5))
    posts = write_posts(tmp_path / "Posts.xml", rows)
    clean(posts, tmp_path / "one.txt", workers=1, progress=False)
    clean(posts, tmp_path / "two.txt", workers=2, progress=False)
    one = (tmp_path / "one.txt").read_bytes()
    assert one == (tmp_path / "two.txt").read_bytes()
    assert one.count(DOC_SEPARATOR.encode()) == 60 and b"  code 1\n    more" in one


def test_reader_yields_only_questions_and_answers_in_file_order(tmp_path):
    posts = write_posts(tmp_path / "Posts.xml", [row(1, 1, "b", title="t", score=3), row(2, 5, "w", title="x"),
                                                 row(3, 2, "a", parent=1, score=-2)])
    with PostsSource(posts) as source:
        found = [(p.kind, p.id, p.parent_id, p.score, p.title, p.body) for p in iter_posts(source)]
    assert found == [(1, 1, None, 3, "t", "b"), (2, 3, 1, -2, "", "a")]


def test_non_integer_score_is_an_error_with_line(tmp_path):
    posts = write_posts(tmp_path / "Posts.xml", [row(1, 1, "b", title="t"), row(2, 2, "a", parent=1, score="ten")])
    with pytest.raises(DataToolsError) as info:
        clean(posts, tmp_path / "out.txt", workers=1, progress=False)
    assert info.value.line == 4 and "Score" in str(info.value)
    assert not (tmp_path / "out.txt").exists()


def test_limit_skips_questions_past_it_but_keeps_late_answers(tmp_path):
    rows = [row(1, 1, "<p>Q1</p>", title="one"), row(2, 1, "<p>Q2</p>", title="two"),
            row(3, 2, "<p>for two</p>", parent=2, score=1), row(4, 1, "<p>Q3</p>", title="three"),
            row(5, 2, "<p>for three</p>", parent=4, score=1), row(6, 2, "<p>late for one</p>", parent=1, score=9)]
    for workers in (1, 2):
        docs, _ = clean_docs(tmp_path, rows, limit=2, workers=workers)
        assert docs == ["one\n\nQ1\n\nAnswer (score 9):\nlate for one", "two\n\nQ2\n\nAnswer (score 1):\nfor two"]
    posts = write_posts(tmp_path / "Posts.xml", rows)
    stats = clean(posts, tmp_path / "c.txt", limit=1, workers=1, progress=False)
    assert (stats.questions, stats.answers, stats.documents) == (1, 1, 1)
