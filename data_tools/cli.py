"""Command line: python -m data_tools clean | tokenize | prepare (see --help of each)."""

import argparse
import sys

from .clean_posts import clean
from .errors import DataToolsError
from .pipeline import prepare
from .tokens import load_meta, tokenize

_DESCRIPTION = """\
Turn a Stack Exchange dump into training data for tinygrad_llama.

  clean     Posts.xml or .7z -> corpus text file, one document per question thread
  tokenize  corpus text file -> data directory (train/val/test .bin, tokenizer.json, meta.json)
  prepare   both: Posts.xml, .7z or a text file -> data directory (with corpus.txt)

Errors are reported as one line "error: FILE[:LINE]: what is wrong" with exit status 1
(130 when interrupted); a failed run leaves existing outputs untouched and no partial files.
"""

_CORPUS_FORMAT = """\
corpus format: one document per question, documents separated by a line "<|endoftext|>":
  Title of the question
  Tags: tag-one, tag-two

  question text

  Answer (score 12):
  best answer text

  Answer (score 3):
  next answer text
  <|endoftext|>
Answers are sorted by numeric score, highest first, equal scores by Id. HTML is turned into text
with math ($...$, $$...$$, \\begin{align}...) kept exactly, code blocks kept verbatim, list items
as "- " or "1. " lines, quotes as "> " lines. Tag wikis and other non-question rows are skipped;
answers whose question is absent are dropped; AnswerCount is ignored (the answers present count).
A .7z input is read through `7z e -so ARCHIVE Posts.xml` (7z, 7za or 7zr must be on PATH).
"""

_TOKENS_FORMAT = """\
data directory: train.bin, val.bin, test.bin (flat uint16 ids, uint32 if the vocabulary has more
than 65536 ids; every document ends with the <|endoftext|> id), tokenizer.json, meta.json.
Documents are split 90/5/5 by default, interleaved in corpus order (document 0 in train, then
every 20th in val and in test), so 3 or more documents always give non-empty val and test.
A text file given to tokenize/prepare is split on "<|endoftext|>" if it contains it, else at
blank lines (one document per paragraph).
"""


def _add_clean_options(parser):
    group = parser.add_argument_group("clean options")
    group.add_argument("--min-score", type=int, metavar="N",
                       help="drop answers scoring below N (default: keep all)")
    group.add_argument("--max-answers", type=int, metavar="N",
                       help="keep at most N answers per question, best first (default: all)")
    group.add_argument("--unanswered", action=argparse.BooleanOptionalAction, default=True,
                       help="write questions left without answers (default: yes)")
    group.add_argument("--limit", type=int, metavar="N",
                       help="write at most N documents (the whole input is still read)")


def _add_run_options(parser):
    group = parser.add_argument_group("run options")
    group.add_argument("--workers", type=int, metavar="N",
                       help="worker processes cleaning HTML / encoding documents (default: one per CPU; "
                            "1: no extra process); the output does not depend on it")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bar on stderr (default: when stderr is a terminal)")


def _add_tokenize_options(parser):
    group = parser.add_argument_group("tokenize options")
    group.add_argument("--tokenizer", choices=("char", "bpe"), default="char",
                       help="char: one id per character; bpe: byte-level BPE (default: char)")
    group.add_argument("--vocab-size", type=int, metavar="N",
                       help="bpe: number of ids including 256 bytes and <|endoftext|> (default 4096); "
                            "char: keep only the N-2 most frequent characters (default: all)")
    group.add_argument("--train-chars", type=int, metavar="N",
                       help="train the tokenizer on the first N characters of documents "
                            "(default: bpe 5000000, char all)")
    group.add_argument("--val-fraction", type=float, default=0.05, metavar="F",
                       help="fraction of documents for validation (default 0.05)")
    group.add_argument("--test-fraction", type=float, default=0.05, metavar="F",
                       help="fraction of documents for test (default 0.05)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m data_tools", description=_DESCRIPTION,
        epilog=_CORPUS_FORMAT + "\n" + _TOKENS_FORMAT, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    clean_parser = commands.add_parser(
        "clean", help="Posts.xml or .7z -> corpus text", description="Posts.xml or .7z -> corpus text.",
        epilog=_CORPUS_FORMAT, formatter_class=argparse.RawDescriptionHelpFormatter)
    clean_parser.add_argument("input", metavar="INPUT", help="Posts.xml or an archive .7z holding it")
    clean_parser.add_argument("-o", "--output", required=True, metavar="CORPUS", help="corpus file to write")
    _add_clean_options(clean_parser)
    _add_run_options(clean_parser)

    tokenize_parser = commands.add_parser(
        "tokenize", help="corpus text -> data directory", description="Corpus text -> data directory.",
        epilog=_TOKENS_FORMAT, formatter_class=argparse.RawDescriptionHelpFormatter)
    tokenize_parser.add_argument("input", metavar="CORPUS", help="corpus file (or any UTF-8 text file)")
    tokenize_parser.add_argument("-o", "--output", required=True, metavar="DATA_DIR", help="data directory to write")
    _add_tokenize_options(tokenize_parser)
    _add_run_options(tokenize_parser)

    prepare_parser = commands.add_parser(
        "prepare", help="clean + tokenize -> data directory",
        description="Clean (for a Posts.xml or .7z) and tokenize into a data directory; the corpus "
                    "is kept there as corpus.txt. A .txt input is tokenized as it is.",
        epilog=_CORPUS_FORMAT + "\n" + _TOKENS_FORMAT, formatter_class=argparse.RawDescriptionHelpFormatter)
    prepare_parser.add_argument("input", metavar="INPUT", help="Posts.xml, a .7z holding it, or a .txt file")
    prepare_parser.add_argument("-o", "--output", required=True, metavar="DATA_DIR", help="data directory to write")
    _add_clean_options(prepare_parser)
    _add_tokenize_options(prepare_parser)
    _add_run_options(prepare_parser)
    return parser


def _clean_options(args):
    return dict(min_score=args.min_score, max_answers=args.max_answers, unanswered=args.unanswered,
                limit=args.limit)


def _token_options(args):
    return dict(train_chars=args.train_chars, val_fraction=args.val_fraction,
                test_fraction=args.test_fraction)


def _run_options(args):
    return dict(workers=args.workers, progress=args.progress)


def _describe_meta(meta):
    tokens = meta["tokens"]
    return (f"{meta['tokenizer']} tokenizer, vocab {meta['vocab_size']}, {meta['dtype']}; tokens "
            f"train {tokens['train']:,}, val {tokens['val']:,}, test {tokens['test']:,}")


def run(args):
    if args.command == "clean":
        stats = clean(args.input, args.output, **_clean_options(args), **_run_options(args))
        megabytes = stats.input_bytes / 1e6
        print(f"wrote {args.output}: {stats.documents:,} documents, {stats.answers_written:,} answers "
              f"({stats.questions:,} questions and {stats.answers:,} answers read) from "
              f"{megabytes:.1f} MB in {stats.seconds:.1f} s ({megabytes / max(stats.seconds, 1e-9):.1f} MB/s)")
    elif args.command == "tokenize":
        meta = tokenize(args.input, args.output, args.tokenizer, args.vocab_size, **_token_options(args),
                        **_run_options(args))
        print(f"wrote {args.output}: {_describe_meta(meta)}")
    else:
        prepare(args.input, args.output, args.tokenizer, args.vocab_size, **_token_options(args),
                **_clean_options(args), **_run_options(args))
        print(f"wrote {args.output}: {_describe_meta(load_meta(args.output))}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except DataToolsError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted; no output written", status=130)
    except OSError as exc:  # disk full, permission denied on the output, ...
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(where + (exc.strerror or str(exc)))
    return 0


def _fail(message, status=1):
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return status
