"""The `prepare` step: clean (when the input is a dump) and tokenize, into one data directory."""

import os

from .atomic import atomic_output
from .clean_posts import clean
from .errors import DataToolsError
from .tokens import tokenize

CORPUS_FILE = "corpus.txt"
CLEAN_OPTIONS = ("min_score", "max_answers", "unanswered", "limit", "workers", "progress")


def input_kind(path):
    """Return "posts" for a Posts.xml or .7z input, "text" for a text file (by suffix, else content)."""
    path = os.fspath(path)
    lower = path.lower()
    if lower.endswith((".xml", ".7z")):
        return "posts"
    if lower.endswith(".txt"):
        return "text"
    try:
        with open(path, "rb") as file:
            head = file.read(512)
    except FileNotFoundError:
        raise DataToolsError("no such file", path) from None
    except IsADirectoryError:
        raise DataToolsError("is a directory, expected a Posts.xml, .7z or text file", path) from None
    except OSError as exc:
        raise DataToolsError(f"cannot read: {exc.strerror}", path) from None
    return "posts" if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<") else "text"


def prepare(input_path, out_dir, tokenizer="char", vocab_size=None, *, train_chars=None,
            val_fraction=0.05, test_fraction=0.05, **clean_options):
    """Turn a Posts.xml / .7z / text file into a data directory and return `out_dir`.

    A dump is cleaned (clean_options: min_score, max_answers, unanswered, limit, workers,
    progress; see clean_posts.clean) into out_dir/corpus.txt, which is then tokenized. A text
    file is tokenized as it is (split into documents by corpus.iter_documents). The tokenizer
    options are those of tokens.tokenize; workers and progress apply to both steps.
    """
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataToolsError("output exists and is not a directory", out_dir)
    kind = input_kind(input_path)
    token_options = dict(train_chars=train_chars, val_fraction=val_fraction, test_fraction=test_fraction,
                         workers=clean_options.get("workers"), progress=clean_options.get("progress"))
    unknown = set(clean_options) - set(CLEAN_OPTIONS)
    if unknown:
        raise TypeError(f"prepare() got unexpected options: {', '.join(sorted(unknown))}")
    if kind == "text":
        used = [name for name in ("min_score", "max_answers", "limit") if clean_options.get(name) is not None]
        if clean_options.get("unanswered") is False:
            used.append("unanswered")
        if used:
            raise DataToolsError(f"option(s) {', '.join(used)} only apply to a Posts.xml or .7z input",
                                 input_path)
        tokenize(input_path, out_dir, tokenizer, vocab_size, source=input_path, **token_options)
        return out_dir

    created = not os.path.exists(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    try:
        with atomic_output(os.path.join(out_dir, CORPUS_FILE)) as corpus_temp:
            stats = clean(input_path, corpus_temp, **clean_options)
            options = {k: v for k, v in clean_options.items() if k not in ("progress", "workers")}
            options["corpus_file"] = CORPUS_FILE
            options["documents_cleaned"] = stats.documents
            tokenize(corpus_temp, out_dir, tokenizer, vocab_size, source=input_path,
                     options=options, **token_options)
    except BaseException:
        if created:
            try:
                os.rmdir(out_dir)
            except OSError:
                pass
        raise
    return out_dir
