"""The `clean` step: Posts.xml (or .7z) -> corpus text file, one document per thread.

Rows are read by one process and handed in fixed-size chunks to worker processes that turn the HTML
bodies into text; chunk results are taken back in the order the chunks were sent, so the output is
the same whatever the number of workers. Cleaned posts go to a temporary SQLite store (answers can
come anywhere after their question), and once the file is read the threads are written out in
question order to a temporary file that replaces the output only at the very end.
"""

import collections
import functools
import os
import sys
import time

from lxml import etree

from . import corpus
from .atomic import atomic_output
from .errors import DataToolsError
from .html_text import html_to_text
from .parallel import ProgressBar, batched, ordered_map
from .stackexchange import QUESTION, PostsSource, iter_rows, post_from_row
from .thread_store import ThreadStore

CHUNK_POSTS = 2048  # rows per worker task: large enough that per-task overhead is small

CleanStats = collections.namedtuple(
    "CleanStats", "documents questions answers answers_written input_bytes output_bytes seconds")


def clean(input_path, output_path, *, min_score=None, max_answers=None, unanswered=True,
          limit=None, workers=None, progress=None):
    """Write the corpus of `input_path` (Posts.xml or .7z) to `output_path`; return CleanStats.

    min_score: drop answers scoring below it (None keeps all).
    max_answers: keep at most this many answers per question, the best first (None keeps all).
    unanswered: whether questions left with no answer (after min_score) are written.
    limit: stop after writing this many documents (the whole file is still read, since answers
        may appear anywhere after their question; with `unanswered`, rows that cannot be written
        are not cleaned or stored).
    workers: processes cleaning HTML (None: one per CPU; 1: clean in this process).
    progress: show a progress bar on stderr (None: only when stderr is a terminal).
    """
    min_score = _optional_int(min_score, "min_score")
    max_answers = _optional_int(max_answers, "max_answers", minimum=0)
    limit = _optional_int(limit, "limit", minimum=0)
    workers = _optional_int(workers, "workers", minimum=1) or os.cpu_count() or 1
    started = time.perf_counter()
    directory = os.path.dirname(os.path.abspath(output_path))
    if os.path.exists(output_path) and os.path.exists(input_path) and os.path.samefile(input_path, output_path):
        raise DataToolsError("output would overwrite the input", output_path)

    with atomic_output(output_path) as temp_path, ThreadStore(directory) as store:
        with PostsSource(input_path) as source:
            rows = iter_rows(source)
            if limit is not None and unanswered:
                rows = _rows_that_can_be_written(rows, limit)
            _read_into_store(source, rows, store, workers, progress)
            input_bytes = source.bytes_read
        documents = answers_written = 0
        with open(temp_path, "w", encoding="utf-8", newline="\n") as out:
            for title, tags, question, answers in store.threads(min_score):
                if limit is not None and documents >= limit:
                    break
                answers = [(score, text) for score, text in answers if text]
                if max_answers is not None:
                    answers = answers[:max_answers]
                if not answers and not unanswered:
                    continue
                corpus.write_document(out, corpus.format_document(title, tags, question, answers))
                documents += 1
                answers_written += len(answers)
            output_bytes = out.tell()
        return CleanStats(documents, store.questions, store.answers, answers_written,
                          input_bytes, output_bytes, time.perf_counter() - started)


def _read_into_store(source, rows, store, workers, progress):
    bar = ProgressBar(total=source.total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
               desc="clean", file=sys.stderr, disable=(None if progress is None else not progress),
               dynamic_ncols=True)
    posts_seen = 0
    shown_bytes = 0
    cleaned = ordered_map(functools.partial(clean_rows, path=source.path), batched(rows, CHUNK_POSTS), workers)
    try:
        for rows_in_chunk, questions, answers in cleaned:
            store.add_questions(questions)
            store.add_answers(answers)
            posts_seen += rows_in_chunk
            bar.update(source.bytes_read - shown_bytes)
            shown_bytes = source.bytes_read
            bar.set_postfix(posts=posts_seen, refresh=False)
    finally:
        cleaned.close()  # stops the worker pool now, not whenever the generator is collected
        bar.close()


def _rows_that_can_be_written(rows, limit):
    """When every question is written, only the first `limit` questions and their answers can
    reach the output: skip cleaning and storing the rest (the file is still read to the end)."""
    kept_ids = set()
    for row in rows:
        post_type, post_id, parent_id = row[:3]
        try:
            if post_type == "1":
                if len(kept_ids) >= limit:
                    continue
                kept_ids.add(int(post_id))
            elif parent_id is None or int(parent_id) not in kept_ids:
                continue
        except ValueError:
            pass  # not an integer: let post_from_row report it
        yield row


def clean_rows(rows, path):
    """Worker task: raw rows (from iter_rows) -> (row count, question rows, answer rows) for the store.

    Question rows are (id, title, tags joined by newlines, text); answer rows are
    (parent id, score, id, text). Answers without a ParentId are orphans and dropped here.
    """
    questions = []
    answers = []
    for row in rows:
        post = post_from_row(row, path)
        if post.kind == QUESTION:
            questions.append((post.id, post.title, "\n".join(post.tags), _text_of(post, path)))
        elif post.parent_id is not None:
            answers.append((post.parent_id, post.score, post.id, _text_of(post, path)))
    return len(rows), questions, answers


def _text_of(post, path):
    try:
        return html_to_text(post.body)
    except (ValueError, RecursionError, etree.LxmlError) as exc:
        raise DataToolsError(f"cannot turn the Body of post {post.id} into text: {exc}", path, post.line) from None


def _optional_int(value, name, minimum=None):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataToolsError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise DataToolsError(f"{name} must be at least {minimum}, got {value}")
    return value
