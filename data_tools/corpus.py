"""The corpus file: one document per Stack Exchange thread, plain UTF-8 text.

Layout of one document (blocks separated by one blank line; the Tags line only when the question
has tags; one "Answer (score N):" block per kept answer, highest score first):

    How do I show that $a<b$ implies $a+c<b+c$?
    Tags: algebra-precalculus, inequality

    <question body as text>

    Answer (score 12):
    <answer body as text>

    Answer (score 3):
    <answer body as text>

File layout: every document is followed by "\\n" + DOC_SEPARATOR + "\\n", so the file reads
"doc1\\n<|endoftext|>\\ndoc2\\n<|endoftext|>\\n". Documents never begin or end with a newline and
never contain DOC_SEPARATOR itself (an occurrence inside a post is written as "<| endoftext |>").
"""

import codecs
import os
import re

from .errors import DataToolsError

DOC_SEPARATOR = "<|endoftext|>"
_SEPARATOR_ESCAPED = "<| endoftext |>"
_READ_CHUNK_BYTES = 1 << 20
_BLANK_LINES = re.compile(r"\n(?:[ \t\r]*\n)+")


def format_document(title, tags, question, answers):
    """One thread as text; `answers` is a list of (score, text) already in output order."""
    head = title
    if tags:
        head = (head + "\n" if head else "") + "Tags: " + ", ".join(tags)
    blocks = [head] if head else []
    if question:
        blocks.append(question)
    for score, text in answers:
        blocks.append(f"Answer (score {score}):\n{text}")
    return "\n\n".join(blocks).replace(DOC_SEPARATOR, _SEPARATOR_ESCAPED)


def write_document(file, text):
    """Append one document, with its separator, to a text file opened for writing."""
    file.write(text)
    file.write("\n" + DOC_SEPARATOR + "\n")


def iter_documents(path):
    """Yield the documents of a text file, streaming it in chunks.

    A file containing DOC_SEPARATOR (a corpus written by `clean`) is split on it, newlines
    trimmed at both ends of every piece. Any other text file is split into blocks at blank lines
    (one document per paragraph-like block). Empty and whitespace-only documents are skipped.
    Raises DataToolsError for a missing or non-UTF-8 file; an empty file has no documents.
    """
    path = str(path)
    separated = _contains(path, DOC_SEPARATOR.encode())
    decoder = codecs.getincrementaldecoder("utf-8")()
    pending = ""
    offset = 0
    try:
        with open(path, "rb") as file:
            while True:
                raw = file.read(_READ_CHUNK_BYTES)
                try:
                    pending += decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as exc:
                    raise DataToolsError(
                        f"not UTF-8 text (invalid byte near offset {offset + max(exc.start, 0)})", path) from None
                offset += len(raw)
                pieces = pending.split(DOC_SEPARATOR) if separated else _BLANK_LINES.split(pending)
                # The last piece may continue in the next chunk unless the file has ended.
                pending = "" if not raw else pieces.pop()
                for piece in pieces:
                    piece = piece.strip("\n") if separated else piece.strip()
                    if piece.strip():
                        yield piece
                if not raw:
                    return
    except OSError as exc:
        raise DataToolsError(f"cannot read: {exc.strerror}", path) from None


def _contains(path, needle):
    """Whether the file holds `needle`; also checks that it is an existing file."""
    if not os.path.exists(path):
        raise DataToolsError("no such file", path)
    if os.path.isdir(path):
        raise DataToolsError("is a directory, expected a text file", path)
    overlap = len(needle) - 1
    tail = b""
    with open(path, "rb") as file:
        while True:
            chunk = file.read(_READ_CHUNK_BYTES)
            if not chunk:
                return False
            if needle in tail + chunk:
                return True
            tail = (tail + chunk)[-overlap:]
