"""data_tools: Math Stack Exchange dump -> cleaned corpus -> token files.

    clean(input_path, output_path, ...)        Posts.xml or .7z -> corpus text (clean.py)
    tokenize(corpus_path, out_dir, ...)        corpus text -> data directory (tokens.py)
    prepare(input_path, out_dir, ...)          both steps (prepare.py)
    load_split(data_dir, split), load_meta(data_dir)
    CharTokenizer, BPETokenizer, load_tokenizer(path)
    sample_path()                              the bundled sample Posts.xml

Command line: python -m data_tools --help
"""

import os

from .clean_posts import clean
from .corpus import DOC_SEPARATOR, iter_documents
from .errors import DataToolsError
from .pipeline import prepare
from .tokenizers import BPETokenizer, CharTokenizer, load_tokenizer
from .tokens import load_meta, load_split, tokenize, write_token_files


def sample_path():
    """Path of the Posts.xml bundled with the package (data_tools/sample/Posts.xml)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample", "Posts.xml")


__all__ = [
    "DOC_SEPARATOR", "DataToolsError", "CharTokenizer", "BPETokenizer", "load_tokenizer", "clean",
    "tokenize", "prepare", "write_token_files", "load_split", "load_meta", "iter_documents",
    "sample_path",
]
