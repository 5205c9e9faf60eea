"""A temporary on-disk store that groups cleaned answers under their questions.

An answer may come anywhere after its question in Posts.xml (often years later, millions of rows
on), so no thread is complete before the whole file is read. Holding every body in memory would
not scale to the full dump; this store keeps them in a throwaway SQLite file instead and hands the
threads back in question order with answers sorted by numeric score.
"""

import os
import sqlite3
import tempfile


class ThreadStore:
    """Questions and answers, added in file order; `threads()` reads them back grouped.

    The database file lives in `directory` and is deleted by close() (also via `with`).
    """

    def __init__(self, directory):
        handle, self.path = tempfile.mkstemp(prefix=".threads-", suffix=".sqlite-tmp", dir=directory)
        os.close(handle)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA temp_store = FILE;
            PRAGMA cache_size = -16384;
            CREATE TABLE questions (seq INTEGER PRIMARY KEY, id INTEGER, title TEXT, tags TEXT, body TEXT);
            CREATE TABLE answers (parent INTEGER, score INTEGER, id INTEGER, body TEXT);
            BEGIN;
            """
        )
        self.questions = 0
        self.answers = 0

    def add_questions(self, rows):
        """rows: (id, title, tags joined by "\\n", cleaned body) in file order."""
        self._db.executemany(
            "INSERT INTO questions (id, title, tags, body) VALUES (?, ?, ?, ?)", rows)
        self.questions += len(rows)

    def add_answers(self, rows):
        """rows: (parent id, score, id, cleaned body); answers without a parent are not stored."""
        self._db.executemany("INSERT INTO answers (parent, score, id, body) VALUES (?, ?, ?, ?)", rows)
        self.answers += len(rows)

    def threads(self, min_score=None):
        """Yield (title, tags tuple, question body, [(score, answer body), ...]) per question.

        Questions come in file order. Answers are those whose ParentId names the question, scoring
        at least `min_score`, highest score first, equal scores by ascending Id; answers naming no
        stored question (orphans) never come out.
        """
        self._db.execute("COMMIT")
        self._db.execute("CREATE INDEX answers_by_parent ON answers (parent, score DESC, id)")
        floor = -(1 << 62) if min_score is None else int(min_score)
        # One pass: questions in file order, each followed by its answers through the index
        # (SQLite needs no sort for this ORDER BY; a question without answers comes once, with NULLs).
        rows = self._db.execute(
            "SELECT q.seq, q.title, q.tags, q.body, a.score, a.body FROM questions AS q "
            "LEFT JOIN answers AS a ON a.parent = q.id AND a.score >= ? "
            "ORDER BY q.seq, a.score DESC, a.id", (floor,))
        thread = None
        current_seq = None
        for seq, title, tags, body, score, answer in rows:
            if seq != current_seq:
                if thread is not None:
                    yield thread
                current_seq = seq
                thread = (title, tuple(tags.split("\n")) if tags else (), body, [])
            if score is not None:
                thread[3].append((score, answer))
        if thread is not None:
            yield thread

    def close(self):
        if self._db is not None:
            self._db.close()
            self._db = None
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
