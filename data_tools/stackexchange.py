"""Stream the questions and answers out of a Stack Exchange Posts.xml (or a .7z holding one).

The dump is one `<posts>` root holding one `<row .../>` per post, every field an attribute. Rows are
read with lxml's iterparse; each row is cleared once read and finished rows are removed from the
root, so memory stays flat whatever the file size. Only questions (PostTypeId 1) and answers
(PostTypeId 2) come out; tag wikis and every other type are skipped even when they carry a Title.

Security: the parser never resolves entities, loads a DTD or touches the network, and a document
whose DOCTYPE declares entities (XXE, "billion laughs") is refused before parsing starts.
"""

import os
import re
import shutil
import subprocess
import tempfile
from collections import namedtuple

from lxml import etree

from .errors import DataToolsError

QUESTION = 1
ANSWER = 2

# kind: QUESTION or ANSWER; parent_id: the question an answer belongs to (None if absent);
# tags: tuple of tag names; body: the post's HTML; line: the row's line in the file.
Post = namedtuple("Post", "kind id parent_id score title tags body line")

_PROLOG_PEEK_BYTES = 1 << 16
_SEVEN_ZIP_PROGRAMS = ("7z", "7za", "7zr")


class PostsSource:
    """An open Posts.xml byte stream: a file, or `7z e -so ARCHIVE Posts.xml` for a .7z.

    `bytes_read` counts the uncompressed bytes handed to the parser so far; `total_bytes` is the
    file size for a plain file and None for an archive. Use as a context manager.
    """

    def __init__(self, path):
        self.path = str(path)
        _check_input_file(self.path)
        self._process = None
        if self.path.lower().endswith(".7z"):
            self.total_bytes = None
            self._stream = self._start_7z()
        else:
            self.total_bytes = os.path.getsize(self.path)
            try:
                self._stream = open(self.path, "rb")
            except OSError as exc:
                raise DataToolsError(f"cannot open: {exc.strerror}", self.path) from None
        self.bytes_read = 0
        self._head = b""

    def _start_7z(self):
        program = next((p for p in _SEVEN_ZIP_PROGRAMS if shutil.which(p)), None)
        if program is None:
            raise DataToolsError(
                "no 7z program on PATH to read this archive; install p7zip (7z, 7za or 7zr) or "
                "extract it first: 7z e ARCHIVE Posts.xml, then pass Posts.xml", self.path)
        # stderr goes to a file: a pipe nobody reads while parsing could fill up and stall 7z.
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [program, "e", "-so", self.path, "Posts.xml"],
            stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL)
        return self._process.stdout

    def check_prolog(self):
        """Read ahead the start of the document and refuse a DOCTYPE that declares entities."""
        head = self._stream.read(_PROLOG_PEEK_BYTES)
        self._head = head
        start = head.find(b"<!DOCTYPE")
        if start < 0:
            return
        line = head.count(b"\n", 0, start) + 1
        end = _doctype_end(head, start)
        if end < 0:
            raise DataToolsError("DOCTYPE declaration too long or not closed; refusing it", self.path, line)
        if b"<!ENTITY" in head[start:end]:
            raise DataToolsError(
                "DOCTYPE declares entities, which a Posts.xml never does; refused (entities are "
                "never expanded or resolved here)",
                self.path, line)

    def read(self, size=-1):
        if self._head:
            if size is None or size < 0:
                data = self._head + self._stream.read()
                self._head = b""
            else:
                data, self._head = self._head[:size], self._head[size:]
        else:
            data = self._stream.read(size)
        self.bytes_read += len(data)
        return data

    def close(self, check=False):
        """Close the stream; with check=True, report a failed 7z extraction."""
        self._stream.close()
        if self._process is not None:
            process, self._process = self._process, None
            if not check:
                process.kill()
            status = process.wait()
            self._stderr.seek(0)
            stderr = self._stderr.read().decode("utf-8", "replace")
            self._stderr.close()
            if check and status != 0:
                last = (stderr.strip().splitlines() or ["no message"])[-1]
                raise DataToolsError(f"7z failed to extract Posts.xml (status {status}): {last}", self.path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(check=exc_type is None)


def _check_input_file(path):
    if not os.path.exists(path):
        raise DataToolsError("no such file", path)
    if os.path.isdir(path):
        raise DataToolsError("is a directory, expected a Posts.xml or .7z file", path)
    if os.path.getsize(path) == 0:
        raise DataToolsError("empty file, expected a Posts.xml or .7z file", path)


def _doctype_end(head, start):
    """Index just past the DOCTYPE starting at `start`, or -1 when it does not end within `head`."""
    bracket = head.find(b"[", start)
    close = head.find(b">", start)
    if close < 0:
        return -1
    if 0 <= bracket < close:  # an internal subset: [ ... ] then >
        subset_end = head.find(b"]", bracket)
        if subset_end < 0:
            return -1
        close = head.find(b">", subset_end)
        return -1 if close < 0 else close + 1
    return close + 1


def iter_rows(source):
    """Yield the raw attributes of every question and answer row of an open PostsSource.

    Each item is (PostTypeId, Id, ParentId, Score, Title, Tags, Body, line): attribute strings or
    None as found, untouched so that reading stays cheap; post_from_row() turns one into a Post
    (the clean step does that in its worker processes).
    """
    source.check_prolog()
    rows = etree.iterparse(
        source, events=("end",), tag="row",
        resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False,
        remove_comments=True, remove_pis=True,
    )
    path = source.path
    root_checked = False
    try:
        for _, row in rows:
            if not root_checked:
                _check_root(row.getparent(), path)
                root_checked = True
            get = row.get
            post_type = get("PostTypeId")
            if post_type == "1" or post_type == "2":
                yield (post_type, get("Id"), get("ParentId"), get("Score"), get("Title"), get("Tags"),
                       get("Body"), row.sourceline)
            row.clear()
            parent = row.getparent()
            while row.getprevious() is not None:
                del parent[0]
    except etree.XMLSyntaxError as exc:
        raise DataToolsError(_syntax_message(exc), path, exc.lineno or None) from None
    if not root_checked:
        _check_root(rows.root, path)


def iter_posts(source):
    """Yield a Post for every question and answer row of an open PostsSource, in file order."""
    for row in iter_rows(source):
        yield post_from_row(row, source.path)


def _check_root(root, path):
    if root is None or root.tag != "posts":
        found = "none" if root is None else f"<{root.tag}>"
        raise DataToolsError(f"root element must be <posts>, found {found}", path,
                             None if root is None else root.sourceline)


def _syntax_message(exc):
    message = exc.msg or str(exc)
    # libxml2 appends its own ", line N, column M"; the line is reported separately.
    message = re.sub(r",? line \d+, column \d+$", "", message)
    return f"not a well-formed Posts.xml: {message}"


def post_from_row(row, path):
    """A Post from one item of iter_rows; raises DataToolsError for a non-integer number."""
    post_type, post_id, parent_id, score, title, tags, body, line = row
    post_id = _integer(post_id, "Id", path, line)
    if post_id is None:
        raise DataToolsError("row without an Id attribute", path, line)
    score = _integer(score, "Score", path, line) or 0
    body = body or ""
    if post_type == "1":
        return Post(QUESTION, post_id, None, score, " ".join((title or "").split()), parse_tags(tags), body, line)
    return Post(ANSWER, post_id, _integer(parent_id, "ParentId", path, line), score, "", (), body, line)


def _integer(text, name, path, line):
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise DataToolsError(f"{name}={text!r} is not an integer", path, line) from None


_ANGLE_TAG = re.compile(r"<([^<>]+)>")


def parse_tags(text):
    """Tag names from either dump format: "<a><b>" (older) or "|a|b|" (newer)."""
    if not text:
        return ()
    text = text.strip()
    if text.startswith("<"):
        return tuple(_ANGLE_TAG.findall(text))
    return tuple(tag for tag in text.split("|") if tag)
